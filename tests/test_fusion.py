"""Fusion contract: shapes, masking honesty, gradients, weights, and a joint-modality task.

Every registered fusion is tested. A fusion with ``ignores_absent = True`` must ignore absent
modalities entirely; one without it (concat) relies on the model's learned missing token.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medmodal.fusion import FUSIONS
from medmodal.models.model import MultimodalModel
from medmodal.train.losses import make_loss

DIMS = {"a": 6, "b": 5, "c": 3}
B, K = 8, 3
MASKING = {"mean", "sum", "late", "attention", "gated"}  # must ignore absent modalities
WEIGHTED = {"attention", "gated"}  # expose modality_weights
# Extra configurations exercised besides each fusion's defaults.
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("concat", {"dim": 16}),
    ("late", {"combine": "probs", "task": "multiclass", "hidden": 8}),
    ("late", {"combine": "probs", "task": "multilabel"}),
    ("gated", {"per_dim": False}),
    ("attention", {"dim": 32, "heads": 2, "layers": 1, "dropout": 0.3}),
]
CASES = [(n, {}) for n in FUSIONS.names()] + VARIANTS
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for n, kw in CASES]
MASK_CASES = [c for c in CASES if c[0] in MASKING]  # concat relies on the model's missing token
MASK_IDS = [i for i, c in zip(IDS, CASES, strict=True) if c[0] in MASKING]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest


def _inputs(batch: int = B, dims: dict[str, int] = DIMS, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    emb = {m: torch.randn(batch, d, generator=g) for m, d in dims.items()}
    mods = list(dims)
    # Rows: all present, then each modality alone, then random subsets (maybe empty).
    pres = torch.rand(batch, len(mods), generator=g) > 0.5
    pres[0] = True
    for i in range(min(len(mods), batch - 1)):
        pres[1 + i] = False
        pres[1 + i, i] = True
    return emb, {m: pres[:, i].clone() for i, m in enumerate(mods)}


def _run(fusion: nn.Module, emb, present, seed: int = 123) -> torch.Tensor:
    torch.manual_seed(seed)  # same dropout masks for compared calls
    return fusion(emb, present).value


def _build(name: str, kw: dict[str, Any], dims: dict[str, int] = DIMS, k: int = K) -> nn.Module:
    opts = dict(kw)
    task = opts.pop("task", "multiclass")  # every fusion is told the task
    return FUSIONS.create(name, opts, in_dims=dims, n_outputs=k, task=task)


def test_expected_fusions_registered() -> None:
    assert {"concat", *MASKING} <= set(FUSIONS.names())
    for name in MASKING:
        assert getattr(_build(name, {}), "ignores_absent", False), name


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
@pytest.mark.parametrize("n_mods", [1, 2, 3])
def test_shape_and_out_dim(name: str, kw: dict[str, Any], n_mods: int) -> None:
    dims = dict(list(DIMS.items())[:n_mods])
    fusion = _build(name, kw, dims)
    emb, present = _inputs(dims=dims)
    for train in (True, False):
        fusion.train(train)
        out = _run(fusion, emb, present)
        assert out.shape == (B, fusion.out_dim)
        assert torch.isfinite(out).all()
    if getattr(fusion, "outputs_logits", False):
        assert fusion.out_dim == K


@pytest.mark.parametrize(("name", "kw"), MASK_CASES, ids=MASK_IDS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_absent_values_do_not_matter(name: str, kw: dict[str, Any], train: bool) -> None:
    fusion = _build(name, kw).train(train)
    assert fusion.ignores_absent
    emb, present = _inputs()
    with torch.no_grad():  # eval + no_grad is where the Transformer fast path could kick in
        ref = _run(fusion, emb, present)
        for m in DIMS:
            absent = ~present[m]
            assert absent.any(), "test data must contain an absent row per modality"
            for junk in (1e3, float("nan")):
                changed = {k: v.clone() for k, v in emb.items()}
                changed[m][absent] = junk
                out = _run(fusion, changed, present)
                torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    # Present values do matter (the test above is not vacuous).
    changed = {k: v.clone() for k, v in emb.items()}
    changed["a"][present["a"]] += 1.0
    with torch.no_grad():
        assert not torch.allclose(_run(fusion, changed, present), ref)


@pytest.mark.parametrize(("name", "kw"), MASK_CASES, ids=MASK_IDS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_absent_modality_parameters_do_not_matter(
    name: str, kw: dict[str, Any], train: bool
) -> None:
    """Stronger than values: not even a constant derived from an absent modality may leak
    (e.g. attention over a zeroed but unmasked token)."""
    fusion = _build(name, kw).train(train)
    assert fusion.ignores_absent
    emb, present = _inputs()
    with torch.no_grad():
        ref = _run(fusion, emb, present)
        for m in DIMS:
            other = copy.deepcopy(fusion)
            own = [p for n, p in other.named_parameters() if f".{m}." in f".{n}."]
            assert own, f"{name} has no parameters of its own for modality {m!r}"
            for p in own:
                p.add_(0.5 * torch.randn_like(p))
            out = _run(other, emb, present)
            absent = ~present[m]
            torch.testing.assert_close(out[absent], ref[absent], rtol=0, atol=1e-6)
            assert not torch.allclose(out[~absent], ref[~absent])


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_eval_rows_independent_and_fast_path_consistent(name: str, kw: dict[str, Any]) -> None:
    fusion = _build(name, kw).eval()
    emb, present = _inputs()
    with_grad = fusion(emb, present).value
    with torch.no_grad():  # may take PyTorch's fused inference path
        no_grad = fusion(emb, present).value
        rows = [
            fusion(
                {m: v[i : i + 1] for m, v in emb.items()},
                {m: p[i : i + 1] for m, p in present.items()},
            ).value
            for i in range(B)
        ]
    torch.testing.assert_close(no_grad, with_grad.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat(rows), no_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_no_modality_present_is_finite(name: str, kw: dict[str, Any]) -> None:
    fusion = _build(name, kw).train()
    emb, present = _inputs()
    present = {m: torch.zeros_like(p) for m, p in present.items()}
    out = _run(fusion, emb, present)
    assert torch.isfinite(out).all()
    if name in {"mean", "sum", "gated", "late"}:
        assert (out == 0).all()
    if out.requires_grad:
        (out * torch.randn_like(out)).sum().backward()
        for p in fusion.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_gradients_reach_every_parameter(name: str, kw: dict[str, Any]) -> None:
    fusion = _build(name, kw).train()
    emb, _ = _inputs()
    emb = {m: v.requires_grad_() for m, v in emb.items()}
    present = {m: torch.ones(B, dtype=torch.bool) for m in DIMS}
    params = dict(fusion.named_parameters())
    out = _run(fusion, emb, present)
    (out * torch.randn_like(out)).sum().backward()
    for m in DIMS:  # every modality reaches the output ...
        assert emb[m].grad is not None and emb[m].grad.abs().sum() > 0, (name, m)
        # ... through a trainable projection / head of its own (parameter-free concat: none)
        assert any(f".{m}." in f".{n}." for n in params) or not params, (name, m)
    for n, p in params.items():
        assert p.grad is not None, n
        assert p.grad.abs().sum() > 0, n


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_deterministic_given_seed(name: str, kw: dict[str, Any]) -> None:
    emb, present = _inputs()
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        fusion = _build(name, kw).train()
        outs.append(_run(fusion, emb, present).detach())
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("name", "kw"),
    [(n, {}) for n in sorted(WEIGHTED)] + [("gated", {"per_dim": False})],
    ids=[*sorted(WEIGHTED), "gated-scalar_gates"],
)
def test_modality_weights_sum_to_one(name: str, kw: dict[str, Any]) -> None:
    fusion = _build(name, kw).eval()
    emb, present = _inputs()
    w = fusion.modality_weights(emb, present)
    mask = torch.stack([present[m] for m in DIMS], dim=1)
    assert w.shape == (B, len(DIMS))
    assert (w >= 0).all()
    assert (w[~mask] == 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(B))
    assert (w[1:4].max(1).values == 1).all()  # single-modality rows put all weight there
    none = {m: torch.zeros_like(p) for m, p in present.items()}
    assert (fusion.modality_weights(emb, none) == 0).all()


@pytest.mark.parametrize(  # binary has one output
    ("k", "task"),
    [(1, "binary"), (1, "multiclass"), (3, "multiclass"), (1, "multilabel"), (3, "multilabel")],
)
def test_late_probs_is_mean_of_modality_probs(k: int, task: str) -> None:
    fusion = _build("late", {"combine": "probs", "task": task}, k=k).eval()
    emb, present = _inputs()
    emb = {m: 3 * v for m, v in emb.items()}  # spread the probabilities out
    res = fusion(emb, present)
    out, per = res.value, res.modality_logits
    assert set(per) == set(DIMS) and all(v.shape == (B, k) for v in per.values())
    multiclass = task == "multiclass" and k > 1
    to_p = (lambda x: x.softmax(-1)) if multiclass else torch.sigmoid
    mask = torch.stack([present[m] for m in DIMS], dim=1).float()[..., None]
    probs = torch.stack([to_p(per[m]) for m in DIMS], dim=1)
    expected = (probs * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(to_p(out), expected, rtol=1e-5, atol=1e-6)
    # combine="logits" is the plain masked mean of the same heads' logits.
    fusion.combine = "logits"
    logits = torch.stack([per[m] for m in DIMS], dim=1)
    torch.testing.assert_close(fusion(emb, present).value, (logits * mask).sum(1) / mask.sum(1))


def test_late_probs_extreme_logits_are_finite() -> None:
    fusion = _build("late", {"combine": "probs", "task": "binary"}, k=1)
    emb, present = _inputs()
    out = fusion({m: 1e4 * v for m, v in emb.items()}, present).value
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in fusion.parameters())


@pytest.mark.parametrize("name", FUSIONS.names())
def test_forward_keeps_no_tensors_on_the_module(name: str) -> None:
    fusion = _build(name, {})
    emb, present = _inputs()
    before = {k: v for k, v in vars(fusion).items() if not k.startswith("_")}
    out = fusion(emb, present).value
    if out.requires_grad:  # concat without projection has no parameters
        out.sum().backward()
    after = {k: v for k, v in vars(fusion).items() if not k.startswith("_")}
    assert after.keys() == before.keys()
    assert not any(
        isinstance(v, (torch.Tensor, dict)) and v is not before[k] for k, v in after.items()
    )
    copy.deepcopy(fusion)  # no graph tensors held: a copy always works


def test_late_auxiliary_loss_uses_each_heads_present_rows_only() -> None:
    fusion = _build("late", {}, k=1)
    emb, present = _inputs()
    target = (torch.arange(B) % 2).float()
    out = fusion(emb, present)
    loss_fn = make_loss("binary")  # the trainer's loss
    aux = fusion.auxiliary_loss(out, target, loss_fn)
    expected = torch.stack(
        [
            loss_fn(out.modality_logits[m][present[m]], target[present[m]])
            for m in DIMS
            if present[m].any()
        ]
    ).mean()
    torch.testing.assert_close(aux, expected)
    # A modality seen by no row contributes nothing (no NaN from an empty mean).
    only_a = {m: (p if m == "a" else torch.zeros_like(p)) for m, p in present.items()}
    out = fusion(emb, only_a)
    torch.testing.assert_close(
        fusion.auxiliary_loss(out, target, loss_fn),
        loss_fn(out.modality_logits["a"][only_a["a"]], target[only_a["a"]]),
    )


@pytest.mark.parametrize("name", sorted(set(FUSIONS.names()) - {"late"}))
def test_other_fusions_declare_no_auxiliary_loss(name: str) -> None:
    fusion = _build(name, {})
    emb, present = _inputs()
    assert fusion.auxiliary_loss(fusion(emb, present), torch.zeros(B), nn.MSELoss()) is None


class _Enc(nn.Linear):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__(d_in, d_out)
        self.out_dim = d_out


@pytest.mark.parametrize("name", FUSIONS.names())
def test_end_to_end_missing_tokens(name: str) -> None:
    enc_out = {"a": 4, "b": 5}
    enc = {m: _Enc(3, d) for m, d in enc_out.items()}
    fusion = FUSIONS.create(name, in_dims=enc_out, n_outputs=2, task="multiclass")
    head = None if getattr(fusion, "outputs_logits", False) else nn.Linear(fusion.out_dim, 2)
    model = MultimodalModel(enc, fusion, head)
    x = {m: torch.randn(B, 3) for m in enc_out}
    present = {"a": torch.ones(B, dtype=torch.bool), "b": torch.arange(B) % 2 == 0}
    logits = model(x, present)
    assert logits.shape == (B, 2) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.arange(B) % 2).backward()
    tok_a, tok_b = model.missing_tokens["a"].grad, model.missing_tokens["b"].grad
    assert tok_a is None or (tok_a == 0).all()  # "a" is never absent
    assert model.encoders["b"].weight.grad.abs().sum() > 0
    if getattr(fusion, "ignores_absent", False):
        assert tok_b is None or (tok_b == 0).all(), "a masking fusion must ignore the token"
    else:
        assert tok_b is not None and tok_b.abs().sum() > 0, "the missing token must train"


def _xor_data(n: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g)
    a[:, 0] += a[:, 0].sign() * 0.5  # keep a margin around the decision boundary
    b[:, 0] += b[:, 0].sign() * 0.5
    y = ((a[:, 0] > 0) ^ (b[:, 0] > 0)).float()
    return {"a": a, "b": b}, y


def _fit_xor(name: str, mods: list[str], n: int = 256, steps: int = 150) -> float:
    """Held-out BCE after fitting fusion + small MLP head on the XOR task with ``mods``."""
    torch.manual_seed(0)
    kw: dict[str, Any] = {"dim": 16}
    if name == "attention":
        kw.update(heads=2, layers=1, dropout=0.0)
    fusion = FUSIONS.create(name, kw, in_dims={m: 4 for m in mods}, n_outputs=1, task="binary")
    head = nn.Sequential(nn.Linear(fusion.out_dim, 16), nn.GELU(), nn.Linear(16, 1))
    opt = torch.optim.Adam([*fusion.parameters(), *head.parameters()], lr=1e-2)
    (xtr, ytr), (xte, yte) = _xor_data(n, 1), _xor_data(n, 2)
    present = {m: torch.ones(n, dtype=torch.bool) for m in mods}

    def loss(x: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        z = fusion({m: x[m] for m in mods}, present).value
        return F.binary_cross_entropy_with_logits(head(z).squeeze(1), y)

    for _ in range(steps):
        opt.zero_grad()
        loss(xtr, ytr).backward()
        opt.step()
    fusion.eval()
    with torch.no_grad():
        return float(loss(xte, yte))


# Late fusion adds per-modality evidence, so it cannot represent an interaction like XOR.
@pytest.mark.parametrize("name", [n for n in FUSIONS.names() if n != "late"])
def test_learns_a_joint_modality_label(name: str) -> None:
    joint = _fit_xor(name, ["a", "b"])
    single = _fit_xor(name, ["a"])
    assert single > 0.6  # one modality carries no information: chance is log 2 = 0.693
    assert joint < 0.2, (joint, single)
