"""ONNX export of a classical learner: the fitted learner (with its imputation and scaling) as
an ONNX graph on the feature vector, through skl2onnx (scikit-learn) or onnxmltools (LightGBM).

The graph's input is ``features`` (N, F) float32, the extractors' output that
:meth:`ClassicalModel.features` computes from the processed inputs (its metadata lists the F
feature names); its output is ``probabilities`` (N, K). The feature extraction itself stays in
medmodal. Learners without a converter (the survival learners), multilabel models and ensembles
are refused with a ConfigError naming what exports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmodal.classical.learners import exporting
from medmodal.classical.model import ClassicalModel
from medmodal.errors import ConfigError
from medmodal.predictor import Predictor


def check_classical_export(predictor: Predictor) -> ClassicalModel:
    """The Predictor's classical model when it can be exported, else a ConfigError saying why."""
    model, task = predictor.model, predictor.label_map.task
    if not isinstance(model, ClassicalModel):
        raise ConfigError(
            "ONNX export takes one deep model or one classical learner; this checkpoint is an "
            "ensemble (export its members' configs as single models, or serve it with PyTorch)"
        )
    caps = model.capabilities
    if caps.onnx is None or task == "multilabel":
        why = "a multilabel target" if task == "multilabel" else "no ONNX converter"
        raise ConfigError(
            f"learner {model.learner_name!r} has {why}; learners that export for {task}: "
            f"{', '.join(n for n in exporting(task)) if task != 'multilabel' else 'none'}"
        )
    return model


def onnx_graph(model: ClassicalModel, n_features: int) -> Any:
    """The ONNX model of the fitted learner for ``n_features`` inputs."""
    name = model.capabilities.onnx
    try:
        if name == "onnxmltools":
            from onnxmltools import convert_lightgbm
            from onnxmltools.convert.common.data_types import FloatTensorType

            types = [("features", FloatTensorType([None, n_features]))]
            return convert_lightgbm(model.estimator, initial_types=types, zipmap=False,
                                    target_opset=15)  # fmt: skip
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        types = [("features", FloatTensorType([None, n_features]))]
        return convert_sklearn(model.estimator, initial_types=types,
                               options={"zipmap": False}, target_opset=17)  # fmt: skip
    except ImportError:
        raise ConfigError(
            f"exporting learner {model.learner_name!r} needs {name}: pip install 'medmodal[classical]'"
        ) from None
    except (ValueError, TypeError, RuntimeError) as exc:  # a converter that fails on this model
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"learner {model.learner_name!r}: the {name} converter failed on this model ({first}); "
            f"learners that exported in medmodal's tests: logistic, lightgbm, svm"
        ) from None


def export_classical(
    predictor: Predictor, out: str | Path, sample: np.ndarray | None = None
) -> Path:
    """Write the learner's ONNX graph to ``out`` (metadata: feature names, learner, task);
    with ``sample`` feature rows, check that ONNX Runtime gives the learner's probabilities."""
    model = check_classical_export(predictor)
    names = model.feature_names()
    graph = onnx_graph(model, len(names))
    meta = {"medmodal.kind": "classical", "medmodal.learner": model.learner_name,
            "medmodal.task": predictor.label_map.task,
            "medmodal.classes": json.dumps(predictor.label_map.classes),
            "medmodal.features": json.dumps(names),
            "medmodal.input": "feature vector from medmodal's extractors (ClassicalModel.features)"}  # fmt: skip
    for k, v in meta.items():
        prop = graph.metadata_props.add()
        prop.key, prop.value = k, v
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(graph.SerializeToString())
    if sample is not None:
        parity_classical(model, path, sample)
    return path


def probabilities(session: Any, x: np.ndarray) -> np.ndarray:
    """The learner graph's probabilities for feature rows ``x`` through an open session."""
    outs = session.run(None, {"features": np.asarray(x, dtype=np.float32)})
    return np.asarray(outs[-1], dtype=np.float64)


def onnx_probabilities(path: str | Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return probabilities(sess, x)


def check_classical_session(model: ClassicalModel, session: Any, path: str | Path) -> None:
    """ConfigError unless ``session`` (opened from ``path``) is this learner's graph: its
    metadata names the learner and the feature names, and 8 probe rows give the learner's
    probabilities (so a graph of the same learner with other weights is refused)."""
    meta = session.get_modelmeta().custom_metadata_map
    names = model.feature_names()
    same = (
        meta.get("medmodal.kind") == "classical"
        and meta.get("medmodal.learner") == model.learner_name
        and json.loads(meta.get("medmodal.features", "[]")) == names
    )
    if same:
        probe = np.random.default_rng(0).normal(size=(8, len(names))).astype(np.float32)
        diff = np.abs(probabilities(session, probe) - model.estimator.predict_proba(probe))
        same = bool(diff.max() <= 1e-3)
    if not same:
        raise ConfigError(
            f"{path}: not the ONNX graph of this checkpoint's {model.learner_name!r} learner "
            "(another model's export, or it predicts differently); export this checkpoint again"
        )


def classical_onnx_logits(
    model: ClassicalModel, session: Any, inputs: Any, present: Any
) -> torch.Tensor:
    """The service's logits through the learner's graph: medmodal's extractors compute the
    feature vector, ONNX Runtime the probabilities, :func:`proba_logits` the logits."""
    from medmodal.classical.fit import proba_logits

    probs = probabilities(session, model.features(inputs, present))
    return torch.from_numpy(proba_logits(model, probs).astype(np.float32))


def parity_classical(model: ClassicalModel, path: str | Path, x: np.ndarray) -> float:
    """Max |probability difference| between ONNX Runtime and the learner on rows ``x``."""
    ref = model.estimator.predict_proba(x)
    diff = float(np.abs(onnx_probabilities(path, x) - ref).max())
    if diff > 1e-3:
        raise RuntimeError(f"ONNX export of {model.learner_name!r} differs by {diff:.2e}")
    return diff


__all__ = [
    "check_classical_export",
    "check_classical_session",
    "classical_onnx_logits",
    "export_classical",
    "onnx_probabilities",
]
