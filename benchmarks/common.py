"""Shared helpers of the benchmark scripts (each run as ``python benchmarks/<name>.py``).

* provenance: :func:`environment` (versions, CPUs, threads, git commit + dirty flag, UTC date,
  load average) and :func:`command_line` (the command that produced a result);
* one JSON writer (:func:`write_json`, indented, lists of scalars on one line) and :func:`merge_rows`
  for ``--merge`` runs that replace only the arms they ran, each arm keeping its own provenance;
* Markdown helpers (:func:`table`, :func:`num`, :func:`pct`, :func:`with_ci`, :func:`signed`);
* the arguments every script takes (:func:`add_common_args`: ``--data-dir``, ``--out``,
  ``--work``, ``--seed``/``--seeds``, ``--arms``, ``--merge``, ``--render-only``);
* classical-baseline plumbing: :func:`scores` (metrics with bootstrap CIs through
  ``medmodal.evaluate``) and :func:`same_folds` (the assertion that a baseline used the deep
  arms' folds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from medmodal.evaluate import EvalSpec, bootstrap_ci, compute_metrics, paired_bootstrap_delta
from medmodal.utils.io import to_jsonable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
WORK = HERE / "work"
LOCK = "/tmp/medmodal_cpu.lock"


# -- provenance --------------------------------------------------------------------------------
def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def git_state() -> dict[str, Any]:
    """Commit of the working tree and whether code that shapes results (src/, benchmarks/*.py)
    differs from it; ``dirty_paths`` lists up to ten such files."""

    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        # rstrip only: a porcelain status line starts with a space (" M path")
        return out.stdout.rstrip() if out.returncode == 0 else ""

    status = git("status", "--porcelain", "--untracked-files=no", "--", "src", "benchmarks/*.py")
    paths = [line[3:] for line in status.splitlines() if line.strip()]
    return {
        "commit": git("rev-parse", "HEAD") or None,
        "dirty": bool(paths),
        "dirty_paths": paths[:10],
    }


def environment(**extra: Any) -> dict[str, Any]:
    """Versions, machine, threads, git state, UTC date and load average of this process."""
    import sklearn
    import torch

    import medmodal

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "medmodal": getattr(medmodal, "__version__", None),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": utc_now(),
        **git_state(),
        **extra,
    }


def _flock_prefix() -> str:
    """``flock <lock> `` when the parent process is flock, else ``""``."""
    try:
        parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    args = [a.decode() for a in parent if a]
    return f"flock {args[1]} " if len(args) > 1 and Path(args[0]).name == "flock" else ""


def command_line() -> str:
    """The command that produced this result, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_s = str(script.relative_to(REPO))
    except ValueError:
        script_s = str(script)
    data = os.environ.get("MEDMODAL_DATA_DIR")
    prefix = f"MEDMODAL_DATA_DIR={shlex.quote(data)} " if data else ""
    return f"{prefix}{_flock_prefix()}python {script_s} {shlex.join(sys.argv[1:])}".strip()


def provenance() -> dict[str, Any]:
    """What one arm records about the run that made it: command, commit, dirty flag, date."""
    g = git_state()
    return {
        "command": command_line(),
        "commit": g["commit"],
        "dirty": g["dirty"],
        "date": utc_now(),
    }


def legacy_provenance(result_file: str | Path, command: str | None) -> dict[str, Any]:
    """Provenance of a row written before rows carried their own: the top-level command and the
    commit (and its date) that last changed the results file."""
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%H %cI", "--", str(result_file)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    return {
        "command": command or "unknown",
        "commit": out[0] if out else None,
        "dirty": False,
        "date": out[1] if len(out) > 1 else None,
        "legacy": True,
    }


def provenance_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One Markdown bullet per distinct command among rows' ``provenance`` (with commit and date)."""
    seen: dict[str, dict[str, Any]] = {}
    for r in rows:
        p = r.get("provenance")
        if p:
            seen.setdefault(p["command"], p)
    out = []
    for cmd, p in seen.items():
        commit = (p.get("commit") or "unknown")[:10] + (
            " + uncommitted changes" if p.get("dirty") else ""
        )
        how = "results committed in" if p.get("legacy") else "commit"
        out.append(f"- `{cmd}` ({how} {commit}, {p.get('date')})")
    return out


def reproduce_section(rows: Sequence[dict[str, Any]], env: dict[str, Any]) -> list[str]:
    """The "Reproduce" section every results page ends with: commands (with commit and date) and
    the environment."""
    return [
        "## Reproduce",
        "",
        "Commands that produced the rows (each row's own command, commit and date are in the JSON):",
        "",
        *provenance_lines(rows),
        "",
        env_line(env),
        "",
    ]


def env_line(env: dict[str, Any]) -> str:
    keys = (
        "python",
        "torch",
        "numpy",
        "sklearn",
        "machine",
        "cpu_count",
        "torch_threads",
        "load_average",
    )
    commit = (env.get("commit") or "unknown")[:10] + (" (dirty)" if env.get("dirty") else "")
    parts = [f"{k} {env[k]}" for k in keys if env.get(k) is not None]
    return "Environment: " + ", ".join(parts) + f", commit {commit}, {env.get('date', '')}"


def invocation(
    arms: Sequence[str], wall_seconds: float, cpu_seconds: float | None = None, **extra: Any
) -> dict[str, Any]:
    """One entry of a result's ``invocations`` log: which arms a command ran and how long it took."""
    return {
        **provenance(),
        "arms": list(arms),
        "wall_seconds": round(wall_seconds, 1),
        "cpu_seconds": None if cpu_seconds is None else round(cpu_seconds, 1),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        **extra,
    }


def finish(
    out: str | Path,
    res: dict[str, Any],
    old: dict[str, Any],
    arms: Sequence[str],
    t0: float,
    render: Callable[[dict[str, Any]], str],
) -> None:
    """Log this command after ``old``'s invocations (wall time since ``t0`` from
    ``time.perf_counter``, CPU seconds) and write ``<out>.json`` / ``.md``."""
    res["invocations"] = [
        *old.get("invocations", []),
        invocation(arms, time.perf_counter() - t0, cpu_seconds()),
    ]
    write_result(out, res, render)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (worker processes)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# -- JSON -----------------------------------------------------------------------------------
def write_json(path: str | Path, obj: Any) -> Path:
    """Indented JSON with every list of scalars on one line: stored probabilities and ids stay
    compact (a value per line made ptbxl.json over 2 MiB) and the rest stays readable."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(_compact(to_jsonable(obj), "") + "\n")
    return p


def _compact(obj: Any, pad: str) -> str:
    inner = pad + "  "
    if isinstance(obj, dict) and obj:
        items = (f"{inner}{json.dumps(k)}: {_compact(v, inner)}" for k, v in obj.items())
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(inner + _compact(v, inner) for v in obj) + f"\n{pad}]"
    return json.dumps(obj, allow_nan=False)


def read_json(path: str | Path) -> dict[str, Any] | None:
    p = Path(path)
    return json.loads(p.read_text()) if p.is_file() else None


def write_result(
    out: str | Path, result: dict[str, Any], render: Callable[[dict[str, Any]], str]
) -> None:
    """``<out>.json`` and ``<out>.md`` (rendered from the JSON as written, so both agree)."""
    out = Path(out)
    write_json(out.with_suffix(".json"), result)
    out.with_suffix(".md").write_text(render(read_json(out.with_suffix(".json")) or {}))


def previous_results(
    args: argparse.Namespace,
    out: str | Path,
    load: Callable[[Path], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
    derive: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any] | None:
    """The existing results to merge new arms into (``--merge``; else empty), or None once
    ``--render-only`` has re-rendered them (then there is nothing to run)."""
    old = load(Path(out)) if (args.merge or args.render_only) else {}
    if not args.render_only:
        return old
    if derive is not None:
        derive(old)
    write_result(out, old, render)
    return None


def merge_rows(
    old: Sequence[dict[str, Any]],
    new: Sequence[dict[str, Any]],
    key: Callable[[dict[str, Any]], Any],
) -> list[dict[str, Any]]:
    """``old`` with every row whose key is in ``new`` replaced (in place); new keys appended."""
    fresh = {key(r): r for r in new}
    out = [fresh.pop(key(r), r) for r in old]
    return out + [r for r in new if key(r) in fresh]


# -- Markdown ----------------------------------------------------------------------------------
def num(v: float | None, nd: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}"


def pct(v: float | None, nd: int = 1) -> str:
    return "n/a" if v is None else f"{100 * v:.{nd}f}"


def signed(v: float | None, nd: int = 3) -> str:
    return "n/a" if v is None else f"{v:+.{nd}f}"


def with_ci(
    v: float | None, ci: Sequence[float | None] | None, nd: int = 3, scale: float = 1.0
) -> str:
    """``0.912 [0.881, 0.940]`` (``scale=100`` for percentages); the CI is left out when unknown."""
    if v is None:
        return "n/a"
    s = f"{scale * v:.{nd}f}"
    if ci and ci[0] is not None and ci[1] is not None:
        s += f" [{scale * ci[0]:.{nd}f}, {scale * ci[1]:.{nd}f}]"
    return s


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table (cells converted with ``str``)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return lines


# -- arguments ---------------------------------------------------------------------------------
def add_common_args(
    ap: argparse.ArgumentParser,
    name: str,
    *,
    arms: Sequence[str] = (),
    default_arms: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
) -> None:
    """``--data-dir --out --work --arms --merge --render-only`` and ``--seeds`` (or ``--seed``)."""
    ap.add_argument(
        "--data-dir",
        default=os.environ.get("MEDMODAL_DATA_DIR"),
        help="folder holding the data sets (default: $MEDMODAL_DATA_DIR)",
    )
    ap.add_argument(
        "--out", default=str(RESULTS / name), help="result path without suffix (.json, .md)"
    )
    ap.add_argument("--work", default=str(WORK / name), help="scratch folder (prepared data, runs)")
    if seeds is None:
        ap.add_argument("--seed", type=int, default=0)
    else:
        ap.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
    if arms:
        ap.add_argument(
            "--arms",
            nargs="+",
            default=list(default_arms or arms),
            choices=list(arms),
            help="arms to run (default: %(default)s)",
        )
    ap.add_argument(
        "--merge",
        action="store_true",
        help="update the existing results JSON with the arms run now, keep the others",
    )
    ap.add_argument(
        "--render-only", action="store_true", help="rewrite the .md from the .json; no runs"
    )


def data_dir(args: argparse.Namespace) -> Path:
    """The data folder, or exit with one line when there is none."""
    if not args.data_dir:
        sys.exit("error: no data directory: pass --data-dir or set MEDMODAL_DATA_DIR")
    path = Path(args.data_dir).resolve()  # prepared manifests then hold absolute file paths
    if not path.is_dir():
        sys.exit(f"error: data directory {path} does not exist")
    return path


# -- scoring -----------------------------------------------------------------------------------
def scores(
    y: Any,
    prob: Any,
    task: str,
    classes: Sequence[str],
    metrics: Sequence[str],
    *,
    groups: Sequence[Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """``{metric: value, metric_ci: [low, high]}`` through ``medmodal.evaluate`` (patient-grouped
    bootstrap when ``groups`` is given)."""
    out: dict[str, Any] = {}
    if n_boot:
        spec = EvalSpec.for_task(task, classes, n_boot=n_boot, seed=seed)
        ci = bootstrap_ci(y, prob, spec, metrics=metrics, groups=groups)
        for m in metrics:
            out[m], out[f"{m}_ci"] = ci[m]["value"], [ci[m]["low"], ci[m]["high"]]
    else:
        full = compute_metrics(y, prob, task, classes)
        out.update({m: full.get(m) for m in metrics})
    return out


def delta(
    y: Any,
    prob_a: Any,
    prob_b: Any,
    task: str,
    classes: Sequence[str],
    metric: str = "auroc",
    *,
    groups: Sequence[Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired bootstrap of ``metric(a) - metric(b)``: ``{delta, low, high, p_value}``."""
    spec = EvalSpec.for_task(task, classes, n_boot=n_boot, seed=seed)
    d = paired_bootstrap_delta(y, prob_a, prob_b, spec, metric=metric, groups=groups)
    return {k: d[k] for k in ("delta", "low", "high", "p_value")}


def verdict(d: dict[str, Any] | None, a: str = "deep model", b: str = "baseline") -> str:
    """Plain words for a paired delta ``a - b`` with its CI."""
    if not d or d.get("delta") is None:
        return "not compared"
    if d["low"] is not None and d["low"] > 0:
        return f"{a} better ({signed(d['delta'])} [{signed(d['low'])}, {signed(d['high'])}])"
    if d["high"] is not None and d["high"] < 0:
        return f"**{a} loses** ({signed(d['delta'])} [{signed(d['low'])}, {signed(d['high'])}])"
    return f"within the CI ({signed(d['delta'])} [{signed(d['low'])}, {signed(d['high'])}])"


def range_verdict(
    values: Sequence[float], ci: Sequence[float | None], a: str = "deep model"
) -> str:
    """Plain words for a deep model's values over seeds against a deterministic baseline's 95% CI
    (when no paired test is possible: the deep predictions were not stored)."""
    span = f"{min(values):.3f}-{max(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"
    if ci[0] is not None and max(values) < ci[0]:
        return f"**{a} loses** ({span}: every seed below the baseline's 95% CI)"
    if ci[1] is not None and min(values) > ci[1]:
        return f"{a} better ({span}: every seed above the baseline's 95% CI)"
    return f"within the baseline's 95% CI ({span}; or mixed across seeds)"


def fold_digest(sample_ids: Sequence[str], folds: Sequence[int]) -> str:
    """Short digest of a fold assignment (order-independent)."""
    pairs = sorted(zip(map(str, sample_ids), map(int, folds), strict=True))
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]


def same_folds(ours: dict[str, int], theirs: dict[str, int], what: str) -> None:
    """Raise unless two ``sample_id -> fold`` maps agree on every shared sample (and share all)."""
    if set(ours) != set(theirs):
        raise RuntimeError(
            f"{what}: the baseline and the deep arms hold different samples "
            f"({len(set(ours) ^ set(theirs))} differ)"
        )
    bad = [s for s in ours if ours[s] != theirs[s]]
    if bad:
        raise RuntimeError(
            f"{what}: fold assignment differs from the deep arms' for {len(bad)} samples, "
            f"e.g. {bad[:3]}"
        )


def rounded(a: Any, nd: int = 5) -> list[Any]:
    """A probability array as nested lists rounded to ``nd`` digits (compact JSON)."""
    return np.round(np.asarray(a, dtype=float), nd).tolist()
