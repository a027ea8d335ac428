"""Explanations, mechanics on SYNTHETIC data and tiny models: shapes per modality and method, exact
modality Shapley values (efficiency), bad modality / method as a ConfigError naming it, the files
`explain` and `medmodal explain` write, and the report gallery. The sanity checks on real data
(weight randomisation, deletion curves) are in test_explain_sanity.py."""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medmodal import api
from medmodal.cli import app
from medmodal.config import ExperimentConfig, load_config
from medmodal.data.manifest import LabelMap
from medmodal.data.schema import Schema
from medmodal.datasets import get_dataset
from medmodal.datasets.base import Prepared
from medmodal.datasets.probe import probe_config
from medmodal.errors import ConfigError
from medmodal.explain import create_explainer, item_of, plan, resolve_target
from medmodal.explain.forward import Item
from medmodal.explain.gallery import KINDS, pick_cases
from medmodal.explain.sanity import (
    curve_auc,
    deletion_curve,
    importance_order,
    randomized_predictor,
    rank_correlation,
)
from medmodal.explain.shapley import shapley_from_values
from medmodal.predictor import Predictor, make_processors, model_for

pytestmark = pytest.mark.usefixtures("one_thread")


# -- a trained 4-modality model on the synthetic fusion probe -----------------------------------
@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> tuple[Prepared, Path]:
    """fusion_probe (image + text + audio + table, 60 synthetic cases), trained 1 epoch."""
    work = tmp_path_factory.mktemp("probe")
    prepared = get_dataset("fusion_probe").prepare(work / "data", n=60, seed=0)
    cfg = probe_config(prepared, work / "run", epochs=1)
    cfg["data"]["audit"] = False
    cfg["train"]["threads"] = 1
    cfg["evaluate"].update(report=True, gallery=1)
    return prepared, api.fit(cfg, progress=False).checkpoint


@pytest.fixture(scope="module")
def probe_predictor(probe: tuple[Prepared, Path]) -> Predictor:
    return Predictor.load(probe[1])


@pytest.fixture(scope="module")
def probe_data(probe: tuple[Prepared, Path], probe_predictor: Predictor) -> Any:
    import pandas as pd

    prepared, _ = probe
    frame = pd.read_csv(prepared.manifest)
    ds = probe_predictor.dataset(frame, prepared.manifest.parent, None, with_labels=True)
    return ds, probe_predictor.predict_proba(ds)


def test_explain_writes_every_modality_and_shapley(
    probe: tuple[Prepared, Path], tmp_path: Path
) -> None:
    prepared, ckpt = probe
    res = api.explain(ckpt, prepared.manifest, tmp_path / "out", samples=2)
    meta = json.loads((tmp_path / "out" / "explanations.json").read_text())
    assert [s["sample_id"] for s in meta["samples"]] == ["probe_00000", "probe_00001"]
    assert ["gradcam", "image"] in meta["plan"] and ["shapley", None] in meta["plan"]
    arrays = np.load(tmp_path / "out" / "attributions.npz")
    for sample in meta["samples"]:
        got = {(e["modality"], e["method"]) for e in sample["explanations"]}
        assert ("image", "gradcam") in got and ("tabular", "integrated_gradients") in got
        assert (None, "shapley") in got
        for e in sample["explanations"]:
            assert (tmp_path / "out" / e["file"]).stat().st_size > 1000  # a PNG was drawn
            key = f"{sample['sample_id']}/{e['modality'] or 'sample'}/{e['method']}"
            assert key in arrays.files
            shape = arrays[key].shape
            if e["modality"] in ("image", "audio"):  # 28 x 28 px; mel bands x frames
                assert shape == ((28, 28) if e["modality"] == "image" else (32, 32))
            if e["modality"] == "tabular":
                assert [v[0] for v in e["values"]][:3] == ["marker", "age", "bmi"]
            if e["method"] == "shapley":
                assert [v[0] for v in e["values"]] == ["image", "text", "audio", "tabular"]
    assert len(res.files) == sum(len(s["explanations"]) for s in meta["samples"])


def test_word_attributions_are_the_notes_words(probe_predictor: Predictor, probe_data: Any) -> None:
    ds, probs = probe_data
    i = next(j for j in range(len(ds)) if ds.raw[j]["text"] is not None)
    item = item_of(ds, i)
    target = resolve_target(probe_predictor.label_map, probs[i], None)
    for method in ("integrated_gradients", "occlusion"):
        att = create_explainer(method, probe_predictor, "text").explain(item, target)
        assert att.kind == "tokens" and len(att.labels) == len(att.values) > 3
        if method == "integrated_gradients":  # the processor's tokens, in order
            assert att.labels == list(ds.raw[i]["text"])[: len(att.labels)]
        else:  # whitespace words of the normalised note
            assert " ".join(att.labels) == probe_predictor.processors["text"].note_text(
                ds.rows[i], ds.root
            )


def test_shapley_efficiency_and_absent_modalities(
    probe_predictor: Predictor, probe_data: Any
) -> None:
    ds, probs = probe_data
    shap = create_explainer("shapley", probe_predictor, None)
    pres = ds.present_matrix()
    some_absent = int(np.flatnonzero(~pres.all(axis=1))[0])
    for i in (0, 1, some_absent):
        t = resolve_target(probe_predictor.label_map, probs[i], None)
        att = shap.explain(item_of(ds, i), t)
        p_t = probs[i] if t == 1 else 1 - probs[i]
        assert att.info["p_all"] == pytest.approx(p_t, abs=1e-5)  # all present = the prediction
        assert att.values.sum() == pytest.approx(att.info["p_all"] - att.info["p_none"], abs=1e-6)
        absent = [m for j, m in enumerate(ds.processors) if not pres[i, j]]
        assert att.info["absent"] == absent and att.info["subsets"] == 2 ** (4 - len(absent))
        for m in absent:
            assert att.values[att.labels.index(m)] == 0.0


def test_shapley_formula_by_hand() -> None:
    # v(S) = sum of weights + an interaction of players 0 and 1 (split evenly between them)
    w, inter = np.array([0.1, 0.2, -0.05]), 0.3
    v = np.array(
        [
            sum(w[j] for j in range(3) if mask >> j & 1) + inter * (mask & 3 == 3)
            for mask in range(8)
        ]
    )
    np.testing.assert_allclose(shapley_from_values(v, 3), w + [0.15, 0.15, 0.0])
    # against the permutation definition for a random game of 4 players
    rng = np.random.default_rng(0)
    v = rng.normal(size=16)
    phi = np.zeros(4)
    for order in itertools.permutations(range(4)):
        mask = 0
        for i in order:
            phi[i] += v[mask | 1 << i] - v[mask]
            mask |= 1 << i
    np.testing.assert_allclose(shapley_from_values(v, 4), phi / math.factorial(4))


# -- bad requests: ConfigError naming what is wrong ---------------------------------------------
def test_bad_modality_or_method_is_a_config_error(
    probe: tuple[Prepared, Path], probe_predictor: Predictor, tmp_path: Path
) -> None:
    p = probe_predictor
    with pytest.raises(ConfigError, match="no modality 'ecg'; it has image, text, audio, tabular"):
        plan(p, modalities=["ecg"])
    with pytest.raises(ConfigError, match="'gradcam' does not fit modality 'text' \\(text\\)"):
        plan(p, methods=["gradcam"], modalities=["text"])
    with pytest.raises(
        ConfigError,
        match="unknown explanation method 'lime'; known: attention_rollout, feature_occlusion, gradcam",
    ):
        plan(p, methods=["lime"])
    with pytest.raises(ConfigError, match="unknown option 'stepz'"):
        plan(p, options={"integrated_gradients": {"stepz": 4}})
    with pytest.raises(ConfigError, match="'shapley' explains whole samples"):
        create_explainer("shapley", p, "image")
    assert {m for _, m, _ in plan(p, methods=["gradcam"])} == {"image", "audio"}  # where it fits
    with pytest.raises(ConfigError, match="no sample \\['nope'\\]"):
        api.explain(probe[1], probe[0].manifest, tmp_path, samples=["nope"])
    with pytest.raises(ConfigError, match="unknown target class 'maybe'"):
        api.explain(probe[1], probe[0].manifest, tmp_path, samples=1, target="maybe")


def test_missing_captum_is_a_config_error(
    probe_predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "captum.attr", None)  # import captum.attr -> ImportError
    with pytest.raises(ConfigError, match=r"needs Captum: pip install 'medmodal\[explain\]'"):
        plan(probe_predictor, methods=["integrated_gradients"], modalities=["image"])
    assert plan(probe_predictor, methods=["gradcam"], modalities=["image"])  # no Captum needed


def _predictor(modalities: dict[str, Any], encoders: dict[str, Any]) -> Predictor:
    """An untrained Predictor from a schema (processors that need no fitting)."""
    schema = Schema.load(
        {
            "target": {"task": "binary", "column": "y", "classes": ["a", "b"]},
            "modalities": modalities,
        }
    )
    cfg = ExperimentConfig.model_validate({"model": {"encoders": encoders}})
    procs = make_processors(schema)
    label_map = LabelMap("binary", ["a", "b"])
    return Predictor(schema, label_map, procs, model_for(schema, label_map, procs, cfg), cfg)


def _image_item(p: Predictor, shape: tuple[int, ...]) -> Item:
    x = torch.randn(1, *shape)
    return Item(0, "s", {"image": x}, {"image": torch.ones(1, dtype=torch.bool)}, {}, {}, None)


IMAGE_CASES = [
    ({"name": "baseline_cnn", "hidden": 8, "filters": 4}, (16, 16)),
    ({"name": "baseline_cnn", "hidden": 8, "filters": 4}, (8, 8, 8)),
    ({"name": "resnet18"}, (16, 16)),
    ({"name": "resnet18"}, (8, 8, 8)),
    ({"name": "densenet121"}, (16, 16)),
]


@pytest.mark.parametrize(("encoder", "size"), IMAGE_CASES, ids=lambda v: str(v))
def test_gradcam_and_ig_on_image_encoders_2d_3d(encoder: dict[str, Any], size: tuple) -> None:
    mods = {"image": {"type": "image", "column": "f", "preprocess": {"size": list(size)}}}
    p = _predictor(mods, {"image": encoder})
    item = _image_item(p, (1, *size))
    cam = create_explainer("gradcam", p, "image").explain(item, 1)
    assert cam.kind == ("volume" if len(size) == 3 else "image")
    assert cam.values.shape == size and 0 <= cam.values.min() and cam.values.max() <= 1
    ig = create_explainer("integrated_gradients", p, "image", {"steps": 8}).explain(item, 0)
    assert ig.values.shape == size and np.isfinite(ig.values).all()


def test_gradcam_refuses_a_vit_and_ig_refuses_sentence_embeddings() -> None:
    mods = {"image": {"type": "image", "column": "f", "preprocess": {"size": [8, 8]}}}
    vit = {"name": "vit", "patch_size": 4, "hidden_size": 16, "mlp_dim": 16, "num_layers": 1,
           "num_heads": 1}  # fmt: skip
    p = _predictor(mods, {"image": vit})
    with pytest.raises(ConfigError, match="'gradcam' does not fit encoder 'vit' of modality"):
        plan(p, methods=["gradcam"])
    assert [n for n, _, _ in plan(p)] == ["attention_rollout", "integrated_gradients"]
    note = {"note": {"type": "text", "column": "t", "preprocess": {"tokenizer": "minilm_embed"}}}
    p = _predictor(note, {"note": {"name": "embedding_mlp"}})
    with pytest.raises(ConfigError, match="'embedding_mlp' of modality 'note'.*occlusion"):
        plan(p, methods=["integrated_gradients"])
    assert [n for n, _, _ in plan(p)] == ["occlusion"]


@pytest.mark.parametrize("size", [(8, 8), (8, 8, 8)])
def test_attention_rollout_of_a_vit(size: tuple[int, ...]) -> None:
    mods = {"image": {"type": "image", "column": "f", "preprocess": {"size": list(size)}}}
    vit = {"name": "vit", "patch_size": 4, "hidden_size": 16, "mlp_dim": 16, "num_layers": 2,
           "num_heads": 2}  # fmt: skip
    p = _predictor(mods, {"image": vit})
    item = _image_item(p, (1, *size))
    ex = create_explainer("attention_rollout", p, "image")
    a, b = ex.explain(item, 1), ex.explain(item, 0)
    assert a.values.shape == size and a.values.min() == 0 and a.values.max() == pytest.approx(1)
    np.testing.assert_allclose(a.values, b.values)  # class-agnostic
    assert not any(blk.attn.save_attn for blk in p.model.encoders["image"].vit.blocks)
    p = _predictor(mods, {"image": {"name": "baseline_cnn", "hidden": 4, "filters": 2}})
    with pytest.raises(
        ConfigError, match="'attention_rollout' does not fit encoder 'baseline_cnn'"
    ):
        plan(p, methods=["attention_rollout"])


def test_shapley_limits() -> None:
    image = {"type": "image", "column": "f", "preprocess": {"size": [8, 8]}}
    small = {"name": "baseline_cnn", "hidden": 4, "filters": 2}
    p = _predictor({f"i{k}": image for k in range(7)}, {f"i{k}": small for k in range(7)})
    with pytest.raises(ConfigError, match="at most 6 modalities; this model has 7"):
        plan(p, methods=["shapley"])
    assert "shapley" not in {n for n, _, _ in plan(p)}  # the defaults leave it out
    p = _predictor({"i0": image}, {"i0": small})
    with pytest.raises(ConfigError, match="compares modalities; this model has one"):
        plan(p, methods=["shapley"])


def test_signal_gradcam_and_ig_per_lead_over_time() -> None:
    spec = {"type": "signal", "column": "f",
            "preprocess": {"leads": ["I", "II"], "fs": 100, "length": 64}}  # fmt: skip
    for encoder in ({"name": "cnn1d", "channels": [4, 8]}, {"name": "resnet1d",
                    "widths": [4, 8], "blocks": [1, 1]}):  # fmt: skip
        p = _predictor({"ecg": spec}, {"ecg": encoder})
        x = torch.randn(1, 2, 64)
        item = Item(0, "s", {"ecg": x}, {"ecg": torch.ones(1, dtype=torch.bool)}, {}, {}, None)
        for method in ("gradcam", "integrated_gradients"):
            att = create_explainer(method, p, "ecg").explain(item, 1)
            assert att.kind == "signal" and att.values.shape == (2, 64)
            assert att.info["leads"] == ["I", "II"] and att.info["fs"] == 100


def test_wordpiece_attributions_join_pieces_into_words() -> None:
    spec = {"type": "text", "column": "t", "preprocess": {"tokenizer": "wordpiece", "max_len": 32}}
    p = _predictor({"note": spec}, {"note": {"name": "minilm"}})  # frozen MiniLM
    proc = p.processors["note"]
    x = proc.transform(proc.encode("hyperkalaemia with bradycardia"))
    batch = {k: v.unsqueeze(0) for k, v in x.items()}
    item = Item(0, "s", {"note": batch}, {"note": torch.ones(1, dtype=torch.bool)}, {}, {}, None)
    att = create_explainer("integrated_gradients", p, "note", {"steps": 4}).explain(item, 1)
    assert att.labels == ["hyperkalaemia", "with", "bradycardia"]
    assert np.isfinite(att.values).all() and np.abs(att.values).sum() > 0  # gradients got through
    assert p.model.encoders["note"].freeze  # and the encoder is frozen again


def test_sanity_helpers(probe_predictor: Predictor, probe_data: Any) -> None:
    ds, probs = probe_data
    item = item_of(ds, 0)
    t = resolve_target(probe_predictor.label_map, probs[0], None)
    rand = randomized_predictor(probe_predictor, seed=0)
    same = [torch.equal(a, b) for a, b in zip(probe_predictor.model.parameters(),
                                              rand.model.parameters(), strict=True)]  # fmt: skip
    assert not any(same)  # every weight re-drawn, the original untouched
    assert rank_correlation(np.arange(10.0), np.arange(10.0) ** 2) == pytest.approx(1.0)
    assert rank_correlation(np.arange(10.0), -np.arange(10.0), absolute=False) == pytest.approx(-1)
    cam = create_explainer("gradcam", probe_predictor, "image").explain(item, t)
    order = importance_order(cam.values, (28, 28))
    curve = deletion_curve(probe_predictor, item, "image", t, order, steps=10)
    p_t = probs[0] if t == 1 else 1 - probs[0]
    assert curve.shape == (11,) and curve[0] == pytest.approx(p_t, abs=1e-5)
    zero = Item(**{**item.__dict__, "inputs": {**item.inputs, "image": 0 * item.inputs["image"]}})
    end = deletion_curve(probe_predictor, zero, "image", t, order, steps=1)
    assert curve[-1] == pytest.approx(end[0], abs=1e-6)  # everything deleted = the zero input
    assert 0 <= curve_auc(curve) <= 1


def test_cli_explain_writes_files_and_refuses_bad_input(
    probe: tuple[Prepared, Path], tmp_path: Path
) -> None:
    prepared, ckpt = probe
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["explain", str(ckpt), str(prepared.manifest), "--out", str(out), "--limit", "1"]
    res = runner.invoke(app, [*args, "-m", "gradcam", "-m", "shapley"])
    assert res.exit_code == 0, res.output
    assert "1 sample(s) explained: 3 figure(s)" in res.output
    assert {p.name for p in out.rglob("*.png")} == {"image_gradcam.png", "audio_gradcam.png",
                                                    "shapley.png"}  # fmt: skip
    res = runner.invoke(app, [*args, "--modality", "ecg"])
    assert res.exit_code == 2 and "no modality 'ecg'" in res.output
    res = runner.invoke(app, [*args, "-m", "gradcam", "--modality", "tabular"])
    assert res.exit_code == 2 and "'gradcam' does not fit modality 'tabular'" in res.output


def test_gallery_cases_and_report_section(
    probe: tuple[Prepared, Path], probe_predictor: Predictor, probe_data: Any
) -> None:
    probs = np.array([0.95, 0.9, 0.53, 0.1, 0.48, 0.8])
    labels = np.array([1, 0, 1, 0, 1, 1])
    pred = (probs > 0.5).astype(int)
    cases = pick_cases(probs, labels, pred, "binary", 0.5, 2)
    assert cases == {KINDS[0]: [0, 3], KINDS[1]: [1, 4], KINDS[2]: [4, 2]}
    multi = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8]])
    cases = pick_cases(multi, np.array([0, 1, 0]), multi.argmax(1), "multiclass", 0.5, 1)
    assert cases == {KINDS[0]: [0], KINDS[1]: [2], KINDS[2]: [1]}
    report = (probe[1].parent / "report.html").read_text()  # the fixture's run: gallery 1
    section = report[report.index('id="gallery"') : report.index('id="config"')]
    for kind in KINDS:
        assert kind in section
    assert section.count("<figure") == 3 and "data:image/png;base64," in section
    with pytest.raises(ConfigError, match="evaluate.gallery"):
        load_config({"evaluate": {"gallery": -1}})


def test_explain_request_fields_are_checked_before_anything_is_read(tmp_path: Path) -> None:
    from medmodal.explain import ExplainRequest, explain

    with pytest.raises(ConfigError, match=r"explain: unknown option 'method'; allowed: device"):
        explain(tmp_path / "none.pt", tmp_path, tmp_path / "out", method=["gradcam"])
    with pytest.raises(ConfigError, match="a request or its fields, not both"):
        explain(tmp_path / "none.pt", tmp_path, tmp_path / "out", ExplainRequest(), samples=1)
    assert ExplainRequest(samples=3).samples == 3
