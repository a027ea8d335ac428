"""What ``medmodal predict --dicomweb``, ``predict BUNDLE.json --fhir-mapping`` and ``listen`` do,
kept out of the CLI module: load the model once, run, return JSON-ready results."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medmodal.errors import DataError, MedmodalError
from medmodal.hospital.dicomweb import Pacs, check_uid
from medmodal.hospital.fhir import report_bundle
from medmodal.hospital.fhir_input import bundle_parts, read_mapping
from medmodal.hospital.pipeline import run_dicomweb_study
from medmodal.serve.audit_log import AuditLog
from medmodal.serve.inference import ModelEntry
from medmodal.serve.limits import BadRequest
from medmodal.serve.server import model_names


def load_entry(checkpoint: str | Path) -> ModelEntry:
    name, path = next(iter(model_names([str(checkpoint)]).items()))
    return ModelEntry(name, path)


def predict_studies(
    checkpoint: Path,
    url: str,
    studies: list[str],
    *,
    store_sr: bool = True,
    audit_log: Path | None = None,
    modality: str | None = None,
    explain: bool = False,
) -> list[dict[str, Any]]:
    """Each study fetched from the DICOMweb ``url``, predicted, its SR stored back."""
    for uid in studies:
        check_uid(uid)
    entry, pacs = load_entry(checkpoint), Pacs(url)
    audit = AuditLog(audit_log) if audit_log else None
    try:
        out = []
        for uid in studies:
            outcome = run_dicomweb_study(
                entry,
                pacs,
                uid,
                store_sr=store_sr,
                audit=audit,
                caller="cli",
                modality=modality,
                explain=explain,
            )
            out.append({"study": uid, **outcome.summary()})
        return out
    finally:
        if audit is not None:
            audit.close()


def study_fhir(summary: dict[str, Any], card: dict[str, Any]) -> list[dict[str, Any]]:
    """One FHIR Bundle per predicted instance of a study summary."""
    return [report_bundle(inst, card, study_uid=summary["study"]) for inst in summary["instances"]]


def predict_bundle(
    checkpoint: Path, bundle_path: Path, mapping_path: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A FHIR Bundle mapped onto the model's inputs -> (the prediction, a FHIR report Bundle)."""
    entry = load_entry(checkpoint)
    try:
        bundle = json.loads(bundle_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read the FHIR Bundle: {exc}", path=bundle_path) from None
    parts = bundle_parts(bundle, read_mapping(mapping_path, entry.predictor))
    try:
        prepared = entry.prepare(parts)
    except BadRequest as exc:
        raise MedmodalError(f"{bundle_path}: {exc}") from None
    out = entry.run_batch([prepared.sample])[0]
    patient = next(
        (
            e.get("fullUrl")
            for e in bundle.get("entry", [])
            if (e.get("resource") or {}).get("resourceType") == "Patient"
        ),
        None,
    )
    subject = {"reference": patient} if patient else None
    present = prepared.sample["present"]
    result = {
        **out,
        "modalities": {"used": [m for m, p in present.items() if p]},
        "input_digests": prepared.digests,
    }
    return result, report_bundle(out, entry.card, subject=subject)


def write_instances_csv(path: Path, summaries: list[dict[str, Any]]) -> Path:
    """One row per predicted instance: study, instance, probabilities, prediction, set."""
    rows = []
    for s in summaries:
        for inst in s["instances"]:
            row = {"study_instance_uid": s["study"], "sop_instance_uid": inst["sop_instance_uid"]}
            row.update({f"p_{c}": p for c, p in inst["probabilities"].items()})
            row["prediction"] = inst["prediction"]
            row["prediction_set"] = "|".join(inst["prediction_set"] or [])
            rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["study_instance_uid"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@dataclass(frozen=True)
class ListenSettings:
    """``medmodal listen``'s network options."""

    aet: str = "MEDMODAL"
    port: int = 11112
    host: str = "127.0.0.1"
    allow: tuple[str, ...] = ()
    destination: str | None = None
    quiet: float = 5.0


def listen_until_stopped(
    checkpoints: list[str],
    settings: ListenSettings,
    audit_log: Path,
    threads: int = 1,
    say: Any = print,
) -> None:
    """Run the DIMSE listener until interrupted (SIGINT / SIGTERM), reporting each study."""
    import signal
    import threading

    import torch

    from medmodal.hospital.listen import Destination, Listener
    from medmodal.serve.server import load_models

    torch.set_num_threads(threads)
    s = settings
    dest = Destination.parse(s.destination) if s.destination else None
    audit = AuditLog(audit_log)
    listener = Listener(load_models(checkpoints), list(s.allow), dest, s.quiet, audit)
    listener.start(s.aet, s.port, s.host)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    say(
        f"medmodal listen: {s.aet} on {s.host}:{s.port}; accepts {', '.join(s.allow)}; "
        f"SRs to {s.destination or 'nowhere (no --destination)'}"
    )
    try:
        _report_until(stop, listener, say)
    except KeyboardInterrupt:
        pass
    finally:
        listener.stop()
        audit.close()
        say("medmodal listen: stopped")


def _report_until(stop: Any, listener: Any, say: Any) -> None:
    """Say each finished study and each error as it appears, until ``stop`` is set."""
    seen, errors = 0, 0
    while not stop.wait(0.5):
        for outcome in list(listener.outcomes)[seen:]:
            s = outcome.summary()
            sent = "sent" if s["sr"]["stored"] else "kept"
            say(
                f"study of {len(s['instances'])} image(s) by {s['model']}: "
                f"SR {s['sr']['sop_instance_uid']} ({sent})"
            )
        seen = len(listener.outcomes)
        for text in list(listener.errors)[errors:]:
            say(f"error: {text}")
        errors = len(listener.errors)
