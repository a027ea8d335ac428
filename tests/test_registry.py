"""The Registry core: signature options or a declared options model, priority order and
capabilities declared at registration."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from medmodal.errors import ConfigError
from medmodal.options import Strict
from medmodal.registry import Registry


class WideOptions(Strict):
    a: int = 1
    b: str = "x"


@dataclass(frozen=True)
class Caps:
    cam: bool


def test_declared_options_model_is_passed_whole_and_checked() -> None:
    reg: Registry[tuple] = Registry("thing", context=("ctx",))

    @reg.register("wide", options=WideOptions, capabilities=Caps(cam=True))
    def wide(ctx: int, options: WideOptions) -> tuple:
        return ctx, options.a, options.b

    assert reg.create("wide", {"a": 3}, ctx=7) == (7, 3, "x")
    assert reg.options("wide") == {"a": 1, "b": "x"}
    with pytest.raises(ConfigError, match=r"unknown option 'c'; allowed: a, b"):
        reg.create("wide", {"c": 1}, ctx=0)
    assert reg.capabilities("wide") == Caps(cam=True)


def test_signature_options_priority_and_unknown_names() -> None:
    reg: Registry[int] = Registry("reader")
    reg.register("late", priority=0)(lambda: 0)
    reg.register("first", priority=10)(lambda: 1)
    reg.register("also_late")(lambda: 2)

    @reg.register("typed")
    def typed(n: int = 2) -> int:
        return n

    assert reg.ordered() == ["first", "late", "also_late", "typed"]
    assert reg.create("typed", {"n": 5}) == 5 and reg.capabilities("typed") is None
    with pytest.raises(ConfigError, match=r"n: .*integer"):
        reg.create("typed", {"n": "many"})
    with pytest.raises(ConfigError, match=r"unknown reader 'nope'; known: also_late"):
        reg.get("nope")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("typed")(lambda: 3)
