"""Image training mechanics on small SYNTHETIC images: augmentation (training only, seeded, never
at evaluation) and the 3D encoders (DenseNet-121, ResNet-50, ViT) end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medmodal import api
from medmodal.data.dataset import MultimodalDataset
from medmodal.data.preprocess import create_processor
from medmodal.data.schema import ModalitySpec
from medmodal.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")
AUGMENT = {"flip": 0.5, "rotate": 15, "scale": 0.1, "intensity": 0.2}


def _images(dest: Path, n: int = 24, size: int = 16, volume: bool = False) -> pd.DataFrame:
    """Random, asymmetric images (PNG) or volumes (.npy); the label is whether the left half
    is brighter than the right, so a flip changes what the image shows."""
    rng = np.random.default_rng(0)
    dest.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        shape = (size,) * (3 if volume else 2)
        x = rng.uniform(0, 150, size=shape)
        y = i % 2
        x[..., : size // 2] += 100 if y else 0
        x = x.astype(np.uint8)
        name = f"v{i}.npy" if volume else f"i{i}.png"
        if volume:
            np.save(dest / name, x)
        else:
            Image.fromarray(x).save(dest / name)
        rows.append({"sample_id": f"s{i}", "patient_id": f"p{i}", "path": name, "y": "ab"[y]})
    frame = pd.DataFrame(rows)
    frame.to_csv(dest / "manifest.csv", index=False)
    return frame


def _config(dest: Path, encoder: dict[str, Any], size: list[int], **preprocess: Any) -> dict:
    schema = {
        "id_column": "sample_id",
        "patient_column": "patient_id",
        "target": {"task": "binary", "column": "y", "classes": ["a", "b"]},
        "modalities": {
            "image": {"type": "image", "column": "path", "preprocess": {"size": size, **preprocess}}
        },
    }
    return {
        "name": dest.name,
        "seed": 0,
        "output_dir": str(dest / "run"),
        "data": {"manifest": str(dest / "manifest.csv"), "schema": schema,
                 "val_fraction": 0.25, "test_fraction": 0.25},
        "model": {"encoders": {"image": encoder}},
        "train": {"epochs": 1, "batch_size": 8, "threads": 1},
        "evaluate": {"bootstrap": 0, "report": False},
    }  # fmt: skip


# -- augmentation ------------------------------------------------------------------------------
def _dataset(dest: Path, augment: dict[str, float]) -> MultimodalDataset:
    frame = _images(dest)
    spec = ModalitySpec(
        type="image", column="path", preprocess={"size": [16, 16], "augment": augment}
    )
    proc = create_processor("image", spec)
    ds = MultimodalDataset(
        frame.to_dict("records"), list(frame["sample_id"]), list(frame["patient_id"]),
        np.arange(len(frame)) % 2, {"image": proc}, dest,
    ).load()  # fmt: skip
    proc.fit(ds.raws_of("image"))
    return ds.finalize()


def _draw(ds: MultimodalDataset, train: bool, seed: int | None = None) -> torch.Tensor:
    ds.train = train
    ds.generator = None if seed is None else torch.Generator().manual_seed(seed)
    return torch.stack([ds[i]["image"] for i in range(len(ds))])


def test_augmentation_changes_training_samples_only_and_is_seeded(tmp_path: Path) -> None:
    ds = _dataset(tmp_path, AUGMENT)
    stored = _draw(ds, train=False)
    a, b, c = (_draw(ds, train=True, seed=s) for s in (1, 1, 2))
    changed = [not torch.equal(a[i], stored[i]) for i in range(len(ds))]
    assert all(changed)  # intensity jitter and rotation touch every sample
    assert torch.equal(a, b) and not torch.equal(a, c)  # the generator decides, nothing else
    assert torch.equal(_draw(ds, train=False), stored)  # evaluation mode: the stored tensors
    plain = _dataset(tmp_path / "plain", {})
    assert torch.equal(_draw(plain, train=True, seed=1), _draw(plain, train=False))


def _count_augment_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count calls of the image processor's ``augment`` (the one hook augmentation goes through)."""
    from medmodal.data.preprocess.image import ImageProcessor

    calls = [0]
    augment = ImageProcessor.augment

    def counting(self: Any, x: torch.Tensor, generator: Any = None) -> torch.Tensor:
        calls[0] += 1
        return augment(self, x, generator)

    monkeypatch.setattr(ImageProcessor, "augment", counting)
    return calls


def test_evaluation_and_prediction_never_augment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_augment_calls(monkeypatch)
    frame = _images(tmp_path)
    cfg = _config(tmp_path, {"name": "baseline_cnn", "hidden": 16, "filters": 4}, [16, 16],
                  augment={"flip": 1.0})  # fmt: skip
    cfg["train"]["epochs"] = 2
    run = api.fit(cfg, progress=False)
    n = run.metrics["n"]
    assert n["val"] > 0 and n["test"] > 0
    assert calls[0] == 2 * n["train"]  # each training draw of 2 epochs; validation, test: none
    saved = pd.read_csv(run.run_dir / "predictions_test.csv")
    calls[0] = 0
    pred = api.predict(run.checkpoint, frame[frame["sample_id"].isin(saved["sample_id"])],
                       root=tmp_path)  # fmt: skip
    assert calls[0] == 0
    np.testing.assert_allclose(pred["prob_b"], saved["prob_b"], atol=1e-6)


# -- 3D encoders -------------------------------------------------------------------------------
ENCODERS_3D = {
    "densenet121": ({"name": "densenet121"}, 8),
    "resnet50": ({"name": "resnet50"}, 4),
    "vit": ({"name": "vit", "hidden_size": 48, "mlp_dim": 96, "num_layers": 2, "num_heads": 2}, 16),
}


@pytest.mark.parametrize("name", sorted(ENCODERS_3D))
def test_3d_encoder_forward_and_backward(name: str) -> None:
    spec, size = ENCODERS_3D[name]
    kw = {k: v for k, v in spec.items() if k != "name"}
    model = create_model(name, num_classes=3, size=(size,) * 3, **kw)
    x = torch.randn(2, 1, size, size, size)
    out = model(x)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    out.pow(2).sum().backward()
    # every weight but the missing-modality token (used only for absent rows) gets a gradient
    params = {n: p for n, p in model.named_parameters() if not n.startswith("missing_tokens.")}
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params.values())
    assert (
        sum(float(p.grad.abs().sum()) for n, p in params.items() if n.startswith("encoders.")) > 0
    )


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("densenet121", marks=pytest.mark.slow),
        pytest.param("resnet50", marks=pytest.mark.slow),
        "vit",
    ],
)
def test_3d_encoder_fits_one_epoch_and_predicts(tmp_path: Path, name: str) -> None:
    spec, size = ENCODERS_3D[name]
    frame = _images(tmp_path, n=16, size=size, volume=True)
    run = api.fit(_config(tmp_path, spec, [size] * 3), progress=False)
    assert run.metrics["n"] == {"train": 8, "val": 4, "test": 4}
    assert np.isfinite(run.history[0]["train_loss"]) and np.isfinite(run.history[0]["val_loss"])
    saved = pd.read_csv(run.run_dir / "predictions_test.csv")
    pred = api.predict(run.checkpoint, frame[frame["sample_id"].isin(saved["sample_id"])],
                       root=tmp_path)  # fmt: skip
    np.testing.assert_allclose(pred["prob_b"], saved["prob_b"], atol=1e-5)
    info = torch.load(run.checkpoint, weights_only=True)["schema"]["modalities"]["image"]
    assert info["preprocess"]["size"] == [size] * 3
