"""How a stack file's validation failures read: one `<key path>: got <value>; allowed: ...`
line each, with the key path as the user wrote it and close-match suggestions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, get_args

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ValidationError

from qinfra.core.errors import suggest


class FieldError(ValueError):
    """A validation failure that knows its key path below the field being validated."""

    def __init__(self, loc: tuple[str | int, ...], value: Any, allowed: str):
        super().__init__(f"got {value!r}; allowed: {allowed}")
        self.loc = loc


def problems(exc: ValidationError, given: Mapping[str, Any], schema: type[BaseModel],
             namespace: str) -> list[str]:
    """One `<key path>: got <value>; allowed: ...` line per error pydantic found in `given`."""
    out = []
    for err in exc.errors():
        loc = list(err["loc"])
        ctx = err.get("ctx") or {}
        inner = ctx.get("error")
        if isinstance(inner, FieldError):
            loc += list(inner.loc)
            msg = str(inner)
        else:
            msg = _message(err, _lookup(given, loc), schema)
        out.append(f"{_key(loc, namespace)}: {msg}")
    return out


def _message(err: Any, value: Any, schema: type[BaseModel]) -> str:
    kind = err["type"]
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return f"unknown key (value {value!r})"
    if kind in _NUMBER_TYPES:
        return f"got {value!r}; allowed: {_NUMBER_TYPES[kind]}{_bounds_at(schema, err['loc'])}"
    if kind == "enum":
        expected = err.get("ctx", {}).get("expected", "")
        names = [m.value for m in enum] if (enum := _enum_at(schema, err["loc"])) else []
        return f"got {value!r}; allowed: {expected}.{suggest(str(value), names)}"
    text = err["msg"].removeprefix("Value error, ")
    return f"got {value!r}; {text[:1].lower()}{text[1:]}"


_NUMBER_TYPES = {
    "int_type": "a whole number (not true/false, not text)",
    "float_type": "a number (not true/false, not text)",
    "finite_number": "a finite number",
}


def _field_at(schema: type[BaseModel], loc: Sequence[str | int]) -> Any:
    """The schema field (pydantic FieldInfo) at `loc`, or None where `loc` leaves the models."""
    node: Any = schema
    found = None
    for part in loc:
        if isinstance(part, int):
            continue  # a list index: _unwrap already took the element type
        if not (isinstance(node, type) and issubclass(node, BaseModel)) or part not in node.model_fields:
            return None
        found = node.model_fields[part]
        node = _unwrap(found.annotation)
    return found


def _enum_at(schema: type[BaseModel], loc: Sequence[str | int]) -> type[Enum] | None:
    """The enum type of the field at `loc`, read from the schema's annotations (not the message)."""
    found = _field_at(schema, loc)
    node = _unwrap(found.annotation) if found is not None else None
    return node if isinstance(node, type) and issubclass(node, Enum) else None


def _bounds_at(schema: type[BaseModel], loc: Sequence[str | int]) -> str:
    """The numeric range the schema gives the field at `loc`, as `, at least 1 and at most 65535` or ``."""
    found = _field_at(schema, loc)
    words = {Ge: ("at least", "ge"), Gt: ("above", "gt"), Le: ("at most", "le"),
             Lt: ("below", "lt")}
    parts = [f"{words[type(m)][0]} {getattr(m, words[type(m)][1])}"
             for m in (found.metadata if found is not None else ()) if type(m) in words]
    return f", {' and '.join(parts)}" if parts else ""


def _unwrap(annotation: Any) -> Any:
    """`X | None` and `list[X]` -> X; other shapes stay as they are."""
    while len(args := [a for a in get_args(annotation) if a is not type(None)]) == 1:
        annotation = args[0]
    return annotation


def _lookup(given: Any, loc: list[Any]) -> Any:
    for part in loc:
        try:
            given = given[part]
        except (KeyError, IndexError, TypeError):
            return None
    return given


def _key(loc: list[Any], namespace: str) -> str:
    head, *rest = loc or ["?"]
    key = f"{namespace}:{head}"
    for part in rest:
        key += f"[{part}]" if isinstance(part, int) else f".{part}"
    return key


def report(stack: str, path: Path | None, problems: list[str]) -> str:
    where = str(path) if path else f"stack '{stack}'"
    return f"invalid stack config in {where}:\n  " + "\n  ".join(problems)
