"""Registries by name, as in timm: a YAML config names a component, the registry builds it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from medmodal.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> constructor table with a decorator to register entries."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            key = name or fn.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = fn
            self._docs[key] = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
            return fn

        return deco

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {known}")
        return self._entries[name]

    def create(self, key: str, /, **kwargs: Any) -> T:
        return self.get(key)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def describe(self) -> dict[str, str]:
        return {k: self._docs[k] for k in self.names()}

    def __contains__(self, name: object) -> bool:
        return name in self._entries
