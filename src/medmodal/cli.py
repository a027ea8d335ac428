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

from medmodal.cli_options import (  # the options, declared once
    AllowBurnedInOpt,
    AmpOpt,
    AuditLogOpt,
    CheckpointArg,
    CheckpointsArg,
    ConfigArg,
    DataDirOpt,
    DatasetOptionOpt,
    DicomwebOpt,
    ExplainScOpt,
    FhirBundleMappingOpt,
    FhirMappingsOpt,
    FhirOutOpt,
    HostOpt,
    MaxBatchOpt,
    MaxDecodesOpt,
    MaxPixelsOpt,
    MaxUploadOpt,
    MaxWaitOpt,
    NnodesOpt,
    NprocOpt,
    OutCsvOpt,
    PortOpt,
    PredictSourceArg,
    PresetOpt,
    RdzvEndpointOpt,
    RdzvIdOpt,
    RequestMbOpt,
    ResumeOpt,
    RootOpt,
    RunDirOpt,
    RuntimeOpt,
    SeedOpt,
    SetOpt,
    SkipBadOpt,
    SourceArg,
    StoreSrOpt,
    StudyAuditLogOpt,
    StudyOpt,
    ThreadsOpt,
    TimeBudgetOpt,
    TimeoutOpt,
    TokensOpt,
)
from medmodal.errors import MedmodalError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="medmodal: multimodal medical deep learning (train, evaluate, predict, explain, whatif, pretrain, datasets).",
)
datasets_app = typer.Typer(no_args_is_help=True, help="Built-in datasets: list, info, prepare.")
models_app = typer.Typer(no_args_is_help=True, help="Registered encoders, fusions and heads.")
token_app = typer.Typer(no_args_is_help=True, help="Bearer tokens of the prediction service.")
audit_app = typer.Typer(no_args_is_help=True, help="The service's hash-chained audit log.")
app.add_typer(datasets_app, name="datasets")
app.add_typer(models_app, name="models")
app.add_typer(token_app, name="token")
app.add_typer(audit_app, name="audit-log")
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
    caption = None
    if m.get("task") == "binary":
        caption = f"positive class: {m['class_names'][1]} (called when p > {m['threshold']:g})"
    table = Table(title=f"{split} metrics", caption=caption)
    table.add_column("metric")
    table.add_column("value")
    table.add_column("95% CI")
    ci = m.get("ci") or {}
    keys = ["auroc", "auprc", "accuracy", "balanced_accuracy", "f1_macro", "ece"]
    if m.get("task") == "survival":
        keys = ["c_index", "c_index_uno", "mean_auc", "ibs"]
    if m.get("task") == "binary":
        keys[4:4] = [
            "recall",
            "precision",
            "specificity",
        ]  # sensitivity and PPV of the positive class
    for key in keys:
        if m.get(key) is None:
            continue
        c = ci.get(key)
        label = {"recall": "sensitivity", "precision": "PPV"}.get(key, key)
        table.add_row(
            label,
            f"{m[key]:.4f}",
            f"{c['low']:.4f} - {c['high']:.4f}" if c and c.get("low") is not None else "",
        )
    out.print(table)


@app.command()
@friendly
def train(
    config: ConfigArg,
    overrides: SetOpt = None,
    output_dir: RunDirOpt = None,
    skip_bad: SkipBadOpt = False,
    resume: ResumeOpt = False,
    seed: SeedOpt = None,
    nproc: NprocOpt = 1,
    nnodes: NnodesOpt = "1",
    rdzv_endpoint: RdzvEndpointOpt = None,
    rdzv_id: RdzvIdOpt = None,
    preset: PresetOpt = None,
    time_budget: TimeBudgetOpt = None,
) -> None:
    """Train a model from a config; writes best.pt, metrics.json and report.html."""
    from medmodal import api
    from medmodal.train import distributed

    _launch_if_asked(nproc, nnodes, rdzv_endpoint, rdzv_id)
    sets = list(overrides or [])
    if output_dir is not None:
        sets.append(f"output_dir={output_dir}")
    if skip_bad:
        sets.append("data.skip_bad=true")
    if seed is not None:
        sets.append(f"seed={seed}")
    run = api.fit(
        config,
        sets,
        progress=_progress(),
        resume=resume,
        console=err,
        preset=preset,
        time_budget=time_budget,
    )
    main_rank = distributed.is_main()
    distributed.shutdown()
    if not main_rank:  # under torchrun, rank 0 alone reports
        return
    _summary(run.metrics)
    if run.bad_samples:
        err.print(
            f"[yellow]{len(run.bad_samples)} sample(s) skipped[/]: see {run.run_dir / 'bad_samples.json'}"
        )
    out.print(
        f"checkpoint: {run.checkpoint}\nreport: {run.report}\nmetrics: {run.run_dir / 'metrics.json'}"
    )


def _launch_if_asked(nproc: int, nnodes: str, endpoint: str | None, rdzv_id: str | None) -> None:
    """With ``--nproc`` > 1 or several nodes, run this command again under torchrun and exit
    with its code (unless this process is already one of torchrun's)."""
    from medmodal.train import distributed

    if (nproc > 1 or nnodes != "1") and not distributed.launched_by_torchrun():
        argv = distributed.strip_launch_options(sys.argv[1:])
        cmd = distributed.launch_command(argv, nproc, nnodes, endpoint, rdzv_id)
        err.print(f"launching {nproc} process(es) per machine: {' '.join(cmd[2:5])} ...")
        raise typer.Exit(distributed.run_launcher(cmd, nproc))


@app.command()
@friendly
def tune(
    config: Annotated[
        Path,
        typer.Argument(help="Experiment YAML with a `search:` mapping (dotted field -> range)."),
    ],
    trials: Annotated[int, typer.Option(help="Number of trials (of this worker).")] = 20,
    overrides: SetOpt = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Optuna RDB storage URL (e.g. sqlite:///study.db, postgresql://...): workers "
            "started with the same URL and --study-name share one study."
        ),
    ] = None,
    study_name: Annotated[
        str | None, typer.Option(help="Study name in --storage (default: the config's name).")
    ] = None,
    retrain: Annotated[
        bool,
        typer.Option(help="Retrain the study's best setting and test it once after the trials."),
    ] = True,
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
            cfg_path,
            space,
            n_trials=trials,
            overrides=overrides,
            progress=_progress(),
            console=err,
            storage=storage,
            study_name=study_name,
            retrain=retrain,
        )
    finally:
        cfg_path.unlink(missing_ok=True)
    if history:
        best = max(history, key=lambda t: next(v for k, v in t.items() if k.startswith("val_")))
        out.print(f"best trial of this worker {best['trial']}: {best['params']}")
    if run is None:
        out.print(
            f"{len(history)} trial(s) added to study {study_name or '<config name>'} in {storage}"
        )
        return
    _summary(run.metrics)
    out.print(f"checkpoint: {run.checkpoint}\ntrials: {run.run_dir / 'tuning.json'}")


@app.command()
@friendly
def pretrain(
    config: Annotated[
        Path, typer.Argument(help="Pretraining YAML (data, encoder, mask, train, preview).")
    ],
    overrides: SetOpt = None,
    output_dir: RunDirOpt = None,
    include_test: Annotated[
        bool,
        typer.Option(
            "--include-test",
            help="Also use the validation and test splits' images (off: train only).",
        ),
    ] = False,
    resume: ResumeOpt = False,
    seed: SeedOpt = None,
) -> None:
    """Masked-image pretraining of an image encoder (SimMIM / SparK-style) on images only."""
    from medmodal import api

    sets = list(overrides or [])
    if output_dir is not None:
        sets.append(f"output_dir={output_dir}")
    if include_test:
        sets.append("include_test=true")
    if seed is not None:
        sets.append(f"seed={seed}")
    run = api.pretrain(config, sets, progress=_progress(), resume=resume, console=err)
    out.print(
        f"{run.images} images, reconstruction loss {run.eval_loss_before:.4f} -> "
        f"{run.eval_loss_after:.4f} ({run.seconds:.0f} s)\nencoder checkpoint: {run.checkpoint} "
        f"(use as model.encoders.<modality>.init)\nloss curve: {run.run_dir / 'loss.png'}"
    )


@app.command()
@friendly
def evaluate(
    checkpoint: CheckpointArg,
    manifest: Annotated[
        Path,
        typer.Argument(help="Labelled manifest (CSV/Parquet) with the training schema's columns."),
    ],
    split: Annotated[
        str | None, typer.Option(help="Evaluate only this split (train/val/test).")
    ] = None,
    root: RootOpt = None,
    out_dir: Annotated[
        Path | None, typer.Option(help="Write metrics.json, predictions.csv, report.html here.")
    ] = None,
    skip_bad: SkipBadOpt = False,
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
    checkpoint: CheckpointArg,
    source: PredictSourceArg = None,
    out_csv: OutCsvOpt = Path("predictions.csv"),
    root: RootOpt = None,
    skip_bad: SkipBadOpt = False,
    amp: AmpOpt = False,
    dicomweb: DicomwebOpt = None,
    study: StudyOpt = None,
    store_sr: StoreSrOpt = True,
    fhir: FhirOutOpt = None,
    fhir_mapping: FhirBundleMappingOpt = None,
    audit_log: StudyAuditLogOpt = None,
    explain: ExplainScOpt = False,
) -> None:
    """Predict class probabilities for a manifest or an image folder -> CSV; or for studies of a
    PACS (--dicomweb URL --study UID: DICOM SR stored back), or for a FHIR Bundle."""
    if dicomweb is not None or study:
        _predict_dicomweb(checkpoint, dicomweb, study, out_csv, store_sr, fhir, audit_log, explain)
        return
    if source is None:
        raise MedmodalError(
            "give SOURCE (a manifest, an image folder or a FHIR Bundle) or --dicomweb URL --study UID"
        )
    if fhir_mapping is not None:
        _predict_fhir_bundle(checkpoint, source, fhir_mapping, fhir)
        return
    if fhir is not None:
        raise MedmodalError("--fhir applies to --dicomweb studies and FHIR Bundle sources")
    from medmodal import api

    frame = api.predict(checkpoint, source, root=root, skip_bad=skip_bad, out=out_csv, amp=amp)
    skipped = frame.attrs.get("skipped", [])
    out.print(f"{len(frame)} prediction(s) written to {out_csv}")
    if skipped:
        err.print(
            f"[yellow]{len(skipped)} sample(s) skipped[/]: see {out_csv.with_suffix('.skipped.json')}"
        )


def _predict_dicomweb(
    checkpoint: Path,
    url: str | None,
    studies: list[str] | None,
    out_csv: Path,
    store_sr: bool,
    fhir: Path | None,
    audit_log: Path | None,
    explain: bool = False,
) -> None:
    """``predict --dicomweb URL --study UID``: fetch, predict, SR back, CSV (+ FHIR)."""
    from medmodal.hospital import commands
    from medmodal.utils.io import dump_json

    if url is None or not studies:
        raise MedmodalError("--dicomweb URL and --study UID go together")
    summaries = commands.predict_studies(
        checkpoint, url, list(studies), store_sr=store_sr, audit_log=audit_log, explain=explain
    )
    commands.write_instances_csv(out_csv, summaries)
    for s in summaries:
        sr = s["sr"]
        where = f"stored in {url}" if sr["stored"] else "not stored (--no-store-sr)"
        out.print(
            f"study {s['study']}: {len(s['instances'])} image(s) predicted, "
            f"{len(s['skipped'])} skipped, {len(s['heatmaps'])} heat map(s); "
            f"SR {sr['sop_instance_uid']} {where}",
            highlight=False,
        )
    out.print(f"predictions: {out_csv}")
    if fhir is not None:
        card = commands.load_entry(checkpoint).card
        bundles = [b for s in summaries for b in commands.study_fhir(s, card)]
        out.print(f"FHIR: {dump_json(fhir, bundles[0] if len(bundles) == 1 else bundles)}")


def _predict_fhir_bundle(checkpoint: Path, source: Path, mapping: Path, fhir: Path | None) -> None:
    """``predict CHECKPOINT bundle.json --fhir-mapping map.yaml [--fhir report.json]``."""
    from medmodal.hospital import commands
    from medmodal.utils.io import dump_json

    result, report = commands.predict_bundle(checkpoint, source, mapping)
    probs = result.get("calibrated_probabilities") or result["probabilities"]
    shown = ", ".join(f"{c} {p:.3f}" for c, p in probs.items())
    out.print(
        f"prediction: {result['prediction']} ({shown}); inputs used: "
        f"{', '.join(result['modalities']['used'])}",
        highlight=False,
    )
    if fhir is not None:
        out.print(f"FHIR DiagnosticReport bundle: {dump_json(fhir, report)}")


@app.command()
@friendly
def explain(
    checkpoint: CheckpointArg,
    source: SourceArg,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for the PNGs and explanations.json.")
    ] = Path("explanations"),
    method: Annotated[
        list[str] | None,
        typer.Option("--method", "-m", help="gradcam, integrated_gradients, occlusion, shapley."),
    ] = None,
    modality: Annotated[
        list[str] | None, typer.Option("--modality", help="Explain only this modality (repeat).")
    ] = None,
    sample: Annotated[
        list[str] | None, typer.Option("--sample", help="Explain this sample id (repeat).")
    ] = None,
    limit: Annotated[
        int, typer.Option(help="Without --sample: the first N samples (0 = all).")
    ] = 16,
    target: Annotated[
        str | None, typer.Option(help="Explain this class (default: the predicted one).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="Integrated Gradients steps (default 32).")
    ] = None,
    root: RootOpt = None,
    skip_bad: SkipBadOpt = False,
) -> None:
    """Explain predictions: Grad-CAM / Integrated Gradients overlays, word and feature
    attributions, and which modality mattered (Shapley) -> PNGs + explanations.json."""
    from medmodal import api

    samples: int | list[str] | None = list(sample) if sample else (limit or None)
    options = {"integrated_gradients": {"steps": steps}} if steps is not None else None
    result = api.explain(
        checkpoint,
        source,
        out_dir,
        methods=method or None,
        modalities=modality or None,
        samples=samples,
        target=target,
        options=options,
        root=root,
        skip_bad=skip_bad,
    )
    out.print(
        f"{len(result.samples)} sample(s) explained: {len(result.files)} figure(s) in "
        f"{out_dir}, summary in {out_dir / 'explanations.json'}"
    )
    if result.skipped:
        err.print(f"[yellow]{len(result.skipped)} sample(s) skipped[/]: see explanations.json")


@app.command()
@friendly
def whatif(
    checkpoint: CheckpointArg,
    source: Annotated[Path, typer.Argument(help="Manifest of the patients to ask about.")],
    treatment: Annotated[
        str, typer.Option(help="The treatment column (an input of the model, e.g. horTh).")
    ],
    values: Annotated[
        str | None, typer.Option(help="Comma-separated values to compare (default: all seen).")
    ] = None,
    reference: Annotated[
        str | None, typer.Option(help="Value the differences are taken from (default: first).")
    ] = None,
    horizon: Annotated[
        float | None, typer.Option(help="RMST horizon (default: 80th percentile of the times).")
    ] = None,
    out_dir: Annotated[Path, typer.Option(help="Where whatif.csv/.json/.png go.")] = Path("whatif"),
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the CIs.")] = 1000,
    root: RootOpt = None,
) -> None:
    """Predicted survival of a survival model (its best.pt) under each value of a treatment
    input, RMST differences with CIs, propensity overlap (associations learned from the data,
    not treatment advice)."""
    from medmodal import api

    res = api.whatif(
        checkpoint,
        source,
        treatment,
        values=values.split(",") if values else None,
        reference=reference,
        horizon=horizon,
        out_dir=out_dir,
        n_boot=bootstrap,
        root=root,
    )
    s = res.summary
    for e in s["effects"]:
        lo, hi = e["mean_delta_rmst_ci"]
        ci = f" [{lo:.1f}, {hi:.1f}]" if lo is not None else ""
        out.print(
            f"{treatment} {e['value']} vs {e['reference']}: mean RMST difference to "
            f"{s['horizon']:g} {e['mean_delta_rmst']:+.1f}{ci}; hazard ratio "
            f"{e['hazard_ratio']:.2f}",
            highlight=False,
        )
    out.print(f"overlap: {s['overlap']['summary']}", highlight=False)
    out.print(f"[bold]caveat:[/] {s['caveat']}", highlight=False)
    out.print("written: " + ", ".join(str(p) for p in res.files.values()), highlight=False)


@app.command()
@friendly
def audit(
    manifest: Annotated[
        Path | None,
        typer.Argument(help="Manifest (CSV/Parquet) to audit; leave out with --dataset."),
    ] = None,
    schema: Annotated[
        Path | None, typer.Option(help="Schema YAML naming the modalities (needed with MANIFEST).")
    ] = None,
    root: RootOpt = None,
    out_json: Annotated[
        Path | None, typer.Option("--out", help="Write the full report (every group) as JSON.")
    ] = None,
    split_column: Annotated[
        str | None,
        typer.Option(help="Column of train/val/test values (default: the schema's split_column)."),
    ] = None,
    near_threshold: Annotated[
        int | None,
        typer.Option(
            help="Near-identical images: pHash bits (of 256) that may differ (default 24)."
        ),
    ] = None,
    no_near: Annotated[
        bool, typer.Option("--no-near", help="Skip the perceptual (near-identical image) search.")
    ] = False,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Exit 1 when a duplicate group spans patients or splits."),
    ] = False,
    dataset: Annotated[
        str | None,
        typer.Option(help="Audit a built-in dataset instead (prepared into a temporary folder)."),
    ] = None,
    data_dir: DataDirOpt = None,
    option: DatasetOptionOpt = None,
) -> None:
    """Leakage audit: duplicated images, signals, audio and notes across patients and splits
    (of MANIFEST + --schema, or of a built-in --dataset with its --data-dir and --option)."""
    import tempfile

    from medmodal.audit import NEAR_THRESHOLD

    near = None if no_near else (NEAR_THRESHOLD if near_threshold is None else near_threshold)
    with tempfile.TemporaryDirectory(prefix="medmodal-audit-") as tmp:
        if dataset is not None:
            manifest, schema = _prepared_dataset(dataset, Path(tmp), data_dir, option)
        if manifest is None or schema is None:
            raise MedmodalError("give MANIFEST and --schema SCHEMA.yaml, or --dataset NAME")
        report = _audit_report(manifest, schema, root, split_column, near)
    _print_audit(report)
    if out_json is not None:
        from medmodal.utils.io import dump_json

        out.print(f"report: {dump_json(out_json, report.to_dict())}")
    if strict and (report.cross_split or report.cross_patient):
        err.print(
            f"audit failed (--strict): {len(report.cross_split)} duplicate group(s) across "
            f"splits, {len(report.cross_patient)} across patients"
        )
        raise typer.Exit(1)


def _prepared_dataset(
    name: str, out_dir: Path, data_dir: Path | None, option: list[str] | None
) -> tuple[Path, Path]:
    """Manifest and schema of built-in dataset ``name`` written into ``out_dir``."""
    from medmodal.datasets import prepare_dataset

    prepared = prepare_dataset(name, out_dir, data_dir, _dataset_options(option))
    return prepared.manifest, prepared.schema


def _audit_report(
    manifest: Path, schema: Path, root: Path | None, split_column: str | None, near: int | None
) -> Any:
    """The audit of ``manifest`` (splits from ``split_column`` when given)."""
    from medmodal.audit import audit_manifest
    from medmodal.data.manifest import read_manifest

    splits = None
    if split_column is not None:
        frame = read_manifest(manifest)
        if split_column not in frame.columns:
            raise MedmodalError(f"manifest {manifest} has no column {split_column!r}")
        splits = frame[split_column].tolist()
    return audit_manifest(
        manifest, schema, root, splits, near_threshold=near, progress=sys.stderr.isatty()
    )


def _print_audit(report: Any, limit: int = 20) -> None:
    """The audit's counts as a table, then the groups that span patients or splits."""
    table = Table(title=f"leakage audit: {report.rows} rows, {report.seconds:.1f} s")
    for col in ("modality", "duplicates", "groups", "pairs", "across patients", "across splits"):
        table.add_column(col)
    for c in report.counts():
        table.add_row(
            c["modality"],
            c["label"],
            str(c["groups"]),
            str(c["pairs"]),
            str(c["cross_patient_groups"]),
            str(c["cross_split_groups"]),
        )
    out.print(table)
    flagged = [g for g in report.groups if g.cross_split or g.cross_patient]
    for g in flagged[:limit]:
        where = " and ".join(
            w for w, on in (("splits", g.cross_split), ("patients", g.cross_patient)) if on
        )
        dist = f", pHash distance {g.distance[0]}-{g.distance[1]}" if g.distance else ""
        rows = "; ".join(
            f"{m.sample_id} (patient {m.patient_id}, {m.split or 'no split'}, "
            f"{Path(m.file).name if m.file else 'inline'})"
            for m in g.members[:6]
        )
        more = f"; ... {len(g.members) - 6} more" if len(g.members) > 6 else ""
        out.print(
            f"[bold]{g.modality}[/] {g.label} across {where}{dist}: {rows}{more}", highlight=False
        )
    if len(flagged) > limit:
        out.print(
            f"... {len(flagged) - limit} more group(s) across patients or splits (see --out JSON)"
        )
    for u in report.unreadable[:5]:
        err.print(
            f"[yellow]unreadable[/] {u.modality} of {u.sample_id}: {u.file}: {u.reason}",
            highlight=False,
        )
    if len(report.unreadable) > 5:
        err.print(
            f"[yellow]{len(report.unreadable) - 5} more unreadable cell(s)[/] (see --out JSON)"
        )
    if report.patient_column is None:
        out.print("no patient column: each sample counts as its own patient")


def _dataset_options(items: list[str] | None) -> dict[str, Any]:
    """``-o key=value`` dataset options (values parsed as YAML)."""
    import yaml

    opts: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MedmodalError(f"--option {item!r} must look like key=value")
        opts[key.strip()] = yaml.safe_load(value)
    return opts


@app.command()
@friendly
def demo(
    data_dir: DataDirOpt = None,
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
    data_dir: DataDirOpt = None,
    image_format: Annotated[
        str | None, typer.Option(help="MedMNIST: npz (references) or png (writes image files).")
    ] = None,
    download: Annotated[
        bool, typer.Option("--download", help="Download missing files (needs internet).")
    ] = False,
    limit: Annotated[
        int | None, typer.Option(help="Keep only the first N samples per split.")
    ] = None,
    option: DatasetOptionOpt = None,
    audit: Annotated[
        bool, typer.Option(help="Run the leakage audit after preparing (writes audit.json).")
    ] = True,
) -> None:
    """Write a dataset as the standard manifest + schema, then audit it (audit.json beside them)."""
    from medmodal.audit import audit_manifest
    from medmodal.datasets import prepare_dataset
    from medmodal.utils.io import dump_json

    given = {"image_format": image_format, "download": download or None, "limit": limit}
    opts: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    opts.update(_dataset_options(option))
    prepared = prepare_dataset(name, out_dir, data_dir, opts)
    out.print(f"manifest: {prepared.manifest}\nschema: {prepared.schema}")
    for k, v in prepared.facts.items():
        out.print(f"{k}: {v}")
    if audit:
        report = audit_manifest(prepared.manifest, prepared.schema, progress=sys.stderr.isatty())
        out.print(report.summary(), highlight=False)
        out.print(f"audit: {dump_json(prepared.manifest.parent / 'audit.json', report.to_dict())}")


@models_app.command("list")
def models_list() -> None:
    """Encoders (by modality), fusions, heads, classical learners (by task) and feature
    extractors (by modality type)."""
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
    from medmodal.classical.features import FEATURES
    from medmodal.classical.learners import LEARNERS

    for n, d in LEARNERS.describe().items():
        table.add_row("learner", n, ", ".join(LEARNERS.capabilities(n).tasks), d)
    for n, d in FEATURES.describe().items():
        table.add_row("features", n, ", ".join(FEATURES.capabilities(n).types), d)
    out.print(table)


@app.command()
@friendly
def serve(
    checkpoints: CheckpointsArg,
    tokens: TokensOpt = Path("tokens.json"),
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    runtime: RuntimeOpt = "pytorch",
    audit_log: AuditLogOpt = Path("audit.jsonl"),
    max_upload_mb: MaxUploadOpt = 50,
    timeout: TimeoutOpt = 30,
    max_batch: MaxBatchOpt = 64,
    max_wait_ms: MaxWaitOpt = 2.0,
    threads: ThreadsOpt = 1,
    dicomweb: DicomwebOpt = None,
    fhir_mapping: FhirMappingsOpt = None,
    max_decodes: MaxDecodesOpt = 2,
    request_mb: RequestMbOpt = 512,
    max_pixels: MaxPixelsOpt = 36_000_000,
    allow_burned_in: AllowBurnedInOpt = False,
) -> None:
    """Serve checkpoints over HTTP: predict, model cards, /metrics and a web page at /
    (with --dicomweb, the page can pick a study from that PACS)."""
    from medmodal import api
    from medmodal.serve.limits import Limits

    limits = Limits(max_decodes=max_decodes, request_mb=request_mb, max_pixels=max_pixels)
    err.print(f"medmodal serve: http://{host}:{port}/ (models: {', '.join(checkpoints)})")
    api.serve(
        list(checkpoints),
        tokens,
        host=host,
        port=port,
        runtime=runtime,
        audit_log=audit_log,
        max_upload_mb=max_upload_mb,
        timeout=timeout,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        threads=threads,
        dicomweb=dicomweb,
        fhir_mappings=fhir_mapping,
        limits=limits,
        allow_burned_in=allow_burned_in,
    )


@app.command()
@friendly
def listen(
    checkpoints: Annotated[
        list[str], typer.Argument(help="Checkpoints to run on each study: PATH or NAME=PATH.")
    ],
    aet: Annotated[str, typer.Option(help="This node's AE title.")] = "MEDMODAL",
    port: Annotated[int, typer.Option(help="DICOM port to listen on.")] = 11112,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow", help="A calling AE title allowed to send (repeat); others refused."
        ),
    ] = None,
    destination: Annotated[
        str | None,
        typer.Option(help="Where the DICOM SRs go by C-STORE: AET@host:port (e.g. the PACS)."),
    ] = None,
    quiet: Annotated[
        float, typer.Option(help="A study is complete after this many seconds without an instance.")
    ] = 5.0,
    audit_log: Annotated[Path, typer.Option(help="Append-only, hash-chained audit log.")] = Path(
        "audit.jsonl"
    ),
    threads: Annotated[int, typer.Option(help="Torch threads.")] = 1,
) -> None:
    """DIMSE Storage SCP: a PACS routes studies here (C-STORE); each complete study is predicted
    and its DICOM SR sent to --destination, with audit entries as the service writes."""
    from medmodal.hospital.commands import ListenSettings, listen_until_stopped

    settings = ListenSettings(aet, port, host, tuple(allow or ()), destination, quiet)
    listen_until_stopped(
        list(checkpoints),
        settings,
        audit_log,
        threads=threads,
        say=lambda text: err.print(text, highlight=False),
    )


@token_app.command("create")
@friendly
def token_create(
    name: Annotated[str, typer.Argument(help="Who the token is for (written to the audit log).")],
    tokens: TokensOpt = Path("tokens.json"),
) -> None:
    """Add a token; it is printed once and only its SHA-256 is kept."""
    from medmodal.serve.auth import create_token

    token = create_token(tokens, name)
    err.print(f"token {name!r} added to {tokens}; it is shown once:")
    print(token)


@audit_app.command("verify")
@friendly
def audit_log_verify(
    path: Annotated[Path, typer.Argument(help="The audit log (JSON lines).")] = Path("audit.jsonl"),
    expect_head: Annotated[
        str | None, typer.Option(help="The last hash kept elsewhere (catches cut lines).")
    ] = None,
) -> None:
    """Check the hash chain: exit 1 naming the first edited, inserted or deleted line."""
    from medmodal.serve.audit_log import verify

    if not path.is_file():
        raise MedmodalError(f"audit log not found: {path}")
    verdict = verify(path, expect_head)
    if not verdict.ok:
        err.print(f"[bold red]audit log broken:[/] {verdict.problems[0]}", highlight=False)
        raise typer.Exit(1)
    out.print(f"audit log intact: {verdict.lines} line(s), head {verdict.head}", highlight=False)


@app.command()
@friendly
def export(
    checkpoint: CheckpointArg,
    format: Annotated[str, typer.Option("--format", help="Export format.")] = "onnx",
    out_path: Annotated[Path | None, typer.Option("--out", help="Default: CHECKPOINT.onnx")] = None,
) -> None:
    """Export the model (ONNX: dynamic batch, each modality an input with its presence mask)."""
    from medmodal import api

    path = api.export(checkpoint, out_path, fmt=format)
    out.print(f"wrote {path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
