"""Start a run: validated config, seeds, threads and the run folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from medmodal.config import ExperimentConfig, load_config
from medmodal.utils.runtime import seed_everything, set_threads

ConfigSource = str | Path | dict[str, Any] | ExperimentConfig
Progress = bool | Literal["lines"]


@dataclass
class RunContext:
    """Where a run writes and how it reports progress."""

    cfg: ExperimentConfig
    run_dir: Path
    progress: Progress = False
    console: Console | None = None

    def out(self) -> Console:
        if self.console is None:
            self.console = Console(stderr=True)
        return self.console


def start_run(
    config: ConfigSource,
    overrides: list[str] | None = None,
    *,
    progress: Progress = False,
    console: Console | None = None,
) -> RunContext:
    """Load and check the config (component options too), join the process group when torchrun
    started this process, seed, size threads, make the folder."""
    from medmodal.run.checks import check_components
    from medmodal.train.distributed import init_from_env

    cfg = load_config(config, overrides)
    check_components(cfg)
    init_from_env(cfg.train.device)
    seed_everything(cfg.seed)
    set_threads(cfg.train.threads)
    run_dir = Path(cfg.output_dir or Path("runs") / cfg.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    return RunContext(cfg, run_dir, progress, console)
