"""Registry-wide contracts for every processor (PROCESSORS) and every encoder (ENCODERS).

The registries are iterated, so a new entry is covered automatically, or fails until it has an
input case here. Inputs are real files (COVID-19 X-rays and notes, heart sounds, MIT-BIH).

Processors: ``read`` is deterministic and gives None for an empty cell; after ``fit`` on some
rows the ``state_dict`` survives ``torch.save`` / ``torch.load(weights_only=True)`` into a fresh
processor that gives identical ``transform`` / ``missing`` / ``info`` output; a stateful
processor's state comes from the rows it was given. (That the API fits on the train split only
is checked on a trained model in ``test_fusion_probe.py``.)

Encoders: built from the ``info()`` of a matching fitted processor, ``(B, out_dim)`` finite
output, rows independent of their batch in eval mode (padding / masks do not leak), and every
trainable parameter gets a finite, non-zero gradient. Frozen parameters are allowed only where
documented (:data:`FROZEN`).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import data_set

from medmodal.data.dataset import collate
from medmodal.data.preprocess import PROCESSORS, ModalityProcessor
from medmodal.data.schema import ModalitySpec
from medmodal.errors import ConfigError
from medmodal.models.encoders import ENCODERS, create_encoder
from medmodal.models.encoders.base import encoder_modalities

N_FIT, N_CHECK = 6, 3

# encoder -> parameter-name prefixes that are frozen by design (and nothing else may be)
FROZEN: dict[str, tuple[str, ...]] = {
    "minilm": ("bert.",)
}  # MiniLMEncoder(freeze=True), the default
# encoder -> small constructor arguments so the generic check stays fast (defaults otherwise)
SMALL: dict[str, dict[str, Any]] = {
    "vit": {"hidden_size": 48, "mlp_dim": 96, "num_layers": 2, "num_heads": 2},
    "bigru": {"embed_dim": 16, "hidden": 8},
    "bilstm": {"embed_dim": 16, "hidden": 8},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # small batches: see conftest


def _covid(data_dir: Path) -> tuple[list[dict[str, Any]], Path]:
    root = data_set(data_dir, "covid_cxr", "metadata.csv")
    df = pd.read_csv(root / "metadata.csv")
    df = df[
        df["clinical_notes"].notna() & df["png"].map(lambda p: (root / "images" / str(p)).is_file())
    ]
    rows = df.iloc[:: max(len(df) // (N_FIT + N_CHECK), 1)].head(N_FIT + N_CHECK).to_dict("records")
    for r in rows:
        r["image"] = f"images/{r['png']}"
    return rows, root


def _heart(data_dir: Path) -> tuple[list[dict[str, Any]], Path]:
    root = data_set(data_dir, "heart_sounds", "labels.csv")
    files = pd.read_csv(root / "labels.csv")["file"].tolist()
    return [{"path": f} for f in files[:: len(files) // (N_FIT + N_CHECK)][: N_FIT + N_CHECK]], root


def _mitdb(data_dir: Path) -> tuple[list[dict[str, Any]], Path]:
    root = data_set(data_dir, "mitdb", "100.hea")
    refs = [f"{rec}#{s}:{s + 720}" for rec in ("100", "101", "103") for s in (3600, 36000, 360000)]
    return [{"ref": r} for r in refs], root


Source = Callable[[Path], tuple[list[dict[str, Any]], Path]]
TABULAR = {
    "columns": ["age", "sex", "temperature", "pO2_saturation", "view"],
    "categorical": ["sex", "view"],
}


def case(
    name: str,
    fields: dict[str, Any],
    options: dict[str, Any],
    source: Source,
    empty: dict[str, Any],
    stateful: bool,
) -> dict[str, Any]:
    """One processor variant; ``stateful``: its fitted state depends on the rows it is fitted on."""
    return dict(
        name=name, fields=fields, options=options, source=source, empty=empty, stateful=stateful
    )


CASES: dict[str, list[dict[str, Any]]] = {
    "image": [
        case(
            "gray28",
            {"column": "image"},
            {"size": [28, 28], "channels": 1},
            _covid,
            {"image": ""},
            True,
        ),
        case(
            "rgb32_fixed",
            {"column": "image"},
            {"size": [32, 32], "channels": 3, "normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}},
            _covid,
            {"image": float("nan")},
            False,
        ),
    ],
    "text": [
        case(
            "word",
            {"column": "clinical_notes"},
            {"tokenizer": "word", "max_len": 64, "min_freq": 1},
            _covid,
            {"clinical_notes": ""},
            True,
        ),
        case(
            "wordpiece",
            {"column": "clinical_notes"},
            {"tokenizer": "wordpiece", "max_len": 64},
            _covid,
            {"clinical_notes": "  "},
            False,
        ),
        case(
            "minilm_embed",
            {"column": "clinical_notes"},
            {"tokenizer": "minilm_embed"},
            _covid,
            {"clinical_notes": None},
            False,
        ),
    ],
    "audio": [
        case(
            "logmel",
            {"column": "path"},
            {"duration": 1.0, "n_mels": 32},
            _heart,
            {"path": ""},
            True,
        ),
        case(
            "mfcc",
            {"column": "path"},
            {"duration": 1.0, "features": "mfcc", "deltas": 2},
            _heart,
            {"path": ""},
            True,
        ),
    ],
    "signal": [
        case(
            "mlii_fit",
            {"column": "ref"},
            {"leads": ["MLII"], "standardize": "fit", "fs": 180},
            _mitdb,
            {"ref": ""},
            True,
        ),
        case(
            "two_leads_record",
            {"column": "ref"},
            {"leads": [0, 1], "bandpass": [0.5, 40]},
            _mitdb,
            {"ref": ""},
            False,
        ),
    ],
    "tabular": [
        case(
            "covid", dict(TABULAR), {}, _covid, {c: float("nan") for c in TABULAR["columns"]}, True
        ),
        case(
            "covid_mode_noscale",
            dict(TABULAR),
            {"categorical_missing": "mode", "scale": False, "clip": None},
            _covid,
            {c: "" for c in TABULAR["columns"]},
            True,
        ),
    ],
}
VARIANTS = [(t, v) for t in sorted(CASES) for v in CASES[t]]
VARIANT_IDS = [f"{t}-{v['name']}" for t, v in VARIANTS]
# Known contract violations (strict xfail: the test starts failing once the processor is fixed).
KNOWN_ISSUES: dict[str, str] = {}
STATE_PARAMS = [
    pytest.param(
        t,
        v,
        id=vid,
        marks=[pytest.mark.xfail(reason=KNOWN_ISSUES[vid], strict=True)]
        if vid in KNOWN_ISSUES
        else [],
    )
    for (t, v), vid in zip(VARIANTS, VARIANT_IDS, strict=True)
]


def _make(mtype: str, variant: dict[str, Any]) -> ModalityProcessor:
    spec = ModalitySpec(type=mtype, preprocess=variant["options"], **variant["fields"])  # type: ignore[arg-type]
    return PROCESSORS.create(mtype, name=f"m_{mtype}", spec=spec)


def _equal(a: Any, b: Any) -> bool:
    """Deep equality of processor outputs (tensors, arrays with NaN, tuples, dicts)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return (
            isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        )
    if isinstance(a, (list, tuple)):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    return bool(a == b)


Fitted = dict[str, tuple[ModalityProcessor, list[Any], Callable[[], ModalityProcessor]]]


@pytest.fixture(scope="module")
def fitted(data_dir: Path) -> Fitted:
    """Per variant: a processor fitted on the first rows, the present rows' reads, a factory."""
    out = {}
    for (mtype, variant), vid in zip(VARIANTS, VARIANT_IDS, strict=True):
        rows, root = variant["source"](data_dir)
        proc = _make(mtype, variant)
        raws = [r for r in (proc.read(row, root) for row in rows) if r is not None]
        assert len(raws) > N_FIT, vid
        proc.fit(raws[:N_FIT])
        out[vid] = (proc, raws, lambda t=mtype, v=variant: _make(t, v))
    return out


def test_every_registered_processor_has_a_case() -> None:
    assert set(PROCESSORS.names()) <= set(CASES), "add an input case for the new processor to CASES"


@pytest.mark.parametrize(("mtype", "variant"), VARIANTS, ids=VARIANT_IDS)
def test_processor_read_is_deterministic_and_empty_is_none(
    mtype: str, variant: dict[str, Any], data_dir: Path
) -> None:
    rows, root = variant["source"](data_dir)
    a, b = _make(mtype, variant), _make(mtype, variant)
    ra, rb = a.read(rows[0], root), b.read(rows[0], root)
    assert ra is not None and _equal(ra, rb)
    assert a.read({**rows[0], **variant["empty"]}, root) is None


@pytest.mark.parametrize("vid", VARIANT_IDS)
def test_processor_state_survives_weights_only_reload(vid: str, fitted: Fitted) -> None:
    proc, raws, factory = fitted[vid]
    assert proc.is_fitted
    buf = io.BytesIO()
    torch.save(proc.state_dict(), buf)
    buf.seek(0)
    fresh = factory().load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.is_fitted and fresh.info() == proc.info()
    assert _equal(fresh.state_dict(), proc.state_dict())
    for raw in raws:  # rows seen in fit and rows never seen
        assert _equal(proc.transform(raw), fresh.transform(raw)), vid
    missing = proc.missing()
    assert _equal(missing, fresh.missing())
    x = proc.transform(raws[0])
    if isinstance(x, dict):  # the placeholder has the structure and shapes of real data
        assert {k: v.shape for k, v in x.items()} == {k: v.shape for k, v in missing.items()}
    else:
        assert x.shape == missing.shape


@pytest.mark.parametrize(("mtype", "variant"), STATE_PARAMS)
def test_processor_state_comes_from_the_rows_given(
    mtype: str, variant: dict[str, Any], fitted: Fitted
) -> None:
    proc, raws, factory = fitted[f"{mtype}-{variant['name']}"]
    state = proc.state_dict()
    assert _equal(factory().fit(raws[:N_FIT]).state_dict(), state)  # fit is deterministic
    other = factory().fit(raws[N_FIT:]).state_dict()
    assert _equal(other, state) != variant["stateful"], "fitted state must come from the rows given"


# -- encoders -------------------------------------------------------------------------------
def test_every_encoder_accepts_a_known_modality_type() -> None:
    for name in ENCODERS.names():
        assert set(encoder_modalities(name)) & set(CASES), name


def _build(name: str, fitted: Fitted) -> tuple[torch.nn.Module, list[Any], str]:
    """The encoder on the first variant of a type it accepts whose processor output it takes."""
    errors = []
    for vid, (proc, raws, _) in fitted.items():
        mtype = vid.split("-", 1)[0]
        if mtype not in encoder_modalities(name):
            continue
        try:
            return (
                create_encoder(name, mtype, proc.info(), **SMALL.get(name, {})),
                [proc.transform(r) for r in raws[:N_CHECK]],
                vid,
            )
        except ConfigError as exc:  # e.g. a text encoder that needs another tokenizer
            errors.append(f"{vid}: {exc}")
    pytest.fail(f"encoder {name!r} builds from no processor case: {errors}")


def _batch(xs: list[Any]) -> Any:
    return collate([{"present": {"m": True}, "m": x, "id": "", "patient_id": ""} for x in xs])[
        "inputs"
    ]["m"]


def _rows(x: Any, sl: slice) -> Any:
    return {k: v[sl] for k, v in x.items()} if isinstance(x, dict) else x[sl]


@pytest.mark.parametrize("name", ENCODERS.names())
def test_encoder_shapes_masks_and_gradients(name: str, fitted: Fitted) -> None:
    torch.manual_seed(0)
    enc, xs, vid = _build(name, fitted)
    x = _batch(xs)
    with torch.no_grad():  # a zero-initialised scale (xresnet1d's last BN of a block) blocks
        for p in enc.parameters():  # gradients by design at step 0: test the wiring, not the init
            if p.requires_grad and p.numel() > 1 and not p.abs().sum():
                p.normal_(0.0, 0.1)
    enc.train()
    out = enc(x)
    assert out.shape == (len(xs), enc.out_dim), (vid, out.shape)
    assert torch.isfinite(out).all()
    frozen = FROZEN.get(name, ())
    trainable = [(n, p) for n, p in enc.named_parameters() if p.requires_grad]
    for pname, p in enc.named_parameters():
        if not p.requires_grad:
            assert frozen and pname.startswith(frozen), (
                f"{name}: undocumented frozen parameter {pname}"
            )
    if not trainable:  # wholly frozen (documented): no graph at all
        assert frozen and not out.requires_grad, name
    else:
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        (out * weights).sum().backward()
        for pname, p in trainable:
            assert p.grad is not None, f"{name}: no gradient reaches {pname}"
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, (
                f"{name}: zero gradient at {pname}"
            )
    enc.eval()
    with torch.no_grad():
        full = enc(x)
        for i in range(
            len(xs)
        ):  # a row's embedding does not depend on the other rows / their padding
            alone = enc(_rows(x, slice(i, i + 1)))
            torch.testing.assert_close(
                alone[0], full[i], rtol=1e-4, atol=1e-4, msg=f"{name} row {i}"
            )
