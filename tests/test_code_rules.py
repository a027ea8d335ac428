"""House rules over the whole package: functions fit on a screen (<= 60 lines) and take at most
8 parameters, except Typer commands (their parameters are the command's options)."""

from __future__ import annotations

import ast
from pathlib import Path

import medmodal

SRC = Path(medmodal.__file__).parent


def _is_command(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(
        isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command"
        for d in node.decorator_list
    )


def _params(a: ast.arguments) -> int:
    n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
    return n - bool(a.args and a.args[0].arg in ("self", "cls"))


def _violations(root: Path) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            n = _params(node.args)
            if lines > 60 or (n > 8 and not _is_command(node)):
                bad.append(
                    f"{path.relative_to(root)}:{node.lineno} {node.name} ({n} params, {lines} lines)"
                )
    return bad


def test_no_long_function_and_no_wide_signature_in_the_package() -> None:
    assert not _violations(SRC)


def test_the_rule_sees_a_violation(tmp_path: Path) -> None:
    args = ", ".join(f"a{i}" for i in range(9))
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    (tmp_path / "m.py").write_text(f"def wide({args}):\n    pass\n\ndef long():\n{body}\n")
    found = _violations(tmp_path)
    assert any("wide (9 params" in v for v in found) and any(
        "long (0 params, 62" in v for v in found
    )
