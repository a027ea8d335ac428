"""The record part: a flat JSON object of field -> number, text or null, parsed defensively.

Before ``json.loads`` sees the text, its nesting is measured by a linear scan (a record is one
flat object, so anything nested deeper than :data:`MAX_DEPTH` is refused without recursion),
and every number token is limited to :data:`MAX_NUMBER_CHARS` characters (so no 400-digit
integer reaches ``float``). Booleans, NaN / Infinity, nested values and unknown fields are a
:class:`~medmodal.serve.limits.BadRequest` naming the part and the field.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from medmodal.serve.limits import BadRequest

MAX_DEPTH = 2  # the object, and one level more so a nested value is named, not just refused
MAX_NUMBER_CHARS = 40
MAX_TEXT_CHARS = 1000
MAX_FIELDS = 1000


def json_depth(text: str, limit: int) -> int:
    """The deepest nesting of ``[`` / ``{`` outside strings, scanning no further than the first
    point where it exceeds ``limit`` (linear, no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def _number(kind: str, part: str) -> Any:
    def parse(token: str) -> float | int:
        if len(token) > MAX_NUMBER_CHARS:
            raise BadRequest(
                f"part {part!r}: a number of {len(token)} characters; at most "
                f"{MAX_NUMBER_CHARS} are read",
                part=part,
            )
        return int(token) if kind == "int" else float(token)

    return parse


def _constant(part: str) -> Any:
    def refuse(token: str) -> None:
        raise BadRequest(f"part {part!r}: {token} is not a value (send null if unknown)", part=part)

    return refuse


def parse_record(part: str, data: bytes, columns: list[str]) -> dict[str, Any]:
    """``{field: value}`` of a record part (null -> NaN); BadRequest naming what is wrong."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"part {part!r}: record fields must be UTF-8 JSON ({exc})", part=part
        ) from None
    if json_depth(text, MAX_DEPTH) > MAX_DEPTH:
        raise BadRequest(
            f"part {part!r}: record fields are one flat JSON object; this one nests deeper",
            part=part,
        )
    try:
        fields = json.loads(
            text,
            parse_int=_number("int", part),
            parse_float=_number("float", part),
            parse_constant=_constant(part),
        )
    except (json.JSONDecodeError, ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadRequest(
            f"part {part!r}: record fields must be a JSON object ({reason})", part=part
        ) from None
    if not isinstance(fields, dict):
        raise BadRequest(f"part {part!r}: record fields must be a JSON object", part=part)
    return _checked(part, fields, columns)


def _checked(part: str, fields: dict[str, Any], columns: list[str]) -> dict[str, Any]:
    if len(fields) > MAX_FIELDS:
        raise BadRequest(f"part {part!r}: {len(fields)} fields (at most {MAX_FIELDS})", part=part)
    unknown = sorted(set(fields) - set(columns))
    if unknown:
        shown = repr(unknown[0][:80])
        raise BadRequest(
            f"part {part!r}: unknown field {shown}; fields: {', '.join(columns)}", part=part
        )
    for k, v in fields.items():
        if isinstance(v, bool) or not (v is None or isinstance(v, str | int | float)):
            what = "true/false" if isinstance(v, bool) else type(v).__name__
            raise BadRequest(
                f"part {part!r}: field {k!r} is {what}; send a number, text or null", part=part
            )
        if isinstance(v, float) and not math.isfinite(v):
            raise BadRequest(f"part {part!r}: field {k!r} is not finite", part=part)
        if isinstance(v, str) and len(v) > MAX_TEXT_CHARS:
            raise BadRequest(
                f"part {part!r}: field {k!r} has {len(v)} characters (at most {MAX_TEXT_CHARS})",
                part=part,
            )
    return {k: (np.nan if v is None else v) for k, v in fields.items()}
