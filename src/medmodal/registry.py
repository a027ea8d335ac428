"""Registries by name, as in timm: a YAML config names a component, the registry builds it.

A registered constructor takes *context* arguments that medmodal supplies (an encoder's
``info``, a fusion's ``in_dims``, ``n_outputs`` and ``task`` ...) and typed keyword *options*
that the user writes in the config. :meth:`Registry.create` validates the options against the
constructor's signature first, so a misspelled option or a value of the wrong type is a
:class:`~medmodal.errors.ConfigError` naming it, never a traceback.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, create_model

from medmodal.errors import ConfigError
from medmodal.options import Strict, parse_options

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> constructor table with a decorator to register entries.

    ``context``: the argument names medmodal passes itself; every other parameter of a
    constructor is a user option and must be keyword-able, typed and have a default (or be
    required), with no ``**kwargs`` (unknown options must be caught).
    """

    def __init__(self, kind: str, context: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.context = tuple(context)
        self._entries: dict[str, Callable[..., T]] = {}
        self._docs: dict[str, str] = {}
        self._options: dict[str, type[BaseModel]] = {}

    def register(self, name: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            key = name or fn.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = fn
            doc = inspect.getdoc(fn) or ""
            self._docs[key] = doc.splitlines()[0] if doc else ""
            return fn

        return deco

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {known}")
        return self._entries[name]

    def options_model(self, name: str) -> type[BaseModel]:
        """The pydantic model of ``name``'s user options, built once from its signature."""
        if name not in self._options:
            self._options[name] = signature_options(self.get(name), self.context, f"{name}_options")
        return self._options[name]

    def options(self, name: str) -> dict[str, Any]:
        """Option name -> default (``inspect.Parameter.empty`` when required)."""
        model = self.options_model(name)
        return {
            k: f.get_default() if not f.is_required() else inspect.Parameter.empty
            for k, f in model.model_fields.items()
        }

    def create(self, key: str, /, options: Mapping[str, Any] | None = None, **context: Any) -> T:
        """Build ``key`` with ``context`` and validated ``options``; ConfigError for bad ones."""
        fn = self.get(key)
        where = f"{self.kind} {key!r}"
        opts = parse_options(self.options_model(key), options, where)
        kwargs = {k: getattr(opts, k) for k in type(opts).model_fields}
        try:
            return fn(**context, **kwargs)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def describe(self) -> dict[str, str]:
        return {k: self._docs[k] for k in self.names()}

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def signature_options(
    fn: Callable[..., Any], context: tuple[str, ...], title: str
) -> type[BaseModel]:
    """A strict options model from ``fn``'s typed keyword parameters (``context`` excluded)."""
    sig = inspect.signature(fn)  # a class: its constructor's parameters, without self
    target = fn.__init__ if inspect.isclass(fn) else fn  # type: ignore[misc]
    try:
        hints = typing.get_type_hints(target)
    except (NameError, TypeError):
        hints = {}
    fields: dict[str, Any] = {}
    for p in sig.parameters.values():
        if p.name in context or p.name.startswith("_"):
            continue
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            if target is object.__init__:
                continue
            raise TypeError(
                f"{fn!r}: registered constructors take typed options, not *args/**kwargs"
            )
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (hints.get(p.name, Any), default)
    return create_model(title, __base__=Strict, **fields)
