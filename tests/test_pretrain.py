"""Masked-image pretraining: masks, the hidden-pixel loss, no leak of hidden pixels, bad configs,
a short real run, the encoder checkpoint a classifier starts from, resume, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml

from medmodal.errors import ConfigError, DataError
from medmodal.models import build_model
from medmodal.pretrain import MaskGenerator, build_simmim, load_pretrain_config, masked_l1, pretrain
from medmodal.pretrain import run as run_mod
from medmodal.run.pretrained import KEY_SCHEME, InitCheckWarning

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_VIT = {"name": "vit", "patch_size": 4, "hidden_size": 32, "mlp_dim": 64}
TINY_VIT |= {"num_layers": 2, "num_heads": 2}


def tiny_config(out: Path, data_dir: Path | None = None, **sections: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": out.name,
        "seed": 0,
        "output_dir": str(out),
        "data": {"dataset": "breastmnist", "data_dir": str(data_dir) if data_dir else None},
        "encoder": dict(TINY_VIT),
        "mask": {"ratio": 0.6, "patch_size": 4},
        "train": {"epochs": 2, "batch_size": 64, "lr": 2e-3, "warmup_epochs": 1, "threads": 1},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


# -- masks ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "mask_patch", "model_patch"), [((32, 32), 8, 2), ((28,) * 3, 14, 7)]
)
def test_mask_ratio_alignment_and_seed(
    size: tuple[int, ...], mask_patch: int, model_patch: int
) -> None:
    gen = MaskGenerator(size, mask_patch=mask_patch, model_patch=model_patch, ratio=0.6)
    mask = gen(16, torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and tuple(mask.shape[1:]) == gen.token_grid
    # exactly ceil(ratio * cells) mask patches hidden in every image
    per_image = mask.flatten(1).float().sum(1) / gen.scale ** len(gen.grid)
    assert torch.all(per_image == gen.hidden) and gen.hidden == -(-6 * gen.cells // 10)
    # aligned: each mask patch covers whole model patches and is all hidden or all visible
    s = gen.scale
    blocks = mask.unflatten(1, (gen.grid[0], s)).unflatten(3, (gen.grid[1], s))
    if len(size) == 3:
        blocks = blocks.unflatten(5, (gen.grid[2], s))
    dims = tuple(range(2, blocks.ndim, 2))
    assert torch.all(blocks.all(dim=dims) | ~blocks.any(dim=dims))
    again = gen(16, torch.Generator().manual_seed(0))
    other = gen(16, torch.Generator().manual_seed(1))
    assert torch.equal(mask, again) and not torch.equal(mask, other)
    assert not torch.equal(mask[0], mask[1])  # images of a batch get different masks


def test_mask_generator_refuses_bad_geometry() -> None:
    with pytest.raises(ConfigError, match="mask.patch_size 6 must be a multiple"):
        MaskGenerator((28, 28), mask_patch=6, model_patch=4, ratio=0.5)
    with pytest.raises(ConfigError, match="mask.patch_size 8 must divide the image size"):
        MaskGenerator((28, 28), mask_patch=8, model_patch=4, ratio=0.5)
    for ratio in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError, match="mask.ratio"):
            MaskGenerator((28, 28), mask_patch=4, model_patch=4, ratio=ratio)


# -- loss ----------------------------------------------------------------------------------------
def test_loss_counts_hidden_pixels_only() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randn(4, 3, 16, 16, generator=g)
    hidden = (torch.rand(4, 1, 16, 16, generator=g) > 0.5).float()
    garbage = torch.randn(4, 3, 16, 16, generator=g) * 100
    perfect_hidden = torch.where(hidden.bool(), target, garbage)
    assert float(masked_l1(perfect_hidden, target, hidden)) == 0.0
    wrong = perfect_hidden.clone()
    i = hidden.nonzero()[0]
    wrong[i[0], 1, i[2], i[3]] += 3.0
    expected = 3.0 / (hidden.sum() * 3)
    assert float(masked_l1(wrong, target, hidden)) == pytest.approx(float(expected), rel=1e-5)


# -- models: hidden pixels never reach the encoder ---------------------------------------------
CASES = [
    ("vit", TINY_VIT, (28, 28), 4),
    ("vit", {**TINY_VIT, "patch_size": 7}, (28, 28, 28), 7),
    ("resnet18", {"name": "resnet18"}, (28, 28), 4),
    ("resnet18", {"name": "resnet18"}, (16, 16, 16), 4),
    ("swin", {"name": "swin", "embed_dim": 16, "num_heads": [2, 4]}, (28, 28), 4),
    ("swin", {"name": "swin", "embed_dim": 12, "window_size": 4}, (16, 16, 16), 8),
]


@pytest.mark.parametrize(("name", "options", "size", "mask_patch"), CASES)
def test_hidden_pixels_do_not_reach_the_reconstruction(
    name: str, options: dict, size: tuple[int, ...], mask_patch: int
) -> None:
    info = {"in_channels": 1, "spatial_dims": len(size), "size": list(size)}
    opts = {k: v for k, v in options.items() if k != "name"}
    model, masks = build_simmim(name, opts, info, mask_patch, 0.6)
    mask = masks(3, torch.Generator().manual_seed(0))
    hidden = model.hidden_pixels(mask)
    x = torch.randn(3, 1, *size)
    for train in (True, False):
        model.train(train)
        out = model(x, mask)
        assert out.shape == x.shape
        changed_hidden = model(x + 5 * torch.randn_like(x) * hidden, mask)
        changed_visible = model(x + 5 * torch.randn_like(x) * (1 - hidden), mask)
        assert torch.equal(out, changed_hidden)
        assert not torch.allclose(out, changed_visible)
    # the sparse batch norm is only in force during the masked forward
    model.eval()
    assert all("forward" not in vars(m) for m in model.modules())
    assert model.encoder(x).shape == (3, model.encoder.out_dim)


# -- config --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"mask": {"patch_size": 6}}, "mask.patch_size"),
        ({"mask": {"ratio": 0.0}}, "mask.ratio"),
        ({"mask": {"ratio": 1.0}}, "mask.ratio"),
        ({"mask": {"ration": 0.5}}, "unknown option 'mask.ration'"),
        ({"encoder": {"name": "densenet121"}}, "encoder.name: 'densenet121' has no masked-image"),
        ({"encoder": {"name": "baseline_cnn"}}, "encoder.name: 'baseline_cnn'"),
        ({"encoder": {**TINY_VIT, "patch_sise": 4}}, "patch_sise"),
        ({"encoder": {**TINY_VIT, "hidden_size": "big"}}, "hidden_size"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"preview": {"epochs": [5]}}, "preview.epochs"),
        ({"include_tests": True}, "unknown option 'include_tests'"),
    ],
)
def test_bad_config_names_the_option(tmp_path: Path, change: dict, named: str) -> None:
    cfg = tiny_config(tmp_path)
    for key, value in change.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and key in cfg else value
    if change.get("encoder", {}).get("name") in ("densenet121", "baseline_cnn"):
        cfg["encoder"] = change["encoder"]
    with pytest.raises(ConfigError, match=named.replace("(", r"\(")):
        load_pretrain_config(cfg)


def test_image_size_must_fit_the_mask_patch(data_dir: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, data_dir, encoder={"name": "resnet18"}, mask={"patch_size": 8})
    cfg["encoder"] = {"name": "resnet18"}
    with pytest.raises(
        ConfigError, match=r"mask.patch_size 8 must divide the image size \[28, 28\]"
    ):
        pretrain(cfg)


# -- a short real run ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def breast_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> run_mod.PretrainResult:
    out = tmp_path_factory.mktemp("pretrain") / "breast"
    torch.set_num_threads(1)
    return pretrain(tiny_config(out, data_dir, train={"epochs": 3}))


def test_short_run_lowers_the_reconstruction_loss(breast_run: run_mod.PretrainResult) -> None:
    h = breast_run.history
    assert [r["epoch"] for r in h] == [0, 1, 2, 3]
    assert breast_run.eval_loss_after < 0.8 * breast_run.eval_loss_before
    assert h[-1]["loss"] < h[1]["loss"]
    assert all(r["images_per_s"] > 0 for r in h[1:])


def test_run_uses_the_training_split_only_and_writes_its_outputs(
    breast_run: run_mod.PretrainResult,
) -> None:
    d = breast_run.run_dir
    images = yaml.safe_load((d / "images.json").read_text())
    src = images["sources"][0]
    assert breast_run.images == 546 and src["splits_used"] == {"train": 546}
    assert all(i.startswith("train_") for i in src["sample_ids"])
    assert [p.name for p in breast_run.previews] == [
        "preview_epoch_001.png",
        "preview_epoch_003.png",
    ]
    for name in ("loss.png", "loss.json", "encoder.pt", "last.pt", "config.yaml"):
        assert (d / name).is_file(), name
    body = torch.load(breast_run.checkpoint, weights_only=True)
    assert body["kind"] == "pretrained-encoder" and body["encoder"]["name"] == "vit"
    assert body["pretrain_config"]["mask"] == {"ratio": 0.6, "patch_size": 4}
    assert body["images"]["sources"][0]["splits_used"] == {"train": 546}


def test_include_test_adds_the_other_splits(data_dir: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "all", data_dir, include_test=True)
    cfg["train"] |= {"epochs": 1, "max_images": 32}
    run = pretrain(cfg)
    src = yaml.safe_load((run.run_dir / "images.json").read_text())["sources"][0]
    assert src["splits_used"] == {"train": 546, "val": 78, "test": 156} and run.images == 32


def test_classifier_init_loads_every_encoder_weight(breast_run: run_mod.PretrainResult) -> None:
    saved = torch.load(breast_run.checkpoint, weights_only=True)["encoder_state"]
    info = saved_info = torch.load(breast_run.checkpoint, weights_only=True)["info"]
    assert saved_info["size"] == [28, 28]
    spec = {"encoders": {"xray": {**TINY_VIT, "init": str(breast_run.checkpoint)}}}
    model = build_model({"xray": "image"}, {"xray": info}, spec, task="binary", n_outputs=1)
    loaded = model.encoders["xray"].state_dict()
    assert set(loaded) == set(saved) and len(saved) > 10
    for key, tensor in saved.items():
        assert torch.equal(loaded[key], tensor), key
    torch.manual_seed(123)
    fresh = build_model(
        {"xray": "image"},
        {"xray": info},
        {"encoders": {"xray": TINY_VIT}},
        task="binary",
        n_outputs=1,
    )
    differ = [
        k for k, v in fresh.encoders["xray"].state_dict().items() if not torch.equal(v, saved[k])
    ]
    assert "vit.patch_embedding.patch_embeddings.weight" in differ


def test_other_encoder_options_name_what_was_pretrained(
    breast_run: run_mod.PretrainResult,
) -> None:
    info = {"in_channels": 1, "spatial_dims": 2, "size": [28, 28]}
    spec = {
        "encoders": {"image": {**TINY_VIT, "num_layers": 3, "init": str(breast_run.checkpoint)}}
    }
    with pytest.raises(ConfigError, match=r"weights do not fit.*pretrained 'vit' encoder with"):
        build_model({"image": "image"}, {"image": info}, spec, task="binary", n_outputs=1)


def test_resnet_checkpoint_loads_every_weight_and_buffer(tmp_path: Path) -> None:
    """The SparK-style path's encoder (batch-norm statistics included) goes into a classifier."""
    from medmodal.pretrain.artifacts import PretrainRecord, save_encoder

    info = {"in_channels": 1, "spatial_dims": 2, "size": [16, 16]}
    model, masks = build_simmim("resnet18", {}, info, 4, 0.6)
    model.train()
    model(torch.randn(4, 1, 16, 16), masks(4, torch.Generator().manual_seed(0)))
    path = save_encoder(
        tmp_path / "enc.pt",
        model.encoder,
        name="resnet18",
        options={},
        info=info,
        record=PretrainRecord(),
    )
    saved = torch.load(path, weights_only=True)["encoder_state"]
    assert int(saved["body.bn1.num_batches_tracked"]) == 1
    spec = {"encoders": {"image": {"name": "resnet18", "init": str(path)}}}
    clf = build_model({"image": "image"}, {"image": info}, spec, task="binary", n_outputs=1)
    loaded = clf.encoders["image"].state_dict()
    assert set(loaded) == set(saved)
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())


def test_fit_from_the_pretrained_encoder(
    breast_run: run_mod.PretrainResult, data_dir: Path, tmp_path: Path
) -> None:
    """A real classifier run starts from the pretrained weights (frozen: still equal at the end)."""
    from medmodal import api

    spec = {**TINY_VIT, "init": str(breast_run.checkpoint), "freeze_init": True}
    cfg = {
        "name": "ft",
        "output_dir": str(tmp_path / "ft"),
        "data": {"dataset": "breastmnist", "data_dir": str(data_dir)},
        "model": {"encoders": {"image": spec}},
        "train": {"epochs": 1, "batch_size": 64, "threads": 1},
        "evaluate": {"bootstrap": 0, "report": False},
    }
    run = api.fit(cfg, progress=False)
    state = torch.load(run.checkpoint, weights_only=True)["model_state"]
    saved = torch.load(breast_run.checkpoint, weights_only=True)["encoder_state"]
    for key, tensor in saved.items():
        assert torch.equal(state[f"encoders.image.{key}"], tensor), key
    assert run.metrics["test"]["auroc"] is not None
    # the pretraining (train split) saw none of the run's validation / test images; one test image
    # of BreastMNIST is byte-identical to a training image: counted, not raised
    check = run.metrics["encoder_init"]["image"]
    assert check["status"] == "checked" and check["overlap"] == {}
    assert check["evaluation_images"] == {"val": 78, "test": 156}
    assert check["overlap_also_in_training"] == 1
    assert (
        "no overlap"
        in json.loads((run.run_dir / "metrics.json").read_text())["encoder_init"]["image"][
            "summary"
        ]
    )


# -- the pretraining must not have seen the fine-tuning run's validation / test images -------------
@pytest.fixture(scope="module")
def all_splits_run(
    data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> run_mod.PretrainResult:
    """One epoch on every BreastMNIST image (train, val and test: ``include_test``)."""
    out = tmp_path_factory.mktemp("pretrain") / "all"
    return pretrain(tiny_config(out, data_dir, include_test=True, train={"epochs": 1}))


def finetune_config(out: Path, data_dir: Path, init: Path, **encoder: Any) -> dict[str, Any]:
    return {
        "name": out.name,
        "output_dir": str(out),
        "data": {"dataset": "breastmnist", "data_dir": str(data_dir), "audit": False},
        "model": {"encoders": {"image": {**TINY_VIT, "init": str(init), **encoder}}},
        "train": {"epochs": 1, "batch_size": 64, "threads": 1},
        "evaluate": {"bootstrap": 0, "report": False},
    }


def test_checkpoint_records_the_content_of_the_images_used(
    breast_run: run_mod.PretrainResult, all_splits_run: run_mod.PretrainResult
) -> None:
    """One key per distinct image (BreastMNIST's train split holds no two identical images; one
    test image repeats a training image), kept in a checkpoint that loads with weights_only."""
    images = torch.load(breast_run.checkpoint, weights_only=True)["images"]
    assert images["key_scheme"] == KEY_SCHEME and images["unrecorded_inits"] == []
    keys = images["content_keys"]
    assert len(keys) == 546 and keys == sorted(keys) and all(len(k) == 16 for k in keys)
    every = torch.load(all_splits_run.checkpoint, weights_only=True)["images"]["content_keys"]
    assert set(keys) < set(every) and len(every) == 546 + 78 + 156 - 1


def test_pretraining_that_saw_the_test_split_is_refused(
    all_splits_run: run_mod.PretrainResult, data_dir: Path, tmp_path: Path
) -> None:
    """Before any training: the count (the one test image that repeats a training image is not
    counted), a few ids and the checkpoint are named."""
    from medmodal import api

    cfg = finetune_config(tmp_path / "ft", data_dir, all_splits_run.checkpoint)
    with pytest.raises(DataError) as err:
        api.fit(cfg, progress=False)
    msg = str(err.value)
    assert "saw 233 of this run's validation/test images (test 155, val 78; e.g. " in msg
    assert str(all_splits_run.checkpoint) in msg and "init_allow_overlap: true" in msg
    assert not (tmp_path / "ft" / "history.json").exists()


def test_allowed_overlap_is_trained_and_recorded(
    all_splits_run: run_mod.PretrainResult, data_dir: Path, tmp_path: Path
) -> None:
    from medmodal import api

    cfg = finetune_config(
        tmp_path / "ft", data_dir, all_splits_run.checkpoint, init_allow_overlap=True
    )
    with pytest.warns(InitCheckWarning, match=r"the pretraining saw 233 .*init_allow_overlap"):
        run = api.fit(cfg, progress=False)
    check = json.loads((run.run_dir / "metrics.json").read_text())["encoder_init"]["image"]
    assert check["status"] == "overlap_allowed" and check["overlap"] == {"val": 78, "test": 155}
    assert check["pretrain_images"] == 779 and len(check["overlap_ids"]) == 5


@pytest.mark.slow  # a pretraining run
def test_checkpoint_without_the_record_warns(
    breast_run: run_mod.PretrainResult, data_dir: Path, tmp_path: Path
) -> None:
    """An older pretraining checkpoint (no content keys) cannot be checked: a warning, no error;
    a pretraining that starts from it says so, and so does a run from that pretraining."""
    from medmodal.config import load_config
    from medmodal.run import assign_splits, load_data
    from medmodal.run.pretrained import check_pretrained_inits

    body = torch.load(breast_run.checkpoint, weights_only=True)
    body["images"] = {k: v for k, v in body["images"].items() if k != "content_keys"}
    old = tmp_path / "old.pt"
    torch.save(body, old)
    cfg = load_config(finetune_config(tmp_path / "ft", data_dir, old))
    loaded = load_data(cfg, tmp_path / "ft")
    with pytest.warns(InitCheckWarning, match="records no image keys"):
        check = check_pretrained_inits(loaded, assign_splits(loaded))["image"]
    assert check["status"] == "unrecorded"
    chained = tiny_config(tmp_path / "chain", data_dir, encoder={"init": str(old)})
    chained["train"] |= {"epochs": 1, "max_images": 32}
    images = torch.load(pretrain(chained).checkpoint, weights_only=True)["images"]
    assert images["unrecorded_inits"] == [str(old)] and len(images["content_keys"]) == 32
    cfg = load_config(finetune_config(tmp_path / "ft", data_dir, tmp_path / "chain/encoder.pt"))
    with pytest.warns(InitCheckWarning, match="started from .*old.pt, which records no images"):
        check = check_pretrained_inits(loaded.with_config(cfg), assign_splits(loaded))["image"]
    assert check["status"] == "checked" and check["unrecorded_inits"] == [str(old)]


def test_pretraining_chain_keeps_the_images_of_its_init(
    all_splits_run: run_mod.PretrainResult, data_dir: Path, tmp_path: Path
) -> None:
    """Pretraining on the train split from a checkpoint that saw every split still counts them."""
    cfg = tiny_config(
        tmp_path / "chain", data_dir, encoder={"init": str(all_splits_run.checkpoint)}
    )
    cfg["train"] |= {"epochs": 1, "max_images": 32}
    keys = torch.load(pretrain(cfg).checkpoint, weights_only=True)["images"]["content_keys"]
    first = torch.load(all_splits_run.checkpoint, weights_only=True)["images"]["content_keys"]
    assert keys == first


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"init_allow_overlpa": True}, r"unknown option 'init_allow_overlpa'.*own keys: .*overlap"),
        (
            {"init_allow_overlap": "maybe"},
            r"image\.init_allow_overlap: Input should be a valid boo",
        ),
    ],
)
def test_allow_option_is_checked(tmp_path: Path, option: dict[str, Any], message: str) -> None:
    """A misspelled or mistyped option is a ConfigError before any data is read."""
    from medmodal.run import start_run

    cfg = finetune_config(tmp_path / "ft", tmp_path, tmp_path / "x.pt", **option)
    with pytest.raises(ConfigError, match=message):
        start_run(cfg)


# -- resume ----------------------------------------------------------------------------------------
@pytest.mark.slow  # three pretraining runs
def test_resume_continues_to_the_same_weights(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cfg(name: str) -> dict[str, Any]:
        c = tiny_config(tmp_path / name, data_dir)
        c["train"] |= {"max_images": 96, "batch_size": 32}
        return c

    straight = pretrain(cfg("a"))
    real = run_mod.save_checkpoint

    def interrupt(path: Path, payload: dict[str, Any]) -> Path:
        out = real(path, payload)
        if payload.get("kind") == run_mod.STATE and payload["state"]["epoch"] == 1:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(run_mod, "save_checkpoint", interrupt)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg("b"))
    monkeypatch.undo()
    resumed = pretrain(cfg("b"), resume=True)
    a = torch.load(straight.checkpoint, weights_only=True)["encoder_state"]
    b = torch.load(resumed.checkpoint, weights_only=True)["encoder_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["eval_loss"] for r in straight.history] == [r["eval_loss"] for r in resumed.history]
    changed = cfg("b")
    changed["mask"]["ratio"] = 0.5
    with pytest.raises(ConfigError, match=r"config changed since \(\['mask'\]\)"):
        pretrain(changed, resume=True)


# -- other sources -------------------------------------------------------------------------------
def test_unlabelled_manifest_and_extra_source(
    data_dir: Path, tmp_path: Path, medmnist_pngs: Callable[..., list[tuple[str, int]]]
) -> None:
    """A manifest without labels (split column: train rows only) mixed with a built-in set whose
    images are resized to the first source's size."""
    files = medmnist_pngs(tmp_path, "pneumoniamnist", n=30)
    split = ["train"] * 20 + ["test"] * 10
    pd.DataFrame({"png": [f for f, _ in files], "split": split}).to_csv(
        tmp_path / "manifest.csv", index=False
    )
    schema = {
        "split_column": "split",
        "target": {"task": "binary", "column": "finding"},  # no such column: no labels
        "modalities": {
            "xray": {"type": "image", "column": "png", "preprocess": {"size": [32, 32]}}
        },
    }
    cfg = tiny_config(tmp_path / "run", data_dir)
    cfg["data"] = {"manifest": str(tmp_path / "manifest.csv"), "schema": schema}
    cfg["extra_data"] = [{"dataset": "breastmnist", "data_dir": str(data_dir)}]
    cfg["train"] |= {"epochs": 1}
    run = pretrain(cfg)
    sources = yaml.safe_load((run.run_dir / "images.json").read_text())["sources"]
    assert [s["splits_used"] for s in sources] == [{"train": 20}, {"train": 546}]
    assert run.images == 566
    assert torch.load(run.checkpoint, weights_only=True)["info"]["size"] == [32, 32]


# -- command line ---------------------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CI": "true"}
    return subprocess.run(
        [sys.executable, "-m", "medmodal.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.mark.slow
def test_cli_pretrain(data_dir: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "cli", data_dir)
    cfg["train"] |= {"epochs": 1, "max_images": 64}
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = run_cli("pretrain", str(path), "--set", "mask.ratio=0.5")
    assert res.returncode == 0, res.stderr
    assert "encoder checkpoint:" in res.stdout and "epoch 1/1 loss" in res.stderr
    res = run_cli("pretrain", str(path), "--set", "mask.ratio=1.5")
    assert res.returncode == 2 and "mask.ratio" in res.stderr and "Traceback" not in res.stderr


def test_rows_a_run_leaves_out_are_not_checked(
    all_splits_run: run_mod.PretrainResult, data_dir: Path, tmp_path: Path
) -> None:
    """A label-efficiency run marks the training rows it leaves out ``unused``: pretraining on them
    is no leak; relabelling the evaluation rows ``unused`` too leaves nothing to find."""
    from medmodal.config import load_config
    from medmodal.run import assign_splits, load_data
    from medmodal.run.pretrained import check_pretrained_inits

    cfg = load_config(finetune_config(tmp_path / "ft", data_dir, all_splits_run.checkpoint))
    loaded = load_data(cfg, tmp_path / "ft")
    splits = assign_splits(loaded).astype(object)
    splits[splits != "train"] = "unused"
    check = check_pretrained_inits(loaded, splits)["image"]
    assert check["status"] == "checked" and check["overlap"] == {}
    assert check["evaluation_images"] == {}


def test_a_duplicate_in_rows_left_out_is_no_leak(
    breast_run: run_mod.PretrainResult, data_dir: Path, tmp_path: Path
) -> None:
    """BreastMNIST repeats one training image in its test split. A label-subset run that leaves
    every training row out (``unused``) still finds that image among rows it does not score, so
    pretraining on the official training split is counted, not refused."""
    from medmodal.config import load_config
    from medmodal.run import assign_splits, load_data
    from medmodal.run.pretrained import check_pretrained_inits

    cfg = load_config(finetune_config(tmp_path / "ft", data_dir, breast_run.checkpoint))
    loaded = load_data(cfg, tmp_path / "ft")
    splits = assign_splits(loaded).astype(object)
    splits[splits == "train"] = "unused"
    check = check_pretrained_inits(loaded, splits)["image"]
    assert check["status"] == "checked" and check["overlap"] == {}
    assert check["overlap_also_in_training"] == 1
