"""WDBC table rows paired with BreastMNIST ultrasound images **by class only**: a mechanics test
of the multimodal path on two real data sets, **not** a multimodal data set.

The Wisconsin table (fine-needle-aspirate nuclei, 569 patients) and BreastMNIST (BUSI breast
ultrasound, 780 images) come from different patients. ``prepare`` pairs a malignant row with a
malignant image and a benign row with a "normal, benign" image, at random (seeded), so any
"fusion gain" only shows that two independent class signals can be combined; it says nothing
about what an image adds to a patient's record. Every output says so: ``DatasetInfo.pairing``,
the manifest's ``pairing`` column, ``PAIRING.txt`` and the facts.

Pairing and splits (deterministic given ``seed``), per class:

* the number of pairs is min(images, rows) of that class (malignant 210, benign 357);
* pairs are allotted to the **official BreastMNIST splits** in proportion to that class's
  images in each split (largest remainder), and the images are drawn (without replacement)
  from their own official split, so an official test image is only ever in the test split;
* table rows are shuffled and dealt out to the splits without replacement.

So no image and no table row is in two splits, or in two pairs. Unused images / rows are
counted in the facts. Each pair is its own pseudo-"patient" (there is no shared patient).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medmodal.data.readers.npz import load_npz
from medmodal.data.schema import Schema
from medmodal.datasets.base import DATASETS, BuiltinDataset, DatasetInfo, Prepared
from medmodal.datasets.medmnist import MedMNIST
from medmodal.options import Strict

PAIRING = "NOT real patients: paired by class for mechanics only"
SPLITS = ("train", "val", "test")
CLASSES = ("benign", "malignant")
# BreastMNIST label index -> class; WDBC target index -> class.
IMAGE_CLASS = {0: "malignant", 1: "benign"}  # 1 = "normal, benign"
TABLE_CLASS = {0: "malignant", 1: "benign"}


class PairedOptions(Strict):
    """Options of ``wdbc_breastmnist_mechanics``: ``seed`` of the pairing."""

    seed: int = 0


class WDBCBreastMNIST(BuiltinDataset):
    info = DatasetInfo(
        name="wdbc_breastmnist_mechanics",
        title="WDBC rows + BreastMNIST images paired by class (mechanics test, NOT real patients)",
        task="binary",
        modalities={
            "image": "BreastMNIST ultrasound, 28 px, 1 channel (official split kept per image)",
            "record": "WDBC tabular, 30 features of fine-needle-aspirate nuclei",
        },
        size="567 pairs (210 malignant, 357 benign); 213 benign images and 2 malignant rows unused",
        source="sklearn.datasets.load_breast_cancer (UCI WDBC) + MedMNIST v2 breastmnist.npz (BUSI)",
        citation="Street W.N., Wolberg W.H., Mangasarian O.L. 1993; Yang J. et al., MedMNIST v2, "
        "Scientific Data 10, 41 (2023); Al-Dhabyani W. et al., Data in Brief 28 (2020).",
        licence="CC BY 4.0 (UCI WDBC; MedMNIST BreastMNIST)",
        pairing=PAIRING,
        notes="Different patients in the two sources: rows and images are paired at random within "
        "a class. Fusion results on it test the code path, never a clinical claim.",
    )

    def locate(self, data_dir: Path | None) -> Path:
        return MedMNIST("breastmnist").locate(data_dir)

    def write(self, out_dir: Path, data_dir: Path | None, options: PairedOptions) -> Prepared:
        """Write ``manifest.csv``, ``schema.yaml`` and ``PAIRING.txt`` into ``out_dir``."""
        npz = self.locate(data_dir)
        table, table_class, images = read_sources(npz)
        rows, facts = pair_by_class(images, table_class, npz, options.seed)
        frame = manifest_frame(rows, table)
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest = out_dir / "manifest.csv"
        frame.to_csv(manifest, index=False)
        (out_dir / "PAIRING.txt").write_text(
            f"{PAIRING}.\nWDBC rows and BreastMNIST images come from different patients; they were "
            f"paired at random within a class (seed {options.seed}). Results on this manifest test "
            "the multimodal code path only; they are not multimodal evidence.\n"
        )
        schema_path = out_dir / "schema.yaml"
        build_schema(list(table.columns)).save(schema_path)
        facts.update(
            rows=len(frame),
            split_counts={k: int(v) for k, v in frame["split"].value_counts().items()},
            source_file=str(npz),
        )
        return Prepared(manifest, schema_path, facts)


def read_sources(npz: Path) -> tuple[pd.DataFrame, np.ndarray, dict[str, np.ndarray]]:
    """The WDBC table (column names without spaces), each row's class, and each official
    BreastMNIST split's image classes."""
    from sklearn.datasets import load_breast_cancer

    arrays = load_npz(str(npz))
    bunch = load_breast_cancer(as_frame=True)
    table = bunch.data.copy()
    table.columns = [c.replace(" ", "_") for c in table.columns]
    table_class = np.array([TABLE_CLASS[int(t)] for t in bunch.target])
    images = {
        s: np.array([IMAGE_CLASS[int(v)] for v in arrays[f"{s}_labels"].reshape(-1)])
        for s in SPLITS
    }
    return table, table_class, images


def pair_by_class(
    images: dict[str, np.ndarray], table_class: np.ndarray, npz: Path, seed: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The pairs (one dict each: split, label, image reference, table row) and the facts
    (pairs per class and split, unused images and rows)."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    facts: dict[str, Any] = {
        "pairing": PAIRING,
        "seed": seed,
        "pairs": {},
        "unused_images": {},
        "unused_rows": {},
    }
    for cls in CLASSES:
        per_split = {s: np.flatnonzero(images[s] == cls) for s in SPLITS}
        table_rows = rng.permutation(np.flatnonzero(table_class == cls))
        n_img = sum(len(v) for v in per_split.values())
        alloc = _allot(min(n_img, len(table_rows)), {s: len(v) for s, v in per_split.items()})
        start = 0
        for s in SPLITS:
            picked = rng.permutation(per_split[s])[: alloc[s]]
            for img, row in zip(picked, table_rows[start : start + alloc[s]], strict=True):
                rows.append(
                    {
                        "split": s,
                        "label": cls,
                        "image": f"{npz}#{s}_images/{int(img)}",
                        "breastmnist_image": f"{s}/{int(img)}",
                        "wdbc_row": int(row),
                    }
                )
            start += alloc[s]
        facts["pairs"][cls] = alloc
        facts["unused_images"][cls] = n_img - sum(alloc.values())
        facts["unused_rows"][cls] = len(table_rows) - start
    return rows, facts


def manifest_frame(rows: list[dict[str, Any]], table: pd.DataFrame) -> pd.DataFrame:
    """One row per pair: ids, split, label, image reference, the WDBC row's features."""
    frame = pd.DataFrame(rows)
    frame.insert(0, "sample_id", [f"pair_{i:04d}" for i in range(len(frame))])
    frame.insert(1, "patient_id", frame["sample_id"])
    frame = pd.concat([frame, table.iloc[frame["wdbc_row"]].reset_index(drop=True)], axis=1)
    frame["pairing"] = PAIRING
    return frame


def build_schema(table_columns: list[str]) -> Schema:
    return Schema.load(
        {
            "id_column": "sample_id",
            "patient_column": "patient_id",
            "split_column": "split",
            "target": {
                "task": "binary",
                "column": "label",
                "classes": list(CLASSES),
                "positive": "malignant",
            },
            "modalities": {
                "image": {
                    "type": "image",
                    "column": "image",
                    "allow_missing": False,
                    "preprocess": {
                        "size": [28, 28],
                        "channels": 1,
                        "normalize": {"mean": [0.5], "std": [0.5]},
                    },
                },
                "record": {"type": "tabular", "columns": list(table_columns)},
            },
        }
    )


def _allot(total: int, sizes: dict[str, int]) -> dict[str, int]:
    """Split ``total`` over the keys in proportion to ``sizes`` (largest remainder, capped)."""
    n = sum(sizes.values())
    exact = {k: total * v / n for k, v in sizes.items()}
    out = {k: int(np.floor(x)) for k, x in exact.items()}
    for k in sorted(sizes, key=lambda k: (out[k] - exact[k], list(sizes).index(k))):
        if sum(out.values()) >= total:
            break
        if out[k] < sizes[k]:
            out[k] += 1
    return out


DATASETS.register("wdbc_breastmnist_mechanics", options=PairedOptions)(WDBCBreastMNIST)
