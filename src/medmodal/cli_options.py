"""Options and arguments of ``medmodal``'s commands, declared once (Typer ``Annotated`` aliases)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# -- shared by several commands ------------------------------------------
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config field, e.g. --set train.epochs=5"),
]
RunDirOpt = Annotated[Path | None, typer.Option(help="Run directory (default runs/<name>).")]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue from <run dir>/last.pt after an interruption.")
]
SeedOpt = Annotated[int | None, typer.Option(help="Random seed (overrides the config).")]
CheckpointArg = Annotated[Path, typer.Argument(help="best.pt from `medmodal train`.")]
SourceArg = Annotated[
    Path, typer.Argument(help="A manifest (any subset of modalities) or a folder of images.")
]
RootOpt = Annotated[
    Path | None,
    typer.Option(help="Base folder for relative paths (default: the manifest's folder)."),
]
SkipBadOpt = Annotated[
    bool,
    typer.Option(
        "--skip-bad",
        help="Skip unreadable samples and list them in the output (report, metrics.json, "
        "<out>.skipped.json or explanations.json).",
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(help="Folder with the datasets' raw files (default $MEDMODAL_DATA_DIR)."),
]
DatasetOptionOpt = Annotated[
    list[str] | None,
    typer.Option("--option", "-o", help="Dataset option key=value, e.g. -o target=survival."),
]
DicomwebOpt = Annotated[
    str | None,
    typer.Option(
        "--dicomweb", help="DICOMweb URL of a PACS, e.g. http://127.0.0.1:8042/dicom-web (Orthanc)."
    ),
]
TokensOpt = Annotated[
    Path, typer.Option(help="Token file (from `medmodal token create`; only hashes are stored).")
]


# -- train -----------------------------------------------------------------------------------------
ConfigArg = Annotated[Path, typer.Argument(help="Experiment YAML (data, model, train, evaluate).")]
NprocOpt = Annotated[
    int,
    typer.Option(
        help="Processes per machine: data-parallel training through torchrun (gloo on "
        "CPU, NCCL on GPUs); train.batch_size stays the global batch."
    ),
]
NnodesOpt = Annotated[
    str,
    typer.Option(help="Machines (torchrun --nnodes, e.g. 2 or 1:4); >1 needs --rdzv-endpoint."),
]
RdzvEndpointOpt = Annotated[
    str | None,
    typer.Option(help="host:port of the rendezvous, the same on every machine (multi-node)."),
]
RdzvIdOpt = Annotated[
    str | None, typer.Option(help="Job id shared by the machines of one run (multi-node).")
]
PresetOpt = Annotated[
    str | None,
    typer.Option(
        help="best: the config's deep model (several seeds) + classical learners, ensembled "
        "on validation into one checkpoint; fast: one model (no ensemble)."
    ),
]
TimeBudgetOpt = Annotated[
    float | None,
    typer.Option(help="Seconds for an ensemble's members (--preset best); later ones skipped."),
]

# -- predict ---------------------------------------------------------------------------------------
PredictSourceArg = Annotated[
    Path | None,
    typer.Argument(
        help="A manifest (any subset of modalities), a folder of images, or a FHIR Bundle "
        "(.json, with --fhir-mapping); leave out with --dicomweb."
    ),
]
OutCsvOpt = Annotated[Path, typer.Option("--out", help="CSV of probabilities.")]
AmpOpt = Annotated[
    bool,
    typer.Option(
        "--amp", help="bf16 autocast on CPU / fp16 on CUDA: faster, probabilities ~1e-2 off."
    ),
]
StudyOpt = Annotated[
    list[str] | None,
    typer.Option("--study", help="With --dicomweb: a Study Instance UID to predict (repeat)."),
]
StoreSrOpt = Annotated[
    bool, typer.Option(help="With --dicomweb: store the DICOM SR back in the PACS (STOW-RS).")
]
FhirOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--fhir", help="Also write the result as FHIR R4 (DiagnosticReport Bundle, JSON)."
    ),
]
FhirBundleMappingOpt = Annotated[
    Path | None,
    typer.Option(help="SOURCE is a FHIR Bundle: YAML mapping of its resources onto inputs."),
]
StudyAuditLogOpt = Annotated[
    Path | None, typer.Option(help="With --dicomweb: append hash-chained audit entries here.")
]
ExplainScOpt = Annotated[
    bool,
    typer.Option(
        "--explain", help="With --dicomweb: also store each heat map as a Secondary Capture."
    ),
]

# -- serve -----------------------------------------------------------------------------------------
CheckpointsArg = Annotated[
    list[str], typer.Argument(help="Checkpoints to serve: PATH or NAME=PATH.")
]
HostOpt = Annotated[str, typer.Option(help="Address to listen on.")]
PortOpt = Annotated[int, typer.Option(help="Port.")]
RuntimeOpt = Annotated[
    str,
    typer.Option(
        help="pytorch, pytorch-bf16 (autocast, as `predict --amp`), or onnx "
        "(CHECKPOINT.onnx from `medmodal export`)."
    ),
]
AuditLogOpt = Annotated[Path, typer.Option(help="Append-only, hash-chained audit log.")]
MaxUploadOpt = Annotated[float, typer.Option(help="Largest request body (413 beyond).")]
TimeoutOpt = Annotated[float, typer.Option(help="Seconds a prediction may take.")]
MaxBatchOpt = Annotated[int, typer.Option(help="Largest micro-batch.")]
MaxWaitOpt = Annotated[float, typer.Option(help="How long a batch waits to fill.")]
ThreadsOpt = Annotated[int, typer.Option(help="Torch threads.")]
FhirMappingsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--fhir-mapping",
        help="NAME=map.yaml: how a FHIR Bundle posted to /v1/models/NAME/fhir maps onto inputs.",
    ),
]
MaxDecodesOpt = Annotated[
    int, typer.Option(help="Requests decoding at once (others wait, then 503 + Retry-After).")
]
RequestMbOpt = Annotated[
    float, typer.Option(help="Decoding memory of one request, from headers (413 beyond).")
]
MaxPixelsOpt = Annotated[int, typer.Option(help="Largest 2D image in pixels (413 beyond).")]
AllowBurnedInOpt = Annotated[
    bool, typer.Option(help="Accept DICOM images flagged BurnedInAnnotation=YES (not removed).")
]
