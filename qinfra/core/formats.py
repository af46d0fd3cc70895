"""Quantization formats and which engine and GPU can run them, loaded from data/formats.toml."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from enum import StrEnum
from functools import cache

from qinfra.core.data import DATA_DIR
from qinfra.core.engines import Engine, traits

VLLM_VERSION = "0.33.0"
"""The vLLM release the planner's defaults and the rendered flags are taken from."""

# vllm/config/cache.py of the pinned wheel: `gpu_memory_utilization: float = Field(default=0.92,
# ...)` (older releases, and serving-memory.md's note, say 0.9). The one default of the stack
# key qinfra:serving.gpu_memory_utilization and of the ad-hoc `qinfra plan --model`, so both
# paths plan what `vllm serve` does with no flag; tests/test_vllm_flags.py reads it from the wheel.
VLLM_DEFAULT_GPU_MEMORY_UTILIZATION = 0.92


class Format(StrEnum):
    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"
    INT8 = "int8"
    AWQ = "awq"
    GPTQ = "gptq"
    W4A16 = "w4a16"
    W8A16 = "w8a16"
    GGUF_F16 = "gguf-f16"
    GGUF_Q8_0 = "gguf-q8_0"
    GGUF_Q6_K = "gguf-q6_k"
    GGUF_Q5_K_M = "gguf-q5_k_m"
    GGUF_Q4_K_M = "gguf-q4_k_m"
    GGUF_Q4_K_S = "gguf-q4_k_s"
    GGUF_Q3_K_M = "gguf-q3_k_m"
    GGUF_Q2_K = "gguf-q2_k"


class FormatKind(StrEnum):
    BASELINE = "baseline"
    QUANTIZED = "quantized"


class KvCacheDtype(StrEnum):
    """The KV cache's element type (`qinfra:serving.kv_cache_dtype`); here rather than in spec so
    the planner reads it without loading the stack schema (pydantic)."""

    AUTO = "auto"
    FP8 = "fp8"


@dataclass(frozen=True)
class FormatInfo:
    """One row of the format table. Bits are per weight, scales and zeros included."""

    format: Format
    kind: FormatKind
    description: str
    linear_bits: float
    embedding_bits: float
    lm_head_bits: float
    engines: tuple[Engine, ...]
    vllm_min_cc: float | None = None
    weight_only_min_cc: float | None = None
    vllm_quantization: str | None = None
    vllm_fast_quantization: str | None = None
    vllm_fast_min_cc: float | None = None
    vllm_dtype: str | None = None
    gguf_type: str | None = None
    group_quantized: bool = False
    mix_estimate: bool = False
    equivalents: tuple[Format, ...] = ()

    @property
    def is_gguf(self) -> bool:
        return self.gguf_type is not None

    def quantization_flag(self, compute_capability: float) -> str | None:
        """The vLLM `--quantization` value for this GPU: the Marlin kernels where they run."""
        fast_cc = self.vllm_fast_min_cc
        if self.vllm_fast_quantization and fast_cc is not None and compute_capability >= fast_cc:
            return self.vllm_fast_quantization
        return self.vllm_quantization


@dataclass(frozen=True)
class Verdict:
    """Whether an engine x format x GPU combination runs; refusals carry reason and alternatives."""

    ok: bool
    reason: str = ""
    alternatives: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@cache
def format_table() -> dict[Format, FormatInfo]:
    raw = tomllib.loads((DATA_DIR / "formats.toml").read_text())
    table: dict[Format, FormatInfo] = {}
    for name, row in raw.items():
        fmt = Format(name)
        table[fmt] = FormatInfo(
            format=fmt,
            kind=FormatKind(row.pop("kind")),
            engines=tuple(Engine(e) for e in row.pop("engines")),
            equivalents=tuple(Format(e) for e in row.pop("equivalents", ())),
            **row,
        )
    return table


def format_info(fmt: Format | str) -> FormatInfo:
    return format_table()[Format(fmt)]


def engine_loads(engine: Engine, fmt: Format) -> bool:
    """The one engine-loads-format rule (formats.toml `engines`); the stack schema, the planner
    and the render all ask it, each with its own message."""
    return engine in format_info(fmt).engines


def default_engine(fmt: Format | str) -> Engine:
    """The engine `qinfra plan --format` picks when none is named: the first in Engine's order
    that loads the format (llama.cpp for gguf-*, else vLLM)."""
    return next(e for e in Engine if engine_loads(e, Format(fmt)))


def formats_loaded_by(engine: Engine) -> tuple[Format, ...]:
    """Every format `engine` loads, in the Format enum's order."""
    return tuple(fmt for fmt in Format if engine_loads(engine, fmt))


def _runs(info: FormatInfo, engine: Engine, cc: float | None) -> bool:
    """True when engine loads the format at full speed on a GPU of capability cc (None: CPU)."""
    if not engine_loads(engine, info.format):
        return False
    row = traits(engine)
    if cc is None:
        return not row.needs_gpu  # e.g. vLLM plans here are GPU plans
    if not row.checks_compute_capability:
        return True
    assert info.vllm_min_cc is not None
    return cc >= info.vllm_min_cc


def _alternatives(info: FormatInfo, engine: Engine, cc: float | None) -> tuple[str, ...]:
    """Nearest runnable choices: another engine for the same format, then the format's listed
    equivalents that this engine runs here, then same-kind formats closest in bits per weight."""
    out: list[str] = [
        f"engine {other} (loads {info.format})"
        for other in Engine
        if other is not engine and _runs(info, other, cc)
    ]
    peers = [
        row
        for row in format_table().values()
        if row.kind is info.kind and row.format is not info.format and _runs(row, engine, cc)
    ]
    rank = {fmt: i for i, fmt in enumerate(info.equivalents)}
    peers.sort(key=lambda row: (rank.get(row.format, len(rank)),
                                abs(row.linear_bits - info.linear_bits), row.format.value))
    out.extend(f"format {row.format} ({row.description})" for row in peers[:2])
    return tuple(out)


def check_compatibility(fmt: Format, engine: Engine, cc: float | None, gpu: str = "") -> Verdict:
    """Can `engine` serve `fmt` on a GPU of compute capability `cc` (None: on CPU)?"""
    info = format_info(fmt)
    where = f"{gpu} (compute capability {cc})" if cc is not None else "CPU"
    row = traits(engine)
    if not engine_loads(engine, fmt):
        why = row.refusal.format(engine=engine, fmt=fmt)
        return Verdict(False, why, _alternatives(info, engine, cc))
    if row.needs_gpu and cc is None:
        return Verdict(False, f"{row.label} needs a GPU", _alternatives(info, engine, cc))
    if row.checks_compute_capability and cc is not None:
        assert info.vllm_min_cc is not None
        if cc < info.vllm_min_cc:
            wo = info.weight_only_min_cc
            if wo is not None and cc >= wo:
                return Verdict(
                    True,
                    warnings=(
                        f"{fmt} on {where}: no FP8 tensor cores below {info.vllm_min_cc}; "
                        f"{row.label} runs it weight-only through Marlin (same memory, slower compute)",
                    ),
                )
            why = f"{fmt} on {row.label} needs compute capability >= {info.vllm_min_cc}; {where} has {cc}"
            return Verdict(False, why, _alternatives(info, engine, cc))
    return Verdict(True)
