"""One frozen evaluation spec (issue Foundation III): the ``evaluate`` section is read in one
place, checkpoints (old ones too) derive their spec, the Predictor's fitted state is set by its
own method, and evaluate/ and run/ take part in no import cycle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import synthetic_table, table_config

from medmodal import api
from medmodal.checkpoint import read_checkpoint, save_checkpoint
from medmodal.config import EvaluateConfig
from medmodal.errors import ConfigError
from medmodal.evaluate import EvalSpec, bootstrap_ci, compute_metrics
from medmodal.predictor import Predictor
from medmodal.serve.card import model_card

SRC = Path(__file__).resolve().parents[1] / "src" / "medmodal"
SPEC_FILE = SRC / "evaluate" / "spec.py"


# -- the evaluate section is read in one place -------------------------------------------------
def evaluate_reads(tree: ast.AST) -> Iterator[int]:
    """Lines reading a config's ``evaluate`` section: ``x.evaluate`` (not ``api.evaluate``, the
    function), ``x["evaluate"]`` and ``x.get("evaluate")``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "evaluate":
            if not (isinstance(node.value, ast.Name) and node.value.id == "api"):
                yield node.lineno
        elif isinstance(node, ast.Subscript) and _is_evaluate(node.slice):
            yield node.lineno
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and node.args
            and _is_evaluate(node.args[0])
        ):
            yield node.lineno


def _is_evaluate(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value == "evaluate"


def test_the_scan_finds_every_way_of_reading_the_section() -> None:
    code = (
        "t = cfg.evaluate.threshold\n"
        "ev = predictor.config.evaluate\n"
        "x = body['config']['evaluate']\n"
        "y = cfg.get('evaluate', {})\n"
        "api.evaluate(checkpoint, manifest)\n"
    )
    assert sorted(evaluate_reads(ast.parse(code))) == [1, 2, 3, 4]


def test_only_the_spec_reads_the_evaluate_section() -> None:
    found = {
        f"{path.relative_to(SRC)}:{line}"
        for path in SRC.rglob("*.py")
        if path != SPEC_FILE
        for line in evaluate_reads(ast.parse(path.read_text()))
    }
    assert not found, f"read the evaluate settings from an EvalSpec instead: {sorted(found)}"
    assert "ev.threshold" in SPEC_FILE.read_text()  # ... and the spec does read it


def test_the_default_threshold_is_written_only_in_the_config_model() -> None:
    default = repr(EvaluateConfig.model_fields["threshold"].default)
    pattern = f"threshold: float = {default}"
    assert not [p for p in SRC.rglob("*.py") if pattern in p.read_text()]
    assert not [p for p in SRC.rglob("*.py") if f'"threshold", {default})' in p.read_text()]


def test_only_the_predictor_sets_its_fitted_state() -> None:
    found = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for t in targets:
                if not isinstance(t, ast.Attribute):
                    continue
                by_self = isinstance(t.value, ast.Name) and t.value.id == "self"
                fitted = t.attr in ("temperature", "conformal", "eval_spec") and not by_self
                if fitted or (t.attr == "config" and ast.unparse(t.value).endswith("predictor")):
                    found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not found, f"set through Predictor.fit_trust / with_evaluation: {found}"


# -- the spec ----------------------------------------------------------------------------------
def test_for_task_takes_the_config_defaults_and_names_a_typo() -> None:
    spec = EvalSpec.for_task("binary", ["neg", "pos"], n_boot=7)
    default = EvaluateConfig()
    assert spec.threshold == default.threshold and spec.ci == default.ci and spec.n_boot == 7
    assert spec.positive == "pos" and spec.classes == ("neg", "pos")
    assert EvalSpec.for_task("multiclass", ["a", "b", "c"]).positive is None
    with pytest.raises(
        ConfigError, match=r"unknown evaluation option\(s\) 'nboot'; allowed: .*n_boot"
    ):
        EvalSpec.for_task("binary", ["neg", "pos"], nboot=7)
    with pytest.raises(ValueError, match="threshold must be in"):
        EvalSpec.for_task("binary", ["neg", "pos"], threshold=1.5)
    with pytest.raises(ValueError, match="ci must be in"):
        EvalSpec.for_task("binary", ["neg", "pos"], ci=1.0)
    with pytest.raises(ValueError, match="exactly 2 class_names"):
        EvalSpec.for_task("binary", ["a", "b", "c"])
    with pytest.raises(AttributeError):
        spec.threshold = 0.2  # type: ignore[misc]  # frozen


def test_the_spec_threshold_decides_metrics_and_cis() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.3 * y + 0.7 * rng.random(300), 0, 1)
    spec = EvalSpec.for_task("binary", ["neg", "pos"], threshold=0.6, n_boot=50, seed=3)
    ci = bootstrap_ci(y, p, spec, metrics=["accuracy"])["accuracy"]
    assert ci["value"] == pytest.approx(
        compute_metrics(y, p, "binary", ["neg", "pos"], 0.6)["accuracy"]
    )
    assert ci["value"] != pytest.approx(compute_metrics(y, p, "binary", ["neg", "pos"])["accuracy"])
    assert ci == bootstrap_ci(y, p, spec, metrics=["accuracy"])["accuracy"]  # the spec's seed


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> api.RunResult:
    out = tmp_path_factory.mktemp("evalspec")
    cfg = table_config(
        synthetic_table(160, split=(0.6, 0.2, 0.2)),
        out,
        train={"epochs": 2},
        evaluate={"threshold": 0.3, "calibrate": {"method": "temperature"}},
    )
    return api.fit(cfg, progress=False)


def test_a_checkpoint_derives_its_spec_and_applies_its_threshold(
    run: api.RunResult, tmp_path: Path
) -> None:
    predictor = Predictor.load(run.checkpoint)
    spec = predictor.eval_spec
    assert (spec.task, spec.classes, spec.threshold, spec.calibrate) == (
        "binary",
        ("neg", "pos"),
        0.3,
        "temperature",
    )
    assert run.metrics["test"]["threshold"] == 0.3
    pred = pd.read_csv(run.run_dir / "predictions_test.csv")
    assert (pred["predicted"] == np.where(pred["prob_pos"] > 0.3, "pos", "neg")).all()
    card = model_card("m", read_checkpoint(run.checkpoint), run.checkpoint, "pytorch", spec)
    assert (card["threshold"], card["positive_class"], card["task"]) == (0.3, "pos", "binary")
    body = read_checkpoint(run.checkpoint)
    del body["config"]["evaluate"]  # a checkpoint older than the section
    old = Predictor.load(save_checkpoint(tmp_path / "old.pt", body))
    assert old.eval_spec == EvalSpec.from_config(old.config, old.label_map)
    assert old.eval_spec.threshold == EvaluateConfig().threshold


def test_with_evaluation_is_a_copy_and_checks_its_options(run: api.RunResult) -> None:
    predictor = Predictor.load(run.checkpoint)
    other = predictor.with_evaluation(bootstrap=7)
    assert other.eval_spec.n_boot == 7 and other.config.evaluate.bootstrap == 7
    assert predictor.eval_spec.n_boot == 0 and predictor.config.evaluate.bootstrap == 0
    assert other.model is predictor.model and other.temperature is predictor.temperature
    with pytest.raises(ConfigError, match="evaluate.bootstrp"):
        predictor.with_evaluation(bootstrp=7)


def test_fit_trust_fits_what_the_spec_names(run: api.RunResult) -> None:
    predictor = Predictor.load(run.checkpoint)
    stored = predictor.temperature
    manifest = pd.read_csv(run.run_dir.parent / "manifest.csv")
    val = predictor.dataset(manifest[manifest["split"] == "val"], None, None, with_labels=True)
    fitted = predictor.fit_trust(val)
    assert set(fitted) == {"calibration"} and predictor.conformal is None
    np.testing.assert_allclose(predictor.temperature, stored)  # the same fit as the run's
    lac = predictor.with_evaluation(conformal={"method": "lac"})
    assert set(lac.fit_trust(val)) == {"calibration", "conformal"} and lac.conformal is not None
    assert predictor.conformal is None  # the copy's fit is its own


# -- imports -----------------------------------------------------------------------------------
def _imports(path: Path) -> set[str]:
    """Every medmodal module ``path`` imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("medmodal")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medmodal"):
            out.add(node.module or "")
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_evaluate_and_run_take_part_in_no_import_cycle() -> None:
    """Package graph (medmodal.<package>, function-level imports included): no path leads from
    evaluate or run back to itself (e.g. run -> explain -> run, bootstrap <-> survival_bootstrap
    inside evaluate)."""
    modules = {
        ".".join(("medmodal", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        for p in SRC.rglob("*.py")
    }
    edges: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(("medmodal", *path.relative_to(SRC).with_suffix("").parts))
        src = _package(name.removesuffix(".__init__"))
        for target in _imports(path) & modules:
            dst = _package(target)
            if src and dst and src != dst:
                edges.setdefault(src, set()).add(dst)
    for start in ("evaluate", "run"):
        seen, todo = set(), list(edges.get(start, ()))
        while todo:
            pkg = todo.pop()
            if pkg not in seen:
                seen.add(pkg)
                todo += edges.get(pkg, ())
        assert start not in seen, f"{start} imports a package that imports it: {sorted(seen)}"


def test_no_module_of_evaluate_or_run_imports_itself_through_others() -> None:
    """Inside evaluate/ and run/ (e.g. bootstrap -> survival_bootstrap -> bootstrap)."""
    for pkg in ("evaluate", "run"):
        internal: dict[str, set[str]] = {}
        for path in (SRC / pkg).glob("*.py"):
            if path.name == "__init__.py":
                continue
            mod = f"medmodal.{pkg}.{path.stem}"
            internal[mod] = {m for m in _imports(path) if m.startswith(f"medmodal.{pkg}.")}
        for mod in internal:
            seen, todo = set(), list(internal[mod])
            while todo:
                m = todo.pop()
                if m not in seen:
                    seen.add(m)
                    todo += internal.get(m, ())
            assert mod not in seen, f"{mod} imports itself through {sorted(seen)}"


def test_the_gallery_reaches_the_run_report_by_registration() -> None:
    from medmodal.run.report import REPORT_SECTIONS

    assert "gallery" in REPORT_SECTIONS  # medmodal.api imported medmodal.explain.gallery
    assert not any("medmodal.explain" in m for m in _imports(SRC / "run" / "report.py"))


def test_small_functions_in_evaluate_run_and_the_predictor() -> None:
    files = [*(SRC / "evaluate").glob("*.py"), *(SRC / "run").glob("*.py"), SRC / "predictor.py"]
    bad = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            a = node.args
            n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs)
            n += bool(a.vararg) + bool(a.kwarg) - bool(a.args and a.args[0].arg in ("self", "cls"))
            lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            if n > 8 or lines > 60:
                bad.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({n}, {lines})")
    assert not bad, bad
