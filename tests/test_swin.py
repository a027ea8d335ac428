"""The Swin encoder and its SimMIM path: shapes (2D, 3D), options that do not fit, the mask token
in place of hidden patch embeddings, the hidden-pixel loss, a short real run on PneumoniaMNIST
and the classifier that starts from its checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from medmodal.errors import ConfigError
from medmodal.models import build_model
from medmodal.models.encoders import create_encoder
from medmodal.pretrain import build_simmim, load_pretrain_config, masked_l1, pretrain
from medmodal.pretrain import run as run_mod

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4]}
TINY_SWIN = {"name": "swin", **TINY}


def info(size: tuple[int, ...], channels: int = 1) -> dict[str, Any]:
    return {"in_channels": channels, "spatial_dims": len(size), "size": list(size)}


# -- the encoder ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "options", "grid"),
    [
        ((28, 28), {}, (7, 7)),
        ((64, 64), {"window_size": 8}, (16, 16)),
        ((32, 32), {"depths": [2, 2, 2], "num_heads": [3, 6, 12]}, (4, 4)),
        ((16, 16, 16), {"window_size": 4, **TINY}, (4, 4, 4)),
    ],
)
def test_swin_encoder_shapes(size: tuple[int, ...], options: dict, grid: tuple[int, ...]) -> None:
    enc = create_encoder("swin", "image", info(size, 3), **options)
    x = torch.randn(2, 3, *size)
    stages = len(options.get("depths", (2, 2)))
    assert enc.out_dim == options.get("embed_dim", 48) * 2 ** (stages - 1)
    assert enc(x).shape == (2, enc.out_dim)
    features = enc.stages(enc.swin.patch_embed(x))
    assert tuple(features.shape) == (2, enc.out_dim, *grid)  # no merge after the last stage
    assert not any(".downsample." in k for k in enc.state_dict() if f"layers{stages}." in k)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"patch_size": 4}, "patch_size 4 x 2\\*\\*\\(stages - 1\\) = 8 must divide the image"),
        ({"depths": [2, 2, 2], "num_heads": [3, 6, 12]}, "patch_size 2 x .* = 8 must divide"),
        ({"depths": [2, 2, 2]}, "num_heads \\[3, 6\\] needs one entry per stage"),
        ({"num_heads": [5, 6]}, "num_heads\\[0\\] = 5 must divide"),
        ({"depths": [1] * 5, "num_heads": [1] * 5}, "depths .* 1 to 4 stages"),
        ({"depths": []}, "depths"),
        ({"window_size": 0}, "window_size must be at least 1"),
        ({"embed_dim": 0}, "embed_dim must be at least 1"),
        ({"drop_path": 1.0}, "drop_path must lie in"),
        ({"depths": "2,2"}, "depths"),
        ({"window_sise": 7}, "unknown option 'window_sise'; allowed: depths"),
    ],
)
def test_bad_swin_options_name_the_option(options: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=f"encoder 'swin': .*{named}"):
        create_encoder("swin", "image", info((28, 28)), **options)


# -- SimMIM --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "window"), [((28, 28), 7), ((16, 16, 16), 4)])
def test_mask_token_replaces_the_hidden_patch_embeddings(
    size: tuple[int, ...], window: int
) -> None:
    model, masks = build_simmim("swin", {**TINY, "window_size": window}, info(size), 4, 0.6)
    assert model.model_patch == 2 and masks.token_grid == tuple(s // 2 for s in size)
    mask = masks(3, torch.Generator().manual_seed(0))
    x = torch.randn(3, 1, *size)
    embedded = model.embed(x, mask).movedim(1, -1)  # (B, *grid, C)
    plain = model.encoder.swin.patch_embed(x).movedim(1, -1)
    token = model.mask_token.flatten()
    assert torch.equal(embedded[mask], token.expand(int(mask.sum()), -1))
    assert torch.equal(embedded[~mask], plain[~mask])
    hidden = model.hidden_pixels(mask)
    assert hidden.shape == (3, 1, *size) and float(hidden.mean()) == pytest.approx(0.6, abs=0.05)
    changed = x + 5 * torch.randn_like(x) * hidden
    assert torch.equal(model.embed(changed, mask), model.embed(x, mask))
    out = model(x, mask)
    assert out.shape == x.shape


def test_loss_and_its_gradient_come_from_hidden_pixels_only() -> None:
    model, masks = build_simmim("swin", TINY, info((28, 28)), 4, 0.6)
    mask = masks(2, torch.Generator().manual_seed(1))
    x = torch.randn(2, 1, 28, 28)
    out = model(x, mask)
    out.retain_grad()
    hidden = model.hidden_pixels(mask)
    loss = masked_l1(out, x, hidden)
    loss.backward()
    assert out.grad is not None
    assert torch.all(out.grad[hidden.expand_as(out) == 0] == 0)
    assert torch.all(out.grad[hidden.expand_as(out) == 1] != 0)
    moved = torch.where(hidden.bool(), out, out + 10).detach()  # visible pixels wildly wrong
    assert float(masked_l1(moved, x, hidden)) == pytest.approx(float(loss.detach()))
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    assert model.decoder.weight.grad is not None


def test_mask_patch_must_be_a_multiple_of_the_swin_patch(tmp_path: Path) -> None:
    cfg = {
        "output_dir": str(tmp_path),
        "encoder": {**TINY_SWIN, "patch_size": 4},
        "mask": {"patch_size": 6},
    }
    with pytest.raises(ConfigError, match="mask.patch_size 6 must be a multiple .* patch_size 4"):
        load_pretrain_config(cfg)
    with pytest.raises(ConfigError, match="encoder \\(swin\\): unknown option 'depth'"):
        load_pretrain_config({**cfg, "encoder": {**TINY_SWIN, "depth": [2]}})


# -- a short real run, then a classifier from its checkpoint -------------------------------------
@pytest.fixture(scope="module")
def swin_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> run_mod.PretrainResult:
    out = tmp_path_factory.mktemp("swin") / "pneumonia"
    torch.set_num_threads(1)
    cfg = {
        "name": "swin",
        "seed": 0,
        "output_dir": str(out),
        "data": {"dataset": "pneumoniamnist", "data_dir": str(data_dir)},
        "encoder": dict(TINY_SWIN),
        "mask": {"ratio": 0.6, "patch_size": 4},
        "train": {"epochs": 3, "batch_size": 64, "lr": 2e-3, "warmup_epochs": 1},
        "preview": {"epochs": [3]},
    }
    cfg["train"] |= {"max_images": 512, "threads": 1}
    return pretrain(cfg)


@pytest.mark.slow  # a 4-epoch pretraining run (shared with the next test)
def test_pretraining_on_pneumoniamnist_lowers_the_loss(swin_run: run_mod.PretrainResult) -> None:
    h = swin_run.history
    assert [r["epoch"] for r in h] == [0, 1, 2, 3] and swin_run.images == 512
    assert swin_run.eval_loss_after < 0.8 * swin_run.eval_loss_before
    assert h[-1]["loss"] < h[1]["loss"]
    body = torch.load(swin_run.checkpoint, weights_only=True)
    assert body["encoder"]["name"] == "swin" and body["info"]["size"] == [28, 28]


@pytest.mark.slow
def test_classifier_init_loads_every_swin_weight(swin_run: run_mod.PretrainResult) -> None:
    body = torch.load(swin_run.checkpoint, weights_only=True)
    saved, shape = body["encoder_state"], body["info"]
    spec = {"encoders": {"xray": {**TINY_SWIN, "init": str(swin_run.checkpoint)}}}
    model = build_model({"xray": "image"}, {"xray": shape}, spec, task="binary", n_outputs=1)
    loaded = model.encoders["xray"].state_dict()
    assert set(loaded) == set(saved) and len(saved) > 30
    for key, tensor in saved.items():
        assert torch.equal(loaded[key], tensor), key
    torch.manual_seed(123)
    spec = {"encoders": {"xray": TINY_SWIN}}
    fresh = build_model({"xray": "image"}, {"xray": shape}, spec, task="binary", n_outputs=1)
    state = fresh.encoders["xray"].state_dict()
    differ = {k for k, v in state.items() if not torch.equal(v, saved[k])}
    assert {"swin.patch_embed.proj.weight", "norm.weight"} <= differ
    assert any("relative_position_bias_table" in k for k in differ)
