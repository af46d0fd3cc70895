"""The metadata and tensor names at the head of a GGUF file, read without loading the file.

gguf's GGUFReader maps the whole file and turns every metadata value and tensor into numpy
views in its constructor (no header-only mode): on SmolLM2-135M it takes seconds, almost all of
it on the 49,152 tokenizer strings and merges that qinfra never reads, and it imports numpy.
A plan needs a dozen integers, so this walks the header with struct over an mmap, stepping over
arrays by their lengths instead of decoding them. Layout: the GGUF spec,
https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (versions 2 and 3; version 1, with
32-bit counts, predates August 2023 and llama.cpp no longer reads it).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from qinfra.core.errors import ModelInfoError

_MAGIC = b"GGUF"
_STRING = 8
_ARRAY = 9
# Fixed-size value types by GGUF type id (spec: gguf_metadata_value_type).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}


@dataclass(frozen=True)
class GgufArray:
    """An array value, kept as its element type and length: nothing qinfra reads needs more."""

    element_type: int
    count: int


Value = int | float | bool | str | GgufArray


@dataclass(frozen=True)
class GgufHeader:
    """A GGUF file's metadata key/values (arrays summarised) and the names of its tensors."""

    version: int
    metadata: dict[str, Value]
    tensor_names: tuple[str, ...]


class _Cursor:
    """Reads GGUF values in one byte order from a buffer, advancing an offset."""

    def __init__(self, buf: mmap.mmap, order: str) -> None:
        self.buf = buf
        self.order = order
        self.offset = 0

    def scalar(self, fmt: str) -> int | float | bool:
        (value,) = struct.unpack_from(self.order + fmt, self.buf, self.offset)
        self.offset += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        size = int(self.scalar("Q"))
        end = self.offset + size
        if end > len(self.buf):
            raise struct.error("string runs past the end of the file")
        text = self.buf[self.offset:end].decode("utf-8")
        self.offset = end
        return text

    def skip_strings(self, count: int) -> None:
        """Step over `count` strings by their length prefixes, decoding none."""
        unpack, buf, offset = struct.Struct(self.order + "Q").unpack_from, self.buf, self.offset
        for _ in range(count):
            offset += 8 + unpack(buf, offset)[0]
        if offset > len(buf):
            raise struct.error("array runs past the end of the file")
        self.offset = offset

    def value(self, kind: int) -> Value:
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            element, count = int(self.scalar("I")), int(self.scalar("Q"))
            if element == _STRING:
                self.skip_strings(count)
            elif element in _SCALARS:
                self.offset += struct.calcsize(_SCALARS[element]) * count
            else:  # arrays of arrays: the spec allows them, no model key uses them
                raise struct.error(f"array of GGUF type {element} is not supported")
            return GgufArray(element, count)
        if kind not in _SCALARS:
            raise struct.error(f"unknown GGUF value type {kind}")
        return self.scalar(_SCALARS[kind])


def read_header(path: Path) -> GgufHeader:
    """The header of the GGUF file at `path`; raises ModelInfoError when it is not one (or is
    truncated, or a version this reader does not know)."""
    try:
        with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf, path)
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise ModelInfoError(f"{path}: unreadable GGUF header ({exc}); is the file complete?") from None


def _parse(buf: mmap.mmap, path: Path) -> GgufHeader:
    if buf[:4] != _MAGIC:
        raise ModelInfoError(f"{path}: not a GGUF file (it does not start with 'GGUF')")
    # A big-endian file's version reads byte-swapped in little-endian (GGUFReader's own test).
    order = "<" if struct.unpack_from("<I", buf, 4)[0] & 0xFFFF else ">"
    cursor = _Cursor(buf, order)
    cursor.offset = 4
    version = int(cursor.scalar("I"))
    if version not in (2, 3):
        raise ModelInfoError(f"{path}: GGUF version {version} is not supported (2 and 3 are); "
                             "convert it again with a current llama.cpp")
    tensors, kv_count = int(cursor.scalar("Q")), int(cursor.scalar("Q"))
    metadata: dict[str, Value] = {}
    for _ in range(kv_count):
        key = cursor.string()
        metadata[key] = cursor.value(int(cursor.scalar("I")))
    names: list[str] = []
    for _ in range(tensors):
        names.append(cursor.string())
        dims = int(cursor.scalar("I"))
        cursor.offset += 8 * dims + 4 + 8  # the shape, the ggml type, the data offset
    return GgufHeader(version=version, metadata=metadata, tensor_names=tuple(names))
