"""Registries by name, as in timm: a YAML config names a component, the registry builds it.

A registered constructor takes *context* arguments that medmodal supplies (an encoder's
``info``, a fusion's ``in_dims``, ``n_outputs`` and ``task`` ...) and typed *options* that the
user writes in the config: either its own typed keyword parameters, or (for a component with
many options) one ``options`` argument whose strict model is given at registration
(``register(name, options=SwinOptions)``). :meth:`Registry.create` validates the options first,
so a misspelled option or a value of the wrong type is a :class:`~medmodal.errors.ConfigError`
naming it, never a traceback.

What a component offers beyond being built is declared **where it is registered**, as timm keeps
``default_cfgs`` next to each model and scikit-learn keeps estimator tags: ``capabilities`` (any
object, typically a frozen dataclass the registry's users define, e.g. the layer Grad-CAM uses)
and ``priority`` (the order of :meth:`Registry.ordered`, e.g. which reader sniffs first).
Code that needs a capability asks the registry (:meth:`Registry.capabilities`), never the type
of the object.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, create_model

from medmodal.errors import ConfigError
from medmodal.options import Strict, parse_options

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component: its constructor and what was declared beside it."""

    name: str
    build: Callable[..., T]
    doc: str
    options: type[BaseModel] | None  # None: the constructor's own typed keyword parameters
    priority: int
    capabilities: Any
    order: int  # registration order (ties of priority keep it)


class Registry(Generic[T]):
    """A name -> constructor table with a decorator to register entries.

    ``context``: the argument names medmodal passes itself; every other parameter of a
    constructor is a user option and must be keyword-able, typed and have a default (or be
    required), with no ``**kwargs`` (unknown options must be caught).
    """

    def __init__(self, kind: str, context: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.context = tuple(context)
        self._entries: dict[str, Entry[T]] = {}
        self._options: dict[str, type[BaseModel]] = {}
        self._registered = 0  # registrations so far (an entry's ``order``)

    def register(
        self,
        name: str | None = None,
        *,
        options: type[BaseModel] | None = None,
        priority: int = 0,
        capabilities: Any = None,
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``fn`` under ``name`` (default: its ``__name__``).

        ``options``: a strict model of the user options; ``fn`` then takes the context and one
        ``options`` argument (an instance of it). ``priority``: higher comes first in
        :meth:`ordered`. ``capabilities``: what the component offers, read by
        :meth:`capabilities`."""

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            key = name or fn.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            doc = inspect.getdoc(fn) or ""
            self._entries[key] = Entry(
                key, fn, doc.splitlines()[0] if doc else "", options, priority, capabilities,
                self._registered,
            )  # fmt: skip
            self._registered += 1
            return fn

        return deco

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a test that registers a component of its own cleans up with it)."""
        self.entry(name)
        del self._entries[name]
        self._options.pop(name, None)

    def entry(self, name: str) -> Entry[T]:
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {known}")
        return self._entries[name]

    def get(self, name: str) -> Callable[..., T]:
        return self.entry(name).build

    def capabilities(self, name: str) -> Any:
        """What ``name`` declared it offers at registration (None when nothing)."""
        return self.entry(name).capabilities

    def options_model(self, name: str) -> type[BaseModel]:
        """The pydantic model of ``name``'s user options (declared, or built once from the
        constructor's signature)."""
        if name not in self._options:
            entry = self.entry(name)
            self._options[name] = entry.options or signature_options(
                entry.build, self.context, f"{name}_options"
            )
        return self._options[name]

    def options(self, name: str) -> dict[str, Any]:
        """Option name -> default (``inspect.Parameter.empty`` when required)."""
        model = self.options_model(name)
        return {
            k: f.get_default() if not f.is_required() else inspect.Parameter.empty
            for k, f in model.model_fields.items()
        }

    def parse(self, key: str, options: Mapping[str, Any] | BaseModel | None) -> BaseModel:
        """``options`` validated against ``key``'s options model (ConfigError naming them)."""
        return parse_options(self.options_model(key), options, f"{self.kind} {key!r}")

    def create(self, key: str, /, options: Mapping[str, Any] | None = None, **context: Any) -> T:
        """Build ``key`` with ``context`` and validated ``options``; ConfigError for bad ones."""
        entry = self.entry(key)
        opts = self.parse(key, options)
        if entry.options is not None:
            kwargs: dict[str, Any] = {"options": opts}
        else:
            kwargs = {k: getattr(opts, k) for k in type(opts).model_fields}
        try:
            return entry.build(**context, **kwargs)
        except ValueError as exc:
            raise ConfigError(f"{self.kind} {key!r}: {exc}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def ordered(self) -> list[str]:
        """Names by descending priority, then in registration order."""
        entries = sorted(self._entries.values(), key=lambda e: (-e.priority, e.order))
        return [e.name for e in entries]

    def describe(self) -> dict[str, str]:
        return {k: self._entries[k].doc for k in self.names()}

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
