"""Architecture facts of a model, read from a Hugging Face config.json (local, hub, or GGUF)."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qinfra.core.data import DATA_DIR
from qinfra.core.errors import ModelInfoError
from qinfra.core.hub import hub_file, is_hub_id

DEMO_MODEL_ID = "qinfra-demo"
"""The built-in tiny llama (qinfra.core.demomodel) that the `local` stack serves with no download."""

# Defaults where a config.json omits a key, by model_type (transformers' config classes).
_TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3_text", "qwen3"}
_ATTENTION_BIAS_BY_DEFAULT = {"qwen2", "qwen2_moe"}

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1}


@dataclass(frozen=True)
class Quantization:
    """A `quantization_config` found in the checkpoint's config.json."""

    method: str
    bits: int | None = None
    group_size: int | None = None
    # Whether each group stores a zero point beside its scale: GPTQ and AWQ checkpoints do
    # (packed, `bits` wide) even when symmetric; a symmetric compressed-tensors one does not.
    zero_points: bool = True


@dataclass(frozen=True)
class Mla:
    """Multi-head latent attention (DeepSeek-V2/V3): a compressed KV per token and layer."""

    kv_lora_rank: int
    qk_rope_head_dim: int
    qk_nope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None


@dataclass(frozen=True)
class Moe:
    """Mixture of experts: `experts` routed experts of `intermediate_size` each, `top_k` per token."""

    experts: int
    top_k: int
    intermediate_size: int
    shared_intermediate_size: int = 0
    dense_layers: int = 0  # leading layers with a dense MLP (DeepSeek first_k_dense_replace)


@dataclass(frozen=True)
class ModelInfo:
    """Shapes the planner needs; counts, not bytes (bytes depend on the format)."""

    name: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    torch_dtype: str = "bfloat16"
    moe: Moe | None = None
    mla: Mla | None = None
    # Per layer: the sliding-window size, or None for full attention.
    layer_windows: tuple[int | None, ...] = field(default=())
    quantization: Quantization | None = None

    @property
    def dtype_bytes(self) -> int:
        return _DTYPE_BYTES.get(self.torch_dtype, 2)

    @property
    def windows(self) -> tuple[int | None, ...]:
        return self.layer_windows or (None,) * self.num_layers


def from_config(config: Mapping[str, Any], name: str = "") -> ModelInfo:
    """Read the facts out of a config.json mapping; raises ModelInfoError naming a missing key."""
    cfg = dict(config.get("text_config") or config)  # multimodal wrappers nest the LLM config
    model_type = str(cfg.get("model_type") or config.get("model_type") or "unknown")

    def need(key: str, *aliases: str) -> int:
        for k in (key, *aliases):
            if cfg.get(k) is not None:
                return int(cfg[k])
        raise ModelInfoError(f"{name or 'config.json'}: missing '{key}' in config.json")

    hidden = need("hidden_size", "n_embd", "d_model")
    layers = need("num_hidden_layers", "n_layer", "num_layers")
    heads = need("num_attention_heads", "n_head")
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)

    moe = _moe(cfg, need)
    intermediate = int(cfg.get("intermediate_size") or (moe.intermediate_size if moe else 0))
    if not intermediate:
        raise ModelInfoError(f"{name or 'config.json'}: missing 'intermediate_size'")

    mla = None
    if cfg.get("kv_lora_rank"):
        mla = Mla(
            kv_lora_rank=int(cfg["kv_lora_rank"]),
            qk_rope_head_dim=int(cfg["qk_rope_head_dim"]),
            qk_nope_head_dim=int(cfg["qk_nope_head_dim"]),
            v_head_dim=int(cfg["v_head_dim"]),
            q_lora_rank=int(cfg["q_lora_rank"]) if cfg.get("q_lora_rank") else None,
        )

    qcfg = config.get("quantization_config") or cfg.get("quantization_config")
    quant = None
    if qcfg:
        quant = _quantization(qcfg)

    tied = cfg.get("tie_word_embeddings", config.get("tie_word_embeddings"))
    bias = cfg.get("attention_bias")
    return ModelInfo(
        name=name,
        model_type=model_type,
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate,
        vocab_size=need("vocab_size"),
        max_position_embeddings=int(cfg.get("max_position_embeddings") or 2048),
        tie_word_embeddings=bool(tied) if tied is not None else model_type in _TIED_BY_DEFAULT,
        attention_bias=bool(bias) if bias is not None else model_type in _ATTENTION_BIAS_BY_DEFAULT,
        torch_dtype=str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"),
        moe=moe,
        mla=mla,
        layer_windows=_layer_windows(cfg, layers),
        quantization=quant,
    )


def _quantization(qcfg: dict[str, Any]) -> Quantization:
    """The checkpoint's weight quantization: AutoGPTQ/AutoAWQ keep bits and group_size at the
    top; compressed-tensors (llm-compressor) keeps them per config group, under `weights`."""
    method = str(qcfg.get("quant_method", "unknown"))
    groups = qcfg.get("config_groups") or {}
    weights = next((g.get("weights") for g in groups.values() if isinstance(g, dict)
                    and isinstance(g.get("weights"), dict)), None)
    if method == "compressed-tensors" and weights is not None:
        return Quantization(
            method=method,
            bits=int(weights["num_bits"]) if weights.get("num_bits") else None,
            group_size=int(weights["group_size"]) if weights.get("group_size") else None,
            zero_points=not weights.get("symmetric", True),
        )
    return Quantization(
        method=method,
        bits=int(qcfg["bits"]) if qcfg.get("bits") else None,
        group_size=int(qcfg["group_size"]) if qcfg.get("group_size") else None,
    )


def _moe(cfg: dict[str, Any], need: Any) -> Moe | None:
    """Mixtral names experts num_local_experts (intermediate_size is per expert); Qwen-MoE and
    DeepSeek use num_experts / n_routed_experts with moe_intermediate_size."""
    if cfg.get("num_local_experts"):
        return Moe(
            experts=int(cfg["num_local_experts"]),
            top_k=int(cfg.get("num_experts_per_tok") or 2),
            intermediate_size=need("intermediate_size"),
        )
    experts = cfg.get("num_experts") or cfg.get("n_routed_experts")
    if not experts:
        return None
    shared = int(cfg.get("shared_expert_intermediate_size") or 0)
    if not shared and cfg.get("n_shared_experts"):
        shared = int(cfg["n_shared_experts"]) * int(cfg["moe_intermediate_size"])
    return Moe(
        experts=int(experts),
        top_k=int(cfg.get("num_experts_per_tok") or 1),
        intermediate_size=int(cfg.get("moe_intermediate_size") or need("intermediate_size")),
        shared_intermediate_size=shared,
        dense_layers=int(cfg.get("first_k_dense_replace") or 0),
    )


def _layer_windows(cfg: dict[str, Any], layers: int) -> tuple[int | None, ...]:
    """Which layers use a sliding window. `layer_types` is explicit; Qwen2 switches windows off
    with use_sliding_window and keeps the first max_window_layers layers full."""
    window = cfg.get("sliding_window")
    if not window or cfg.get("use_sliding_window") is False:
        return (None,) * layers
    window = int(window)
    types = cfg.get("layer_types")
    if types:
        return tuple(window if t == "sliding_attention" else None for t in types)
    pattern = cfg.get("sliding_window_pattern")
    if pattern:  # Gemma: every pattern-th layer is global
        return tuple(None if (i + 1) % int(pattern) == 0 else window for i in range(layers))
    if cfg.get("max_window_layers") is not None and cfg.get("use_sliding_window"):
        first_full = int(cfg["max_window_layers"])
        return tuple(None if i < first_full else window for i in range(layers))
    return (window,) * layers


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelInfoError(f"{path} is not valid JSON: {exc}") from None


def _from_gguf(path: Path) -> ModelInfo:
    """A GGUF file carries the same facts as metadata under `<arch>.*` keys; only its header is
    read (qinfra.core.ggufheader), so a multi-gigabyte file plans as fast as a config.json."""
    from qinfra.core.ggufheader import GgufArray, read_header

    header = read_header(path)

    def value(key: str) -> Any:
        found = header.metadata.get(key)
        if isinstance(found, GgufArray):
            raise ModelInfoError(f"{path}: '{key}' is a per-layer array; qinfra plans models "
                                 "whose layers all share one shape")
        return found

    arch = value("general.architecture")
    if not arch:
        raise ModelInfoError(f"{path}: not a GGUF model (no general.architecture)")
    tokens = header.metadata.get("tokenizer.ggml.tokens")
    heads = int(value(f"{arch}.attention.head_count"))
    hidden = int(value(f"{arch}.embedding_length"))
    return ModelInfo(
        name=str(path),
        model_type=str(arch),
        hidden_size=hidden,
        num_layers=int(value(f"{arch}.block_count")),
        num_attention_heads=heads,
        num_kv_heads=int(value(f"{arch}.attention.head_count_kv") or heads),
        head_dim=int(value(f"{arch}.attention.key_length") or hidden // heads),
        intermediate_size=int(value(f"{arch}.feed_forward_length")),
        vocab_size=int(value(f"{arch}.vocab_size")
                       or (tokens.count if isinstance(tokens, GgufArray) else 0)),
        max_position_embeddings=int(value(f"{arch}.context_length") or 2048),
        tie_word_embeddings="output.weight" not in header.tensor_names,
        torch_dtype="float16",
    )


@dataclass(frozen=True)
class ShippedModel:
    """config.json facts shipped with qinfra (data/models/*.json), read at a pinned hub commit."""

    source: str  # hub id
    revision: str  # the hub commit the facts were read at
    aliases: tuple[str, ...]
    config: Mapping[str, Any]

    def matches(self, revision: str) -> bool:
        """Facts stand for the default branch and for the commit they were read at."""
        return revision in ("main", self.revision)


_COMMIT = re.compile(r"[0-9a-f]{40}")


@functools.cache
def shipped_models() -> dict[str, ShippedModel]:
    """Shipped facts by lower-cased hub id and alias (the hub resolves ids case-insensitively)."""
    folder = DATA_DIR / "models"
    out: dict[str, ShippedModel] = {}
    for item in sorted(folder.iterdir(), key=lambda f: f.name):
        if not item.name.endswith(".json"):
            continue
        raw = json.loads(item.read_text())
        model = ShippedModel(source=raw["source"], revision=raw["revision"],
                             aliases=tuple(raw.get("aliases", ())), config=raw["config"])
        if not _COMMIT.fullmatch(model.revision):
            raise ModelInfoError(f"shipped {item.name}: revision must be a 40-hex hub commit")
        for key in (model.source, *model.aliases):
            if key.lower() in out:
                raise ModelInfoError(f"shipped {item.name}: '{key}' is listed twice")
            out[key.lower()] = model
    return out


def resolve_path(model_id: str, root: Path | None = None) -> str:
    """`model_id` with a relative local path made absolute against `root`, the project root.

    A stack file is read by the CLI (from any folder) and by the Pulumi program (run from its
    own folder); resolving against the project both times makes `./mymodel` mean one thing.
    The demo id, absolute and `~` paths, and ids naming no file or folder under `root` (hub ids)
    stay as written; with no `root` (an ad-hoc `qinfra plan --model`) the cwd is the start.
    """
    path = Path(model_id)
    if root is None or model_id == DEMO_MODEL_ID or path.is_absolute() or model_id.startswith("~"):
        return model_id
    under = root / path
    return str(under) if under.exists() else model_id


def load(model_id: str, revision: str = "main", root: Path | None = None) -> ModelInfo:
    """Facts for the built-in demo model, a local directory or file (relative to `root`, see
    `resolve_path`), the shipped facts of a hub id (at "main" or their pinned commit), or else
    the hub's config.json at `revision`.

    Only config.json is downloaded, after one short reachability request (hub.hub_file), so an
    unreachable hub fails in seconds; HF_TOKEN and HF_HUB_OFFLINE are honoured.
    """
    if model_id == DEMO_MODEL_ID:
        from qinfra.core.demomodel import demo_config_json

        return from_config(demo_config_json(), name=DEMO_MODEL_ID)
    path = Path(resolve_path(model_id, root)).expanduser()
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.is_file():
            raise ModelInfoError(f"{path} has no config.json; point at a Hugging Face model dir")
        return from_config(_read_json(cfg), name=model_id)
    if path.is_file():
        if path.suffix == ".gguf":
            return _from_gguf(path)
        return from_config(_read_json(path), name=model_id)
    if not is_hub_id(model_id):
        raise ModelInfoError(
            f"model '{model_id}' is neither an existing path nor a hub id of the form owner/name"
        )
    shipped = shipped_models().get(model_id.lower())
    if shipped is not None and shipped.matches(revision):
        return from_config(shipped.config, name=model_id)
    return from_config(_read_json(hub_file(model_id, "config.json", revision, ModelInfoError)),
                       name=model_id)
