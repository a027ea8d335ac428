"""ONNX export of a checkpoint's model: each modality an input with its presence mask.

Inputs are the processors' transformed tensors, batch first (dynamic batch): ``<modality>`` for a
tensor, ``<modality>.<key>`` for each entry of a dict input (tabular ``numeric`` /
``categorical``, text ``input_ids`` / ``attention_mask``), and ``present.<modality>`` (bool,
(B,)). The output is ``logits``. Preprocessing stays in Python (the checkpoint's fitted
processors), so the ONNX model and PyTorch see the same tensors: :func:`parity` measures it.

The exported graph computes every encoder on every row and picks the learned missing token for
absent rows (``torch.where``), where PyTorch runs encoders on present rows only; in eval mode
both give the same logits. An encoder whose registration declares no ONNX export
(``EncoderCapabilities.onnx``) is a ConfigError naming why and the encoders of its inputs that
export. Every export is then checked: a probe batch (random inputs of every modality's shape,
token lengths and categories in range, mixed presence) runs through ONNX Runtime and PyTorch;
a logit difference above :data:`TOLERANCE` removes the file and is a ConfigError naming the
encoders, so a graph that traced wrongly is never written silently.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medmodal.errors import ConfigError
from medmodal.models.encoders.base import encoder_capabilities, encoder_name, encoders_offering
from medmodal.predictor import Predictor

Layout = list[tuple[str, str | None]]
OPSET = 17
TOLERANCE = 1e-4  # max absolute logit difference an export may have to PyTorch


def input_layout(predictor: Predictor) -> Layout:
    """(modality, key or None) for every tensor input, in the graph's input order."""
    out: Layout = []
    for m, proc in predictor.processors.items():
        x = proc.missing()
        out += [(m, k) for k in sorted(x)] if isinstance(x, dict) else [(m, None)]
    return out


def input_names(layout: Layout, modalities: list[str]) -> list[str]:
    return [m if k is None else f"{m}.{k}" for m, k in layout] + [
        f"present.{m}" for m in modalities
    ]


def flat_inputs(batch: Mapping[str, Any], layout: Layout, modalities: list[str]) -> dict[str, Any]:
    """A collated batch as the graph's named numpy inputs."""
    inputs, present = batch["inputs"], batch["present"]
    feed = {}
    for m, k in layout:
        x = inputs[m] if k is None else inputs[m][k]
        feed[m if k is None else f"{m}.{k}"] = x.numpy()
    for m in modalities:
        feed[f"present.{m}"] = present[m].numpy().astype(bool)
    return feed


class ExportModel(nn.Module):
    """The model as a function of flat tensors (inputs, then presence masks) -> logits."""

    def __init__(self, predictor: Predictor, layout: Layout) -> None:
        super().__init__()
        self.model = predictor.model
        self.layout = layout
        self.modalities = list(predictor.processors)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        n = len(self.layout)
        inputs: dict[str, Any] = {}
        for (m, k), v in zip(self.layout, args[:n], strict=True):
            if k is None:
                inputs[m] = v
            else:
                inputs.setdefault(m, {})[k] = v
        present = dict(zip(self.modalities, args[n:], strict=True))
        model = self.model
        embs = {}
        for m in model.encoders:
            out = model.encode(m, inputs[m])  # sliding windows too, when the modality has them
            token = model.missing_tokens[m].to(out.dtype).unsqueeze(0).expand_as(out)
            embs[m] = torch.where(present[m].unsqueeze(1), out, token)
        fused = model.fusion(embs, present)
        return fused.value if model.fusion.outputs_logits else model.head(fused.value)


def example_batch(predictor: Predictor, batch: int = 2) -> dict[str, Any]:
    """A batch of placeholder inputs (every modality present) to trace the graph with."""
    from medmodal.data.dataset import collate

    sample: dict[str, Any] = {"id": "x", "patient_id": "x", "present": {}}
    for m, proc in predictor.processors.items():
        sample[m] = proc.missing()
        sample["present"][m] = True
    return collate([sample] * batch)


def probe_batch(predictor: Predictor, batch: int = 6, seed: int = 0) -> dict[str, Any]:
    """A batch of random inputs in every modality's shape and range (token ids within the
    vocabulary and right-padded to random lengths, categories within each vocabulary), with
    row 0 fully present and the others a random subset: what an export is checked on."""
    from medmodal.data.dataset import collate

    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(batch):
        sample: dict[str, Any] = {"id": str(i), "patient_id": str(i), "present": {}}
        for m, proc in predictor.processors.items():
            sample[m] = _probe_input(proc.missing(), proc.info(), g)
            sample["present"][m] = i == 0 or bool(torch.rand((), generator=g) < 0.6)
        samples.append(sample)
    return collate(samples)


def _probe_input(x: Any, info: dict[str, Any], g: torch.Generator) -> Any:
    if not isinstance(x, dict):
        return torch.randn(x.shape, generator=g) if x.is_floating_point() else x
    out = dict(x)
    if "input_ids" in x:
        width = x["input_ids"].shape[-1]
        n = int(torch.randint(0, width + 1, (), generator=g))
        vocab = int(info.get("vocab_size") or 1000)
        ids = torch.randint(1, max(vocab, 2), (width,), generator=g)
        keep = torch.arange(width) < n
        out["input_ids"] = torch.where(keep, ids, torch.full_like(ids, int(info.get("pad_id", 0))))
        if "attention_mask" in x:
            out["attention_mask"] = keep.long()
    if "numeric" in x:
        out["numeric"] = torch.randn(x["numeric"].shape, generator=g)
    if "categorical" in x and x["categorical"].numel():
        cards = torch.tensor(info.get("cardinalities") or [2] * x["categorical"].numel())
        out["categorical"] = (torch.rand(cards.shape, generator=g) * cards).long()
    return out


def check_exportable(predictor: Predictor) -> None:
    """ConfigError when the encoder of a modality declares no ONNX export (see the module doc)."""
    for m, spec in predictor.schema.modalities.items():
        chosen = predictor.config.model.encoders.get(m)
        name = encoder_name(chosen.name if chosen is not None else None, spec.type)
        caps = encoder_capabilities(name)
        if not caps.onnx:
            others = ", ".join(encoders_offering(lambda c: c.onnx, spec.type)) or "none"
            raise ConfigError(
                f"modality {m!r}: the {name} encoder has no ONNX export{caps.why_not('onnx')}; "
                f"{spec.type} encoders that export: {others}"
            )


def export_onnx(predictor: Predictor, out: str | Path, check: bool = True) -> Path:
    """Write ``out`` (.onnx) with a dynamic batch axis; returns the path. ``check``: verify
    it against PyTorch on :func:`probe_batch` (ConfigError and no file when it differs)."""
    check_exportable(predictor)
    layout = input_layout(predictor)
    mods = list(predictor.processors)
    names = input_names(layout, mods)
    wrapper = ExportModel(predictor, layout).eval()
    feed = flat_inputs(example_batch(predictor), layout, mods)
    args = tuple(torch.from_numpy(feed[n]) for n in names)
    axes = {n: {0: "batch"} for n in [*names, "logits"]}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused transformer kernel has no ONNX op
    try:
        _export(wrapper, args, out, names, axes)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    if check:
        _check_export(predictor, out)
    return out


def _check_export(predictor: Predictor, out: Path) -> None:
    """Refuse (remove ``out``, ConfigError) an export whose logits differ from PyTorch's."""
    batch = probe_batch(predictor)
    predictor.model.eval()
    with torch.no_grad():
        ref = predictor.model(batch["inputs"], batch["present"]).float()
    got = onnx_logits(onnx_session(out), predictor, batch)
    diff = float((ref - got).abs().max())
    if not diff <= TOLERANCE:
        out.unlink(missing_ok=True)
        encoders = {
            m: encoder_name(getattr(predictor.config.model.encoders.get(m), "name", None), s.type)
            for m, s in predictor.schema.modalities.items()
        }
        raise ConfigError(
            f"the ONNX graph does not reproduce the model (max logit difference {diff:.3g} > "
            f"{TOLERANCE:g} on a probe batch); encoders {encoders}: one of them does not export "
            "exactly, so no file was written"
        )


def _export(
    wrapper: nn.Module, args: tuple[Any, ...], out: Path, names: list[str], axes: Any
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is kept
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks traced as constants
        # RNNs without an initial state: exact at any batch size (the probe batch checks it)
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size")
        torch.onnx.export(
            wrapper,
            args,
            str(out),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def onnx_session(path: str | Path, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session for an exported model."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_logits(session: Any, predictor: Predictor, batch: Mapping[str, Any]) -> torch.Tensor:
    """Logits of a collated batch through an ONNX Runtime session (fed only the inputs the
    graph kept: the exporter drops empty ones, e.g. a record with no categorical column)."""
    feed = flat_inputs(batch, input_layout(predictor), list(predictor.processors))
    wanted = {i.name for i in session.get_inputs()}
    (logits,) = session.run(["logits"], {k: v for k, v in feed.items() if k in wanted})
    return torch.from_numpy(np.asarray(logits, dtype=np.float32))


def parity(predictor: Predictor, session: Any, samples: list[dict[str, Any]]) -> float:
    """Max absolute logit difference between PyTorch and ONNX Runtime over ``samples``."""
    from medmodal.data.dataset import collate

    batch = collate(samples)
    ref = predictor.sample_logits(samples)
    got = onnx_logits(session, predictor, batch)
    return float((ref - got).abs().max()) if len(samples) else 0.0
