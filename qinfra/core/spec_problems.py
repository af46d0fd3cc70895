"""How a stack file's validation failures read: one `<key path>: got <value>; allowed: ...`
line each, with the key path as the user wrote it and close-match suggestions."""

from __future__ import annotations

import reprlib
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, get_args

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ValidationError

from qinfra.core.errors import suggest

# A stack file holds a few hundred values; an alias bomb (`a: &a [x, x, ...]`, `b: &b [*a,
# *a, ...]`, ...) is a few lines that expand to millions, which every later walk (validation,
# an error message echoing the value, JSON for Pulumi) would pay for.
MAX_VALUES = 100_000
# The most of one value an error message shows: enough to recognise it, never megabytes.
MAX_SHOWN = 300


def shown_text(text: str, limit: int = MAX_SHOWN) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def shown(value: Any) -> str:
    """A bounded repr of a value from a stack file: reprlib stops at a few items per level and a
    few levels, so even an expanded alias bomb costs microseconds and a line."""
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict, short.maxtuple = 4, 8, 8, 8
    short.maxstring = short.maxother = MAX_SHOWN
    return shown_text(short.repr(value))


def read_stack_text(path: Path) -> str:
    """A stack file's text; SpecError (one line naming the file) when it cannot be read or is
    not UTF-8, rather than a raw OSError or UnicodeDecodeError."""
    from qinfra.core.errors import SpecError

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read stack file {path}: {exc.strerror or exc}") from None
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        bad, line = data[exc.start:exc.start + 1].hex(), data.count(b"\n", 0, exc.start) + 1
        raise SpecError(f"stack file {path} is not UTF-8 text (byte 0x{bad} at offset {exc.start}, "
                        f"line {line}). To fix: save it as UTF-8") from None


def expansion_problem(doc: Any) -> str | None:
    """Why a loaded YAML document is too large to validate, or None. Aliases make one node
    appear many times; counting the values with every alias expanded (and stopping at
    MAX_VALUES) costs at most MAX_VALUES steps however far the aliases would expand."""
    count, aliased, todo = 0, False, [doc]
    seen: set[int] = set()
    while todo:
        node = todo.pop()
        count += 1
        if count > MAX_VALUES:
            if aliased:
                return (f"YAML aliases expand too far (more than {MAX_VALUES:,} values once every "
                        "alias is expanded: an alias bomb?). To fix: write the values out instead "
                        "of nesting aliases (*name) in aliased lists or mappings")
            return (f"holds more than {MAX_VALUES:,} values; a stack file holds hundreds. To fix: "
                    "keep only the stack's config in it")
        if isinstance(node, dict | list):
            aliased = aliased or id(node) in seen
            seen.add(id(node))
            todo.extend([*node.keys(), *node.values()] if isinstance(node, dict) else node)
    return None


class FieldError(ValueError):
    """A validation failure that knows its key path below the field being validated."""

    def __init__(self, loc: tuple[str | int, ...], value: Any, allowed: str):
        super().__init__(f"got {shown(value)}; allowed: {allowed}")
        self.loc = loc


def problems(exc: ValidationError, given: Mapping[str, Any], schema: type[BaseModel],
             namespace: str) -> list[str]:
    """One `<key path>: got <value>; allowed: ...` line per error pydantic found in `given`."""
    out = []
    for err in exc.errors():
        loc = _without_tags(err["loc"], given)
        ctx = err.get("ctx") or {}
        inner = ctx.get("error")
        if err["type"] == "union_tag_invalid":  # a discriminated union (a recipe's name)
            loc.append(str(ctx["discriminator"]).strip("'"))
            msg = f"got {shown(ctx['tag'])}; allowed: {ctx['expected_tags'].replace(chr(39), '')}"
        elif err["type"] == "union_tag_not_found":
            loc.append(str(ctx["discriminator"]).strip("'"))
            msg = "required key is missing"
        elif isinstance(inner, FieldError):
            loc += list(inner.loc)
            msg = str(inner)
        else:
            msg = _message(err, _lookup(given, loc), schema)
        out.append(f"{shown_text(_key(loc, namespace))}: {msg}")
    return out


def _without_tags(loc: Sequence[str | int], given: Mapping[str, Any]) -> list[str | int]:
    """`loc` without the tags pydantic puts in it for a discriminated union member (the
    `llm-compressor` of recipe.llm-compressor.scheme): a part that is no key of the mapping
    there but the value of one."""
    out: list[str | int] = []
    for part in loc:
        here = _lookup(given, out)
        if (isinstance(here, Mapping) and part not in here
                and any(v == part for v in here.values() if isinstance(v, str))):
            continue
        out.append(part)
    return out


def _message(err: Any, value: Any, schema: type[BaseModel]) -> str:
    kind = err["type"]
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return f"unknown key (value {shown(value)})"
    if kind in _NUMBER_TYPES:
        return f"got {shown(value)}; allowed: {_NUMBER_TYPES[kind]}{_bounds_at(schema, err['loc'])}"
    if kind == "enum":
        expected = err.get("ctx", {}).get("expected", "")
        names = [m.value for m in enum] if (enum := _enum_at(schema, err["loc"])) else []
        return f"got {shown(value)}; allowed: {expected}.{suggest(str(value)[:MAX_SHOWN], names)}"
    text = err["msg"].removeprefix("Value error, ")
    return f"got {shown(value)}; {shown_text(text[:1].lower() + text[1:])}"


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
