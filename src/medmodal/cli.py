"""``medmodal`` command line: a thin Typer layer over :mod:`medmodal.api`."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from medmodal.errors import MedmodalError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="medmodal: multimodal medical deep learning (train, evaluate, predict, datasets).",
)
datasets_app = typer.Typer(no_args_is_help=True, help="Built-in datasets: list, info, prepare.")
models_app = typer.Typer(no_args_is_help=True, help="Registered encoders, fusions and heads.")
app.add_typer(datasets_app, name="datasets")
app.add_typer(models_app, name="models")
out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """Print user errors as one line and exit 2 (never a traceback for bad input)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MedmodalError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted; resume with --resume")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _progress() -> bool | Literal["lines"]:
    """Live progress bars on a terminal; one plain line per epoch in a log or CI."""
    return True if sys.stderr.isatty() and not os.environ.get("CI") else "lines"


def _summary(metrics: dict[str, Any], split: str = "test") -> None:
    m = metrics.get(split) or {}
    table = Table(title=f"{split} metrics")
    table.add_column("metric")
    table.add_column("value")
    table.add_column("95% CI")
    ci = m.get("ci") or {}
    for key in ("auroc", "auprc", "accuracy", "balanced_accuracy", "f1_macro", "ece"):
        if m.get(key) is None:
            continue
        c = ci.get(key)
        table.add_row(
            key,
            f"{m[key]:.4f}",
            f"{c['low']:.4f} - {c['high']:.4f}" if c and c.get("low") is not None else "",
        )
    out.print(table)


Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config field, e.g. --set train.epochs=5"),
]


@app.command()
@friendly
def train(
    config: Annotated[Path, typer.Argument(help="Experiment YAML (data, model, train, evaluate).")],
    overrides: Overrides = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="Run directory (default runs/<name>).")
    ] = None,
    skip_bad: Annotated[
        bool,
        typer.Option("--skip-bad", help="Skip unreadable samples and list them in the report."),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue from <run dir>/last.pt after an interruption."),
    ] = False,
    seed: Annotated[int | None, typer.Option(help="Random seed (overrides the config).")] = None,
) -> None:
    """Train a model from a config; writes best.pt, metrics.json and report.html."""
    from medmodal import api

    sets = list(overrides or [])
    if output_dir is not None:
        sets.append(f"output_dir={output_dir}")
    if skip_bad:
        sets.append("data.skip_bad=true")
    if seed is not None:
        sets.append(f"seed={seed}")
    run = api.fit(config, sets, progress=_progress(), resume=resume, console=err)
    _summary(run.metrics)
    if run.bad_samples:
        err.print(
            f"[yellow]{len(run.bad_samples)} sample(s) skipped[/]: see {run.run_dir / 'bad_samples.json'}"
        )
    out.print(
        f"checkpoint: {run.checkpoint}\nreport: {run.report}\nmetrics: {run.run_dir / 'metrics.json'}"
    )


@app.command()
@friendly
def tune(
    config: Annotated[
        Path,
        typer.Argument(help="Experiment YAML with a `search:` mapping (dotted field -> range)."),
    ],
    trials: Annotated[int, typer.Option(help="Number of trials.")] = 20,
    overrides: Overrides = None,
) -> None:
    """Hyper-parameter search (Optuna TPE) on the validation split; retrains the best and tests it once."""
    import yaml

    from medmodal.tune import tune as run_tune

    raw = yaml.safe_load(config.read_text()) or {}
    space = raw.pop("search", None)
    if not space:
        raise MedmodalError(
            f"{config}: add a `search:` mapping, e.g. search: {{train.lr: {{type: float, low: 1e-4, high: 1e-2, log: true}}}}"
        )
    cfg_path = config.with_suffix(".notune.yaml")
    cfg_path.write_text(yaml.safe_dump(raw))
    try:
        run, history = run_tune(
            cfg_path, space, n_trials=trials, overrides=overrides, progress=_progress(), console=err
        )
    finally:
        cfg_path.unlink(missing_ok=True)
    best = max(history, key=lambda t: next(v for k, v in t.items() if k.startswith("val_")))
    out.print(f"best trial {best['trial']}: {best['params']}")
    _summary(run.metrics)
    out.print(f"checkpoint: {run.checkpoint}\ntrials: {run.run_dir / 'tuning.json'}")


@app.command()
@friendly
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="best.pt from `medmodal train`.")],
    manifest: Annotated[
        Path,
        typer.Argument(help="Labelled manifest (CSV/Parquet) with the training schema's columns."),
    ],
    split: Annotated[
        str | None, typer.Option(help="Evaluate only this split (train/val/test).")
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option(help="Base folder for relative paths (default: the manifest's folder)."),
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option(help="Write metrics.json, predictions.csv, report.html here.")
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip unreadable samples and list them in metrics.json (skipped_samples).")
    ] = False,
    bootstrap: Annotated[
        int, typer.Option(help="Bootstrap resamples for 95% CIs (0 = none).")
    ] = 1000,
) -> None:
    """Evaluate a checkpoint on a labelled manifest (metrics with 95% CIs, HTML report)."""
    from medmodal import api

    metrics = api.evaluate(
        checkpoint,
        manifest,
        root=root,
        split=split,
        skip_bad=skip_bad,
        out_dir=out_dir,
        bootstrap=bootstrap,
    )
    _summary({"test": metrics})
    if metrics.get("skipped_samples"):
        err.print(f"[yellow]{len(metrics['skipped_samples'])} sample(s) skipped[/]")


@app.command()
@friendly
def predict(
    checkpoint: Annotated[Path, typer.Argument(help="best.pt from `medmodal train`.")],
    source: Annotated[
        Path, typer.Argument(help="A manifest (any subset of modalities) or a folder of images.")
    ],
    out_csv: Annotated[Path, typer.Option("--out", help="CSV of probabilities.")] = Path(
        "predictions.csv"
    ),
    root: Annotated[Path | None, typer.Option(help="Base folder for relative paths.")] = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip unreadable samples and list them in <out>.skipped.json.")
    ] = False,
) -> None:
    """Predict class probabilities for a manifest or an image folder -> CSV."""
    from medmodal import api

    frame = api.predict(checkpoint, source, root=root, skip_bad=skip_bad, out=out_csv)
    skipped = frame.attrs.get("skipped", [])
    out.print(f"{len(frame)} prediction(s) written to {out_csv}")
    if skipped:
        err.print(
            f"[yellow]{len(skipped)} sample(s) skipped[/]: see {out_csv.with_suffix('.skipped.json')}"
        )


@app.command()
@friendly
def demo(
    data_dir: Annotated[
        Path | None, typer.Option(help="Folder with medmnist/ (default $MEDMODAL_DATA_DIR).")
    ] = None,
    output_dir: Annotated[Path, typer.Option(help="Where the run goes.")] = Path("runs/demo"),
    epochs: Annotated[int | None, typer.Option(help="Override the demo's epoch count.")] = None,
) -> None:
    """Train + evaluate on built-in data and write an HTML report (BreastMNIST, or WDBC without a data dir)."""
    from medmodal import api
    from medmodal.datasets import resolve_data_dir

    ddir = resolve_data_dir(data_dir)
    has_breast = ddir is not None and any(
        (ddir / p).is_file() for p in ("medmnist/breastmnist.npz", "breastmnist.npz")
    )
    name = "demo_breastmnist.yaml" if has_breast else "demo_wdbc.yaml"
    if not has_breast:
        err.print(
            "no MedMNIST data directory found (set --data-dir or $MEDMODAL_DATA_DIR): running the WDBC table demo"
        )
    cfg = resources.files("medmodal") / "configs" / name
    sets = [f"output_dir={output_dir}"]
    if ddir is not None:
        sets.append(f"data.data_dir={ddir}")
    if epochs is not None:
        sets.append(f"train.epochs={epochs}")
    with resources.as_file(cfg) as path:
        run = api.fit(path, sets, progress=_progress(), console=err)
    _summary(run.metrics)
    out.print(f"report: {run.report}\ncheckpoint: {run.checkpoint}")


@datasets_app.command("list")
@friendly
def datasets_list() -> None:
    """List built-in datasets."""
    from medmodal.datasets import DATASETS, get_dataset

    table = Table()
    for col in ("name", "task", "modalities", "title"):
        table.add_column(col)
    for name in DATASETS.names():
        info = get_dataset(name).info
        table.add_row(name, info.task, ", ".join(info.modalities), info.title)
    out.print(table)


@datasets_app.command("info")
@friendly
def datasets_info(name: str) -> None:
    """Source, citation, licence and notes of one dataset."""
    from medmodal.datasets import get_dataset

    for k, v in get_dataset(name).info.to_dict().items():
        out.print(f"[bold]{k}[/]: {v}", highlight=False)


@datasets_app.command("prepare")
@friendly
def datasets_prepare(
    name: str,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for manifest.csv + schema.yaml (+ files).")
    ],
    data_dir: Annotated[
        Path | None, typer.Option(help="Folder with the raw files (default $MEDMODAL_DATA_DIR).")
    ] = None,
    image_format: Annotated[
        str, typer.Option(help="MedMNIST: npz (references) or png (writes image files).")
    ] = "npz",
    download: Annotated[
        bool, typer.Option("--download", help="Download missing files (needs internet).")
    ] = False,
    limit: Annotated[
        int | None, typer.Option(help="Keep only the first N samples per split.")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option", "-o", help="Dataset option key=value, e.g. -o target=survival."
        ),
    ] = None,
) -> None:
    """Write a dataset as the standard manifest + schema."""
    import yaml

    from medmodal.datasets import get_dataset, resolve_data_dir

    opts: dict[str, Any] = {"image_format": image_format, "download": download}
    if limit is not None:
        opts["limit"] = limit
    for item in option or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MedmodalError(f"--option {item!r} must look like key=value")
        opts[key.strip()] = yaml.safe_load(value)
    prepared = get_dataset(name).prepare(out_dir, resolve_data_dir(data_dir), **opts)
    out.print(f"manifest: {prepared.manifest}\nschema: {prepared.schema}")
    for k, v in prepared.facts.items():
        out.print(f"{k}: {v}")


@models_app.command("list")
def models_list() -> None:
    """Encoders (by modality), fusions and heads."""
    from medmodal.fusion import FUSIONS
    from medmodal.models.encoders import ENCODERS
    from medmodal.models.encoders.base import encoder_modalities
    from medmodal.models.heads import HEADS

    table = Table()
    for col in ("kind", "name", "inputs", "description"):
        table.add_column(col)
    for n, d in ENCODERS.describe().items():
        table.add_row("encoder", n, ", ".join(encoder_modalities(n)), d)
    for n, d in FUSIONS.describe().items():
        table.add_row("fusion", n, "", d)
    for n, d in HEADS.describe().items():
        table.add_row("head", n, "", d)
    out.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
