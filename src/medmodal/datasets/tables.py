"""Real clinical tables that ship inside packages: WDBC (scikit-learn) and the
scikit-survival survival tables (WHAS500, GBSG2, veterans, AIDS, FLCHAIN)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from medmodal.data.schema import Schema
from medmodal.datasets.base import (
    DATASETS,
    BuiltinDataset,
    DatasetInfo,
    NoOptions,
    Prepared,
)
from medmodal.errors import DatasetError


def _write(out_dir: Path, frame: pd.DataFrame, schema: dict[str, Any]) -> Prepared:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "manifest.csv"
    frame.to_csv(manifest, index=False)
    schema_path = out_dir / "schema.yaml"
    Schema.load(schema).save(schema_path)
    return Prepared(manifest, schema_path, {"rows": len(frame)})


class WDBC(BuiltinDataset):
    info = DatasetInfo(
        name="wdbc",
        title="Wisconsin Diagnostic Breast Cancer (scikit-learn)",
        task="binary",
        modalities={"record": "tabular, 30 features of fine-needle-aspirate nuclei"},
        size="569 patients (212 malignant, 357 benign)",
        source="sklearn.datasets.load_breast_cancer (UCI ML repository)",
        citation="Street W.N., Wolberg W.H., Mangasarian O.L. Nuclear feature extraction for breast tumor diagnosis. 1993.",
        licence="CC BY 4.0 (UCI)",
    )

    def locate(self, data_dir: Path | None) -> Path:
        return Path("sklearn")

    def write(self, out_dir: Path, data_dir: Path | None, options: NoOptions) -> Prepared:
        from sklearn.datasets import load_breast_cancer

        bunch = load_breast_cancer(as_frame=True)
        X = bunch.data.copy()
        X.columns = [c.replace(" ", "_") for c in X.columns]
        names = list(bunch.target_names)  # ['malignant', 'benign']
        frame = pd.concat(
            [pd.DataFrame({"sample_id": [f"wdbc_{i:03d}" for i in range(len(X))]}), X], axis=1
        )
        frame["patient_id"] = frame["sample_id"]
        frame["diagnosis"] = [names[t] for t in bunch.target]
        schema = {
            "id_column": "sample_id",
            "patient_column": "patient_id",
            "target": {
                "task": "binary",
                "column": "diagnosis",
                "classes": ["benign", "malignant"],
                "positive": "malignant",
            },
            "modalities": {"record": {"type": "tabular", "columns": list(X.columns)}},
        }
        return _write(out_dir, frame, schema)


SURVIVAL_TABLES: dict[str, dict[str, str]] = {
    "whas500": dict(
        loader="load_whas500",
        title="Worcester Heart Attack Study (500 patients)",
        citation="Hosmer D., Lemeshow S., May S. Applied Survival Analysis, 2nd ed. Wiley, 2008.",
    ),
    "gbsg2": dict(
        loader="load_gbsg2",
        title="German Breast Cancer Study Group 2 (686 patients)",
        citation="Schumacher M. et al. Randomized 2x2 trial evaluating hormonal treatment... J Clin Oncol 12(10), 1994.",
    ),
    "veterans": dict(
        loader="load_veterans_lung_cancer",
        title="Veterans' Administration lung cancer trial (137 patients)",
        citation="Kalbfleisch J.D., Prentice R.L. The Statistical Analysis of Failure Time Data. Wiley, 1980.",
    ),
    "aids": dict(
        loader="load_aids",
        title="AIDS Clinical Trials Group 320 (1151 patients)",
        citation="Hammer S.M. et al. NEJM 337:725-733, 1997.",
    ),
    "flchain": dict(
        loader="load_flchain",
        title="Serum free light chain and mortality (7874 people)",
        citation="Dispenzieri A. et al. Mayo Clin Proc 87(6):517-523, 2012.",
    ),
}


# Columns known only after the outcome (a label leak), kept in the manifest but not model inputs:
# FLCHAIN's ``chapter`` is the ICD chapter of the cause of death (empty for the living).
NOT_INPUTS: dict[str, list[str]] = {"flchain": ["chapter"]}
# Inputs kept but flagged: they carry part of the outcome for some rows.
FLAGGED: dict[str, str] = {
    "whas500": "'los' (length of hospital stay, days) equals the survival time (lenfol) for the "
    "40 patients who died in hospital (all 40 are events), so for them it reveals the outcome; "
    "it is kept as an input (it is known at discharge), but a model that leans on it partly "
    "reads the answer: compare with the record without 'los' (benchmarks/results/leaderboard.md "
    "gives both).",
}


class SurvivalTable(BuiltinDataset):
    """A scikit-survival table as a manifest with ``time`` / ``event`` columns."""

    def __init__(self, name: str, options: BaseModel | None = None) -> None:
        super().__init__(options)
        self.name = name
        spec = SURVIVAL_TABLES[name]
        self.info = DatasetInfo(
            name=name,
            title=spec["title"],
            task="survival",
            modalities={"record": "tabular clinical variables (numeric + categorical)"},
            size=spec["title"],
            source=f"sksurv.datasets.{spec['loader']} (scikit-survival)",
            citation=spec["citation"],
            licence="see scikit-survival's documentation",
            notes="Survival target (time, event): Cox or discrete-time models "
            "(model.survival). "
            + (
                f"Not model inputs (known only after the outcome): {NOT_INPUTS[name]}."
                if name in NOT_INPUTS
                else ""
            )
            + (f"Flagged input: {FLAGGED[name]}" if name in FLAGGED else ""),
        )

    def locate(self, data_dir: Path | None) -> Path:
        return Path("sksurv")

    def write(self, out_dir: Path, data_dir: Path | None, options: NoOptions) -> Prepared:
        try:
            from sksurv import datasets as skd
        except ImportError:
            raise DatasetError(
                f"{self.name} needs scikit-survival: pip install 'medmodal[survival]'"
            ) from None
        X, y = getattr(skd, SURVIVAL_TABLES[self.name]["loader"])()
        event_field, time_field = y.dtype.names[0], y.dtype.names[1]
        frame = X.reset_index(drop=True).copy()
        inputs = [c for c in frame.columns if c not in NOT_INPUTS.get(self.name, [])]
        categorical = [c for c in inputs if not pd.api.types.is_numeric_dtype(frame[c])]
        numeric = [c for c in inputs if c not in categorical]
        frame.insert(0, "sample_id", [f"{self.name}_{i:05d}" for i in range(len(frame))])
        frame["patient_id"] = frame["sample_id"]
        frame["time"] = np.asarray(y[time_field], dtype=float)
        frame["event"] = np.asarray(y[event_field], dtype=int)
        schema = {
            "id_column": "sample_id",
            "patient_column": "patient_id",
            "target": {"task": "survival", "time_column": "time", "event_column": "event"},
            "modalities": {
                "record": {
                    "type": "tabular",
                    "columns": numeric + categorical,
                    "categorical": categorical,
                }
            },
        }
        return _write(out_dir, frame, schema)


DATASETS.register("wdbc", options=NoOptions)(WDBC)
for _name in SURVIVAL_TABLES:
    DATASETS.register(_name, options=NoOptions)(
        lambda options=None, _n=_name: SurvivalTable(_n, options)
    )
