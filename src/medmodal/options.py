"""One strict base for everything a user configures, and one way to report what is wrong.

Configs, schemas, processor options and component keyword parameters are all validated by
pydantic models that forbid unknown keys. :func:`parse_options` turns a validation failure into a
:class:`~medmodal.errors.ConfigError` that names the option and, for a misspelled key, the keys
that are allowed (``image preprocess: unknown option 'sise'; allowed: channels, normalize, size``).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from medmodal.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
UNKNOWN_KEY_ERRORS = ("extra_forbidden", "unexpected_keyword_argument")


class Strict(BaseModel):
    """Base of every user-facing options model: unknown keys are errors, never ignored."""

    model_config = ConfigDict(
        extra="forbid", arbitrary_types_allowed=True, populate_by_name=True, protected_namespaces=()
    )


def parse_options(model: type[M], data: Any, where: str) -> M:
    """Validate ``data`` (a mapping or None) against ``model``; ConfigError naming the option."""
    if data is None:
        data = {}
    if isinstance(data, model):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of options, got {data!r}")
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(f"{where}: {explain(exc, model)}") from None


def explain(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """One readable line per problem: the dotted option, what is wrong, what is allowed."""
    msgs = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        where = ".".join(loc)
        if err["type"] in UNKNOWN_KEY_ERRORS:
            allowed = allowed_keys(model, loc[:-1]) if model is not None else []
            hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
            msgs.append(f"unknown option {where!r}{hint}")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, Mapping) else f" (got {got!r})"
            msg = str(err["msg"]).removeprefix("Value error, ")
            msgs.append(f"{where + ': ' if where else ''}{msg}{shown}")
    return "; ".join(msgs)


def allowed_keys(model: type[BaseModel], path: list[str]) -> list[str]:
    """The option names a model accepts at a dotted ``path`` inside it (best effort)."""
    current: Any = model
    for part in path:
        value = _mapping_value(current)
        if value is not None:  # dict[str, Model]: this part is a key, not an option
            current = value
            continue
        fields = _fields(current)
        if fields is None or part not in fields:
            return []
        current = _model_in(fields[part])
    fields = _fields(current)
    return sorted(fields) if fields else []


def _fields(tp: Any) -> dict[str, Any] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {(f.alias or name): f.annotation for name, f in tp.model_fields.items()}
    return None


def _model_in(annotation: Any) -> Any:
    """The BaseModel (or mapping of BaseModels) inside ``X | None`` and similar unions."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                found = _model_in(arg)
                if _fields(found) is not None or _mapping_value(found) is not None:
                    return found
    return annotation


def _mapping_value(tp: Any) -> Any:
    if typing.get_origin(tp) in (dict, Mapping):
        args = typing.get_args(tp)
        return _model_in(args[1]) if len(args) == 2 else None
    return None
