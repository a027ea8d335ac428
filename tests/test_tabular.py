"""Tabular records: processor (parse, impute, clip, scale, vocabularies) and encoders."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from medmodal.data.preprocess.base import PROCESSORS, create_processor
from medmodal.data.preprocess.tabular import TabularProcessor
from medmodal.data.schema import ModalitySpec
from medmodal.errors import CheckpointError, DataError
from medmodal.models.encoders.base import DEFAULT_ENCODER, create_encoder
from medmodal.models.encoders.tabular import FTTransformer, TabularMLP

COVID_FIELDS = [
    "age", "sex", "temperature", "pO2_saturation", "leukocyte_count",
    "neutrophil_count", "lymphocyte_count", "view", "offset",
]  # fmt: skip
COVID_CATEGORICAL = ["sex", "view"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def make(
    columns: list[str] | None = None,
    categorical: list[str] | None = None,
    allow_missing: bool = True,
    **preprocess: Any,
) -> TabularProcessor:
    spec = ModalitySpec(
        type="tabular",
        columns=columns,
        categorical=categorical or [],
        preprocess=preprocess,
        allow_missing=allow_missing,
    )
    proc = PROCESSORS.get("tabular")(name="rec", spec=spec)
    assert isinstance(proc, TabularProcessor)
    return proc


def rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    return df.to_dict("records")


def fitted(proc: TabularProcessor, df: pd.DataFrame) -> TabularProcessor:
    return proc.fit([proc.read(r, None) for r in rows(df)])


def encode(proc: TabularProcessor, df: pd.DataFrame) -> dict[str, torch.Tensor]:
    outs = [proc.transform(proc.read(r, None)) for r in rows(df)]
    return {k: torch.stack([o[k] for o in outs]) for k in ("numeric", "categorical")}


# -- processor: fitting ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def wdbc() -> tuple[pd.DataFrame, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    return data.data, data.target.to_numpy()


def test_fit_uses_train_only(wdbc: tuple[pd.DataFrame, np.ndarray]) -> None:
    cols = ["mean radius", "mean texture", "worst area"]
    frame = wdbc[0][cols]
    train = frame.iloc[:200].copy()
    train.iloc[::7, 0] = np.nan  # some missing values to impute
    test = frame.iloc[200:300] * 10 + 1000  # deliberately shifted
    proc = fitted(make(cols), train)
    got = encode(proc, train)["numeric"].numpy()

    x = train.to_numpy(dtype=np.float64)
    for j in range(len(cols)):  # by hand: median, 1st/99th percentile, mean/std, on train only
        col = x[:, j]
        obs = col[~np.isnan(col)]
        lo, hi = np.percentile(obs, [1, 99])
        filled = np.clip(np.where(np.isnan(col), np.median(obs), col), lo, hi)
        expect = (filled - filled.mean()) / filled.std()
        np.testing.assert_allclose(got[:, j], expect, rtol=1e-5, atol=1e-5)
    assert proc.lower_ is not None and proc.upper_ is not None
    assert proc.upper_[1] == pytest.approx(np.percentile(x[:, 1], 99))
    assert got.shape[1] == len(cols) + 1  # one indicator: only column 0 had missing values
    np.testing.assert_array_equal(got[:, 3], np.isnan(x[:, 0]).astype(np.float32))

    encode(proc, test)  # reading / transforming the test rows changes nothing
    np.testing.assert_array_equal(encode(proc, train)["numeric"].numpy(), got)
    leaky = fitted(make(cols), pd.concat([train, test]))  # the check above can fail
    assert not np.allclose(encode(leaky, train)["numeric"].numpy(), got, atol=1e-3)


def test_median_imputation_and_indicators() -> None:
    df = pd.DataFrame({"a": [1.0, np.nan, 3.0, 10.0], "b": [5.0, 6.0, 7.0, 8.0]})
    proc = fitted(make(["a", "b"], clip=None, scale=False), df)
    out = encode(proc, df)["numeric"]
    expect = [[1, 5, 0], [3, 6, 1], [3, 7, 0], [10, 8, 0]]  # median(1, 3, 10) = 3; a__missing
    torch.testing.assert_close(out, torch.tensor(expect, dtype=torch.float32))
    assert proc.info()["feature_names"] == ["a", "b", "a__missing"]
    assert proc.info()["n_numeric"] == 3

    scaled = encode(fitted(make(["a", "b"], clip=None), df), df)["numeric"]
    # a imputed = [1, 3, 3, 10]: mean 4.25, population std sqrt(11.6875)
    a = (torch.tensor([1.0, 3.0, 3.0, 10.0]) - 4.25) / math.sqrt(11.6875)
    torch.testing.assert_close(scaled[:, 0], a)
    torch.testing.assert_close(scaled[:, 2], torch.tensor([0.0, 1.0, 0.0, 0.0]))

    assert fitted(make(["a", "b"], indicators="all"), df).info()["n_numeric"] == 4
    assert fitted(make(["a", "b"], indicators="none"), df).info()["n_numeric"] == 2
    # a column with no missing value in train still gets imputed at predict time
    new = fitted(make(["a", "b"], clip=None, scale=False), df).transform(
        proc.read({"a": 2.0, "b": None}, None)
    )
    torch.testing.assert_close(new["numeric"], torch.tensor([2.0, 6.5, 0.0]))


def test_constant_column_and_clip_values() -> None:
    df = pd.DataFrame({"c": [4.0] * 5, "d": [0.0, 1.0, 2.0, 3.0, 100.0]})
    proc = fitted(make(["c", "d"], clip=[0, 75], scale=False), df)
    assert proc.std_ == [1.0, 1.0]
    out = proc.transform(proc.read({"c": 9.0, "d": 500.0}, None))["numeric"]
    torch.testing.assert_close(out, torch.tensor([4.0, 3.0]))  # clipped to train max / 75th pct
    scaled = fitted(make(["c", "d"]), df)
    assert scaled.std_ is not None and scaled.std_[0] == 1.0  # std 0 -> 1, no division by zero
    assert torch.isfinite(
        scaled.transform(scaled.read({"c": 4.0, "d": 1.0}, None))["numeric"]
    ).all()


# -- processor: parsing ---------------------------------------------------------------------


def test_placeholders_become_missing() -> None:
    proc = make(["x", "y"], categorical=["s"])
    raw = proc.read({"x": "?", "y": " Not visible ", "s": "Would have been stated"}, None)
    assert raw is None  # every input is a placeholder: the modality is absent
    raw = proc.read({"x": "n/a", "y": " 3.5 ", "s": "?"}, None)
    assert raw is not None
    assert math.isnan(raw["numeric"][0]) and raw["numeric"][1] == 3.5
    assert raw["categorical"] == [None]
    custom = make(["x"], categorical=["s"], na_values=["-999", "unk"])
    raw = custom.read({"x": "-999", "s": "UNK"}, None)
    assert raw is None
    with pytest.raises(DataError, match=r"'\?'"):  # "?" is no longer NA with a custom list
        custom.read({"x": "?", "s": "F"}, None)


def test_numeric_garbage_is_a_data_error() -> None:
    proc = make(["wbc", "age"])
    with pytest.raises(DataError) as info:
        proc.read({"wbc": "12,5 x10^9", "age": 40}, None)
    msg = str(info.value)
    assert "'wbc'" in msg and "12,5 x10^9" in msg and info.value.modality == "rec"
    raw = make(["wbc", "age"], coerce=True).read({"wbc": "12,5 x10^9", "age": 40}, None)
    assert raw is not None and math.isnan(raw["numeric"][0]) and raw["numeric"][1] == 40
    with pytest.raises(DataError, match="'missing_col'"):
        make(["missing_col"]).read({"age": 1}, None)


def test_infinite_values() -> None:
    raw = make(["x", "y"]).read({"x": float("inf"), "y": "-inf"}, None)
    assert raw is None  # both infinite -> both missing -> absent
    raw = make(["x", "y"]).read({"x": np.inf, "y": 2}, None)
    assert raw is not None and math.isnan(raw["numeric"][0])
    with pytest.raises(DataError, match="infinite"):
        make(["x", "y"], inf="error").read({"x": np.inf, "y": 2}, None)


def test_category_indices() -> None:
    train = pd.DataFrame({"v": [1.0, 2.0, 3.0, 4.0], "sex": ["M", "F", "M", None]})
    proc = fitted(make(["v"], categorical=["sex"]), train)
    assert proc.vocab_ == [["F", "M"]] and proc.info()["cardinalities"] == [4]

    def idx(value: Any, p: TabularProcessor = proc) -> int:
        return int(p.transform(p.read({"v": 1.0, "sex": value}, None))["categorical"][0])

    assert idx("F") == 2 and idx("M") == 3
    assert idx("X") == 0  # unseen -> 0, never an error
    assert idx(None) == 1 and idx("?") == 1 and idx(float("nan")) == 1  # missing -> 1
    mode = fitted(make(["v"], categorical=["sex"], categorical_missing="mode"), train)
    assert idx(None, mode) == 3  # the train mode, "M"
    rare = fitted(make(["v"], categorical=["sex"], min_count=2), train)
    assert rare.vocab_ == [["M"]] and idx("F", rare) == 0
    # 1.0 (int column with NaN read as float) and 1 are the same category
    ints = fitted(
        make(["v"], categorical=["grade"]), pd.DataFrame({"v": [0, 1], "grade": [1.0, 2.0]})
    )
    assert ints.vocab_ == [["1", "2"]]
    assert int(ints.transform(ints.read({"v": 0, "grade": "2"}, None))["categorical"][0]) == 3


def test_all_missing_row() -> None:
    row = {"x": None, "y": float("nan"), "s": ""}
    assert make(["x", "y"], categorical=["s"]).read(row, None) is None
    with pytest.raises(DataError, match="all values missing"):
        make(["x", "y"], categorical=["s"], allow_missing=False).read(row, None)


def test_output_format_and_placeholder() -> None:
    df = pd.DataFrame({"x": [1.0, 2.0, 3.0], "s": ["a", "b", "a"]})
    proc = fitted(make(["x"], categorical=["s"]), df)
    out = proc.transform(proc.read(rows(df)[0], None))
    assert set(out) == {"numeric", "categorical"}
    assert out["numeric"].dtype == torch.float32 and out["categorical"].dtype == torch.long
    miss = proc.missing()
    assert {k: v.shape for k, v in miss.items()} == {k: v.shape for k, v in out.items()}
    assert {k: v.dtype for k, v in miss.items()} == {k: v.dtype for k, v in out.items()}
    only_num = fitted(make(["x"]), df)
    with pytest.raises(DataError, match="expected 1 numeric and 0 categorical"):
        only_num.transform(proc.read(rows(df)[0], None))  # a raw record of another processor
    only_num = only_num.transform(only_num.read(rows(df)[0], None))
    assert only_num["categorical"].shape == (0,) and only_num["categorical"].dtype == torch.long
    only_cat = fitted(make(categorical=["s"]), df)
    assert only_cat.transform(only_cat.read(rows(df)[1], None))["numeric"].shape == (0,)
    built = create_processor("rec", ModalitySpec(type="tabular", columns=["x"], categorical=["s"]))
    assert isinstance(built, TabularProcessor) and built.categorical_columns == ["s"]
    with pytest.raises(RuntimeError, match="not fitted"):
        make(["x"]).transform(proc.read(rows(df)[0], None))


def test_state_dict_round_trip(tmp_path: Any) -> None:
    from sksurv.datasets import load_gbsg2

    x, _ = load_gbsg2()
    frame = x.astype({c: object for c in ("horTh", "menostat", "tgrade")})
    frame.iloc[::11, 0] = np.nan
    cols, cats = list(frame.columns), ["horTh", "menostat", "tgrade"]
    proc = fitted(make(cols, categorical=cats), frame.iloc[:400])
    buf = io.BytesIO()
    torch.save(proc.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    clone = make(cols, categorical=cats).load_state_dict(state)
    test = frame.iloc[400:]
    a, b = encode(proc, test), encode(clone, test)
    assert torch.equal(a["numeric"], b["numeric"]) and torch.equal(
        a["categorical"], b["categorical"]
    )
    assert clone.info() == proc.info()
    assert proc.info()["cardinalities"] == [2 + frame.iloc[:400][c].nunique() for c in cats]
    with pytest.raises(CheckpointError, match="fitted with other \\['columns'\\]"):
        make(cols[:-1], categorical=cats).load_state_dict(state)


# -- processor: real clinical data ----------------------------------------------------------


def test_covid_clinical_fields(covid_cxr: Path) -> None:
    path = covid_cxr / "metadata.csv"
    df = pd.read_csv(path)
    assert len(df) == 621
    ref = pd.read_csv(path, na_values=["?"])[COVID_FIELDS]  # independent pandas computation
    proc = make(COVID_FIELDS, categorical=COVID_CATEGORICAL)
    raws = [proc.read(r, None) for r in rows(df)]
    assert sum(r is None for r in raws) == int(ref.isna().all(axis=1).sum())
    observed = np.stack([r["numeric"] for r in raws if r is not None])
    numeric = [c for c in COVID_FIELDS if c not in COVID_CATEGORICAL]
    assert (~np.isnan(observed)).sum(0).tolist() == ref[numeric].notna().sum().tolist()

    # cells read as plain strings (empty = "") parse to the same records
    as_str = pd.read_csv(path, dtype=str, keep_default_na=False)
    raws_str = [proc.read(r, None) for r in rows(as_str)]
    for r, s in zip(raws, raws_str, strict=True):
        assert (r is None) == (s is None)
        if r is not None and s is not None:
            np.testing.assert_array_equal(r["numeric"], s["numeric"])
            assert r["categorical"] == s["categorical"]

    # the labs alone are absent in most rows: None with allow_missing, DataError without
    labs = [
        "temperature",
        "pO2_saturation",
        "leukocyte_count",
        "neutrophil_count",
        "lymphocyte_count",
    ]
    expect = ref[labs].isna().all(axis=1).to_numpy()
    lab_proc = make(labs)
    got = np.array([lab_proc.read(r, None) is None for r in rows(df)])
    np.testing.assert_array_equal(got, expect)
    assert 400 < expect.sum() < 621
    strict = make(labs, allow_missing=False)
    with pytest.raises(DataError, match="all values missing"):
        strict.read(rows(df)[int(np.argmax(expect))], None)

    train = [r for r in raws[:400]]
    proc.fit(train)
    assert proc.vocab_ == [
        sorted(set(ref["sex"].dropna()[:400])),
        sorted(set(ref["view"].dropna()[:400])),
    ]
    out = [proc.transform(r) if r is not None else proc.missing() for r in raws]
    num = torch.stack([o["numeric"] for o in out])
    assert num.shape == (621, proc.info()["n_numeric"]) and torch.isfinite(num).all()
    assert proc.info()["n_numeric"] == len(numeric) + sum(ref[numeric][:400].isna().any())


# -- encoders -------------------------------------------------------------------------------


def batch(n_numeric: int, cards: list[int], b: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    cat = [torch.randint(0, c, (b,), generator=g) for c in cards]
    return {
        "numeric": torch.randn(b, n_numeric, generator=g),
        "categorical": torch.stack(cat, 1) if cat else torch.zeros(b, 0, dtype=torch.long),
    }


@pytest.mark.parametrize("name", ["mlp", "ft_transformer"])
@pytest.mark.parametrize("n_numeric,cards", [(6, [4, 7]), (6, []), (0, [4, 7, 3]), (1, [3])])
def test_encoder_shapes(name: str, n_numeric: int, cards: list[int]) -> None:
    enc = create_encoder(name, "tabular", {"n_numeric": n_numeric, "cardinalities": cards})
    x = batch(n_numeric, cards)
    out = enc(x)
    assert out.shape == (5, enc.out_dim) and torch.isfinite(out).all()
    single = enc({k: v[:1] for k, v in x.items()})  # one present row in train mode: no BatchNorm
    assert single.shape == (1, enc.out_dim)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in enc.modules())
    enc.eval()
    torch.testing.assert_close(enc(x), enc(x))
    torch.manual_seed(3)
    a = create_encoder(name, "tabular", {"n_numeric": n_numeric, "cardinalities": cards}).eval()
    torch.manual_seed(3)
    b = create_encoder(name, "tabular", {"n_numeric": n_numeric, "cardinalities": cards}).eval()
    assert torch.equal(a(x), b(x))  # deterministic given a seed


def test_encoder_defaults_and_kwargs() -> None:
    assert DEFAULT_ENCODER["tabular"] == "mlp"
    mlp = create_encoder("mlp", "tabular", {"n_numeric": 3, "cardinalities": [4, 100]})
    assert isinstance(mlp, TabularMLP) and mlp.out_dim == 64
    assert [e.embedding_dim for e in mlp.embeddings] == [2, 16]  # min(16, (card + 1) // 2)
    mlp = create_encoder(
        "mlp", "tabular", {"n_numeric": 3, "cardinalities": [4]}, hidden=[32], embed_dim=5
    )
    assert mlp.out_dim == 32 and mlp.embeddings[0].embedding_dim == 5
    ft = create_encoder(
        "ft_transformer", "tabular", {"n_numeric": 3, "cardinalities": [4]}, d_token=32, n_layers=2
    )
    assert isinstance(ft, FTTransformer) and ft.out_dim == 32 and len(ft.transformer.layers) == 2
    layers = ft.transformer.layers
    assert not torch.equal(layers[0].linear1.weight, layers[1].linear1.weight)  # not clones
    with pytest.raises(ValueError, match="at least one"):
        TabularMLP(0, [])


def test_ft_transformer_gradients_reach_every_feature() -> None:
    cards = [3, 5, 4]
    enc = FTTransformer(4, cards, d_token=16, n_layers=2, dropout=0.0)
    x = batch(4, cards, b=64)
    enc(x).pow(2).sum().backward()
    tok = enc.tokenizer
    for p in (tok.num_weight, tok.num_bias, tok.cat_bias, enc.cls):
        assert p is not None and p.grad is not None
        assert (p.grad.flatten(1) if p.dim() > 1 else p.grad).abs().sum(-1).gt(0).all()
    assert tok.cat_embed is not None and tok.cat_embed.weight.grad is not None
    used = torch.unique(x["categorical"] + tok.cat_offsets)
    assert tok.cat_embed.weight.grad[used].abs().sum(1).gt(0).all()  # every used category row
    assert len(used) == sum(cards)
    for name, p in enc.named_parameters():
        assert p.grad is not None, name


def test_encoder_inside_model_with_partial_presence() -> None:
    from medmodal.models.model import build_model

    info = {"n_numeric": 3, "cardinalities": [4]}
    model = build_model({"rec": "tabular"}, {"rec": info}, task="binary", n_outputs=1)
    x = {"rec": batch(3, [4], b=4)}
    present = {"rec": torch.tensor([False, True, False, False])}  # a single present row
    out = model(x, present)
    assert out.shape == (4, 1)
    assert torch.equal(out[0], out[2])  # absent rows share the missing token


# -- real-data sanity check -----------------------------------------------------------------


def test_wdbc_mlp_auroc(wdbc: tuple[pd.DataFrame, np.ndarray]) -> None:
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    frame, y = wdbc
    tr, te = train_test_split(np.arange(len(y)), test_size=0.3, stratify=y, random_state=0)
    proc = fitted(make(list(frame.columns)), frame.iloc[tr])
    xtr, xte = encode(proc, frame.iloc[tr]), encode(proc, frame.iloc[te])
    torch.manual_seed(0)
    enc = create_encoder("mlp", "tabular", proc.info())
    head = torch.nn.Linear(enc.out_dim, 1)
    params = list(enc.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-4)
    target = torch.tensor(y[tr], dtype=torch.float32)
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            head(enc(xtr)).squeeze(1), target
        )
        loss.backward()
        opt.step()
    enc.eval()
    with torch.no_grad():
        scores = head(enc(xte)).squeeze(1).numpy()
    assert roc_auc_score(y[te], scores) > 0.95
