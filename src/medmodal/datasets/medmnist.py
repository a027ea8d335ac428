"""MedMNIST v2 / MedMNIST+ (Yang et al., Sci. Data 2023): official ``.npz`` files, official splits.

``prepare`` writes a manifest whose image column points into the archive
(``file.npz#train_images/12``), or real PNG/NIfTI-free image files with
``image_format="png"`` (2D only), so the same manifest path as user data is used.
MedMNIST has no patient ids: each image is its own "patient" (the official
splits were made by the authors; see each source dataset for its own caveats).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from medmodal.data.readers.npz import load_npz
from medmodal.data.schema import Schema
from medmodal.datasets.base import (
    DATASETS,
    BuiltinDataset,
    DatasetInfo,
    Prepared,
    download,
    require_file,
)
from medmodal.errors import DatasetError
from medmodal.options import Strict

ZENODO = "https://zenodo.org/records/10519652/files/{file}?download=1"
CITATION = (
    "Yang J. et al., MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical "
    "image classification. Scientific Data 10, 41 (2023)."
)

# name -> (task, labels (MedMNIST label order), binary: the positive class, channels, md5 of the 28-px file, {size: md5} for MedMNIST+ sizes, source)
SPECS: dict[str, dict[str, Any]] = {
    "breastmnist": dict(
        task="binary",
        labels=["malignant", "normal, benign"],
        positive="malignant",
        channels=1,
        md5="750601b1f35ba3300ea97c75c52ff8f6",
        source="BUSI breast ultrasound (Al-Dhabyani et al. 2020)",
        licence="CC BY 4.0",
    ),
    "pneumoniamnist": dict(
        task="binary",
        labels=["normal", "pneumonia"],
        positive="pneumonia",
        channels=1,
        md5="28209eda62fecd6e6a2d98b1501bb15f",
        source="Pediatric chest X-ray (Kermany et al. 2018)",
        licence="CC BY 4.0",
    ),
    "retinamnist": dict(
        task="multiclass",
        labels=["0", "1", "2", "3", "4"],
        channels=3,
        md5="bd4c0672f1bba3e3a89f0e4e876791e4",
        source="DeepDRiD fundus (diabetic retinopathy grade)",
        licence="CC BY 4.0",
    ),
    "bloodmnist": dict(
        task="multiclass",
        labels=[
            "basophil",
            "eosinophil",
            "erythroblast",
            "immature granulocytes",
            "lymphocyte",
            "monocyte",
            "neutrophil",
            "platelet",
        ],
        channels=3,
        md5="7053d0359d879ad8a5505303e11de1dc",
        source="Blood cell microscopy (Acevedo et al. 2020)",
        licence="CC BY 4.0",
    ),
    "dermamnist": dict(
        task="multiclass",
        labels=[
            "actinic keratoses",
            "basal cell carcinoma",
            "benign keratosis-like lesions",
            "dermatofibroma",
            "melanoma",
            "melanocytic nevi",
            "vascular lesions",
        ],
        channels=3,
        md5="0744692d530f8e62ec473284d019b0c7",
        source="HAM10000 dermatoscopy",
        licence="CC BY-NC 4.0",
    ),
    "organamnist": dict(
        task="multiclass",
        labels=[
            "bladder",
            "femur-left",
            "femur-right",
            "heart",
            "kidney-left",
            "kidney-right",
            "liver",
            "lung-left",
            "lung-right",
            "pancreas",
            "spleen",
        ],
        channels=1,
        md5="866b832ed4eeba67bfb9edee1d5544e6",
        source="LiTS abdominal CT, axial",
        licence="CC BY 4.0",
    ),
    "adrenalmnist3d": dict(
        task="binary",
        labels=["normal", "hyperplasia"],
        positive="hyperplasia",
        channels=1,
        dims=3,
        md5="bbd3c5a5576322bc4cdfea780653b1ce",
        md5_sizes={64: "17721accfe9fb005146a47d33bc54b2f"},
        source="Adrenal CT (MedMNIST v2 in-house)",
        licence="CC BY 4.0",
    ),
}


def file_name(name: str, size: int) -> str:
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


class MedMNISTOptions(Strict):
    """Options of a MedMNIST set: ``size`` (28, or a MedMNIST+ size where known),
    ``image_format`` (``npz`` references or ``png`` files, 2D only), ``download`` (from Zenodo),
    ``limit`` (the first N images of each split, for quick demos and tests)."""

    size: int = 28
    image_format: str = "npz"
    download: bool = False
    limit: int | None = None


class MedMNIST(BuiltinDataset):
    def __init__(self, name: str, options: BaseModel | None = None) -> None:
        super().__init__(options)
        self.name = name
        self.spec = SPECS[name]
        dims = self.spec.get("dims", 2)
        self.info = DatasetInfo(
            name=name,
            title=f"MedMNIST {name}",
            task=self.spec["task"],
            modalities={
                "image": f"{dims}D, {self.spec['channels']} channel(s), 28 px (MedMNIST+ sizes where available)"
            },
            size="official train/val/test splits",
            source=f"{ZENODO.format(file=name + '.npz')} ; {self.spec['source']}",
            citation=CITATION,
            licence=self.spec["licence"],
            notes="No patient ids in MedMNIST: each image is treated as its own patient.",
        )

    def locate(self, data_dir: Path | None, size: int = 28, download_missing: bool = False) -> Path:
        md5 = self.spec["md5"] if size == 28 else self.spec.get("md5_sizes", {}).get(size)
        if size != 28 and md5 is None:
            raise DatasetError(f"{self.name}: no official {size}-px file is known to medmodal")
        fname = file_name(self.name, size)
        if data_dir is None:
            raise DatasetError(
                f"{self.name}: no data directory; pass --data-dir or set $MEDMODAL_DATA_DIR "
                f"(the file {fname} comes from {ZENODO.format(file=fname)})"
            )
        candidates = [data_dir / "medmnist" / fname, data_dir / fname]
        for c in candidates:
            if c.is_file():
                return require_file(c, self.name, ZENODO.format(file=fname), md5, "md5")
        if download_missing:
            return download(ZENODO.format(file=fname), candidates[0], md5, "md5")
        return require_file(candidates[0], self.name, ZENODO.format(file=fname), md5, "md5")

    def write(self, out_dir: Path, data_dir: Path | None, options: MedMNISTOptions) -> Prepared:
        """Write ``manifest.csv`` + ``schema.yaml`` into ``out_dir`` (the official splits)."""
        o = options
        dims = self.spec.get("dims", 2)
        if o.image_format not in ("npz", "png"):
            raise DatasetError(f"unknown image_format {o.image_format!r}; use npz or png")
        if o.image_format == "png" and dims != 2:
            raise DatasetError(
                f"{self.name} is 3D; PNG export is for 2D sets (use image_format=npz)"
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        path = self.locate(data_dir, o.size, o.download)
        rows = self.rows(load_npz(str(path)), path, out_dir, o)
        manifest = out_dir / "manifest.csv"
        pd.DataFrame(rows).to_csv(manifest, index=False)
        schema_path = out_dir / "schema.yaml"
        self.schema(o.size).save(schema_path)
        return Prepared(manifest, schema_path, {"rows": len(rows), "source_file": str(path)})

    def rows(
        self, arrays: Any, path: Path, out_dir: Path, o: MedMNISTOptions
    ) -> list[dict[str, Any]]:
        """One manifest row per image of each official split (the first ``limit`` of each); the
        image is a reference into the archive, or a PNG written under ``out_dir/images``."""
        rows = []
        for split in ("train", "val", "test"):
            imgs, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"].reshape(-1)
            n = len(imgs) if o.limit is None else min(o.limit, len(imgs))
            for i in range(n):
                sid = f"{split}_{i:05d}"
                if o.image_format == "png":
                    ref = _write_png(out_dir / "images" / split / f"{i:05d}.png", imgs[i])
                    ref = str(ref.relative_to(out_dir))
                else:
                    ref = f"{path}#{split}_images/{i}"
                label = self.spec["labels"][int(labels[i])]
                rows.append(
                    {"sample_id": sid, "patient_id": sid, "split": split, "label": label,
                     "image": ref}
                )  # fmt: skip
        return rows

    def schema(self, size: int) -> Schema:
        channels = self.spec["channels"]
        return Schema.load(
            {
                "id_column": "sample_id",
                "patient_column": "patient_id",
                "split_column": "split",
                "target": {
                    "task": self.spec["task"],
                    "column": "label",
                    "classes": self.spec["labels"],
                    "positive": self.spec.get("positive"),
                },
                "modalities": {
                    "image": {
                        "type": "image",
                        "column": "image",
                        "allow_missing": False,
                        "preprocess": {
                            "size": [size] * self.spec.get("dims", 2),
                            "channels": channels,
                            "normalize": {"mean": [0.5] * channels, "std": [0.5] * channels},
                        },
                    }
                },
            }
        )


def _write_png(path: Path, img: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(img, dtype=np.uint8)).save(path)
    return path


for _name in SPECS:
    DATASETS.register(_name, options=MedMNISTOptions)(
        lambda options=None, _n=_name: MedMNIST(_n, options)
    )
