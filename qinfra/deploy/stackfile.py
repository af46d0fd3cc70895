"""Round-trip edits of a stack file that keep its comments, key order and layout."""

from __future__ import annotations

import difflib
import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from qinfra.core.errors import SpecError
from qinfra.core.fileio import write_atomic
from qinfra.core.spec_problems import read_stack_text, shown, shown_text


def update_stack_file(path: Path, updates: Mapping[str, Any]) -> str:
    """Set (or, for None, remove) config keys in stacks/Pulumi.<stack>.yaml; return the diff.

    Keys are dotted paths under `config:` whose first segment is the full namespaced key, e.g.
    "qinfra:variants.quantized.artifact" or "qinfra:rollout.stage". Everything else in the file
    (comments, order, quoting, flow lists) stays as written, so the change reads as a small diff
    in review. The file is replaced atomically; an unchanged file is not rewritten and gives "".
    Raises SpecError when the file is not a stack file or a path runs through a non-mapping.
    """
    from ruamel.yaml import YAML, YAMLError
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.util import load_yaml_guess_indent

    path = Path(path)
    before = read_stack_text(path)  # SpecError naming the file: unreadable, or not UTF-8
    try:
        _, indent, block_seq_indent = load_yaml_guess_indent(before)
        yaml = YAML()  # round-trip mode
        yaml.preserve_quotes = True
        yaml.width = 4096  # never re-wrap a long line the user wrote on one
        yaml.explicit_start = before.lstrip().startswith("---")
        yaml.indent(
            mapping=indent or 2,
            sequence=(indent or 2) + (block_seq_indent or 0),
            offset=block_seq_indent or 0,
        )
        doc = yaml.load(before)
    except YAMLError as exc:
        raise SpecError(f"{path} is not valid YAML: {shown_text(str(exc), 2000)}") from None
    except RecursionError:  # the composer recurses per level: `[` x 100,000
        raise SpecError(f"{path} nests too deep to read. To fix: flatten it") from None
    if not isinstance(doc, CommentedMap) or not isinstance(doc.get("config"), CommentedMap):
        raise SpecError(f"{path}: expected a top-level 'config:' mapping")
    for dotted, value in updates.items():
        _apply(doc["config"], dotted, value, path)
    out = io.StringIO()
    yaml.dump(doc, out)
    after = out.getvalue()
    if after == before:
        return ""
    try:
        write_atomic(path, after)  # keeps the file's mode; an interrupt leaves old or new
    except OSError as exc:  # read-only or immutable (chattr +i) file or folder, a full disk
        raise SpecError(f"cannot write stack file {path}: {exc.strerror or exc}; it is unchanged. "
                        "To fix: make it and its folder writable (chmod u+w; lsattr shows an "
                        "immutable file, chattr -i clears it), then run the command again") from None
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            fromfile=f"a/{path.name}",
            tofile=f"b/{path.name}",
        )
    )


def _apply(config: Any, dotted: str, value: Any, path: Path) -> None:
    from ruamel.yaml.comments import CommentedMap

    keys = dotted.split(".")
    node, depth = config, 0
    while depth < len(keys) - 1 and keys[depth] in node:
        child = node[keys[depth]]
        if not isinstance(child, CommentedMap):
            where = ".".join(keys[: depth + 1])
            raise SpecError(
                f"{path}: cannot set {dotted}: {where} holds {shown(child)}, not a mapping. To fix: "
                f"make {where} a mapping in the stack file"
            )
        node, depth = child, depth + 1
    keys = keys[depth:]
    key = keys[0]
    if value is None:
        if len(keys) == 1 and key in node:
            _move_tail(node, lambda: node.pop(key))
        return  # removing what is not there: nothing to do
    for inner in reversed(keys[1:]):  # parents that do not exist yet
        value = CommentedMap([(inner, value)])
    if key in node:
        node[key] = value
    else:
        _move_tail(node, lambda: node.__setitem__(key, value))


def _move_tail(node: Any, change: Callable[[], object]) -> None:
    """Apply `change` (adding or removing the last key) so that full-line comments that ended
    the mapping, which ruamel attaches to its last value, still end it, not move or vanish."""
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    tail = None
    if last := _last_comment_slot(node):
        entry, slot = last
        token = entry[slot]
        if token is not None:
            eol, newline, tail = token.value.partition("\n")
            token.value = eol + newline
    change()
    if tail and (last := _last_comment_slot(node, create=True)):
        entry, slot = last
        if entry[slot] is None:
            entry[slot] = CommentToken("\n" + tail, CommentMark(0), None)
        else:
            entry[slot].value += tail


def _last_comment_slot(node: Any, create: bool = False) -> tuple[list[Any], int] | None:
    """The comment entry of the deepest last item under `node`, where a trailing comment lives."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    while True:
        if isinstance(node, CommentedMap) and node:
            key: Any = next(reversed(node))
            slot = 2  # ruamel: [pre, ?, post/end-of-line, ?] for a mapping key
        elif isinstance(node, CommentedSeq) and node:
            key, slot = len(node) - 1, 0  # ruamel: end-of-line comment of a sequence item
        else:
            return None
        child = node[key]
        if isinstance(child, CommentedMap | CommentedSeq) and child:
            node = child
            continue
        if key not in node.ca.items:
            if not create:
                return None
            node.ca.items[key] = [None, None, None, None]
        return node.ca.items[key], slot
