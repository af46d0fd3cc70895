"""Architecture facts from config.json: local dirs, GGUF files, hub ids (offline here)."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import typing
from pathlib import Path

import pytest

from qinfra.core import modelinfo
from qinfra.core.errors import ModelInfoError
from qinfra.core.formats import Format
from qinfra.core.hardware import catalog
from qinfra.planning.planner import EngineOptions, param_counts, plan_vllm

MIXTRAL = {  # mistralai/Mixtral-8x7B-v0.1 config.json (abridged to the facts used)
    "model_type": "mixtral", "hidden_size": 4096, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
    "vocab_size": 32000, "max_position_embeddings": 32768, "num_local_experts": 8,
    "num_experts_per_tok": 2, "tie_word_embeddings": False, "sliding_window": None,
}
GEMMA2 = {  # google/gemma-2-9b: explicit head_dim, tied embeddings, alternating windows
    "model_type": "gemma2", "hidden_size": 3584, "num_hidden_layers": 42,
    "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
    "intermediate_size": 14336, "vocab_size": 256000, "max_position_embeddings": 8192,
    "sliding_window": 4096,
    "layer_types": ["sliding_attention", "full_attention"] * 21,
}
AWQ_CKPT = {  # an AWQ checkpoint carries its quantization_config
    **json.loads((Path(__file__).parent / "data/models/llama-3.1-8b/config.json").read_text()),
    "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 64},
}


def test_reference_llama_3_1(reference_models):
    info = modelinfo.load(str(reference_models / "llama-3.1-8b"))
    assert (info.num_kv_heads, info.head_dim, info.tie_word_embeddings) == (8, 128, False)
    assert info.windows == (None,) * 32 and info.moe is None


def test_qwen2_has_attention_bias(reference_models):
    assert modelinfo.load(str(reference_models / "qwen2.5-7b")).attention_bias


def test_mixtral_experts():
    info = modelinfo.from_config(MIXTRAL)
    assert info.moe is not None and info.moe.experts == 8 and info.moe.top_k == 2
    total = sum(vars(param_counts(info)).values())
    assert total / 1e9 == pytest.approx(46.7, abs=0.05)  # model card: 46.7B


def test_gemma2_head_dim_tied_and_windows():
    info = modelinfo.from_config(GEMMA2)
    assert info.head_dim == 256 and info.tie_word_embeddings
    assert info.windows[:2] == (4096, None) and len(info.windows) == 42
    counts = param_counts(info)
    assert counts.lm_head == 0
    plan = plan_vllm(info, Format.BF16, catalog().gpu("h100-80gb"), EngineOptions(max_model_len=8192))
    # sliding layers hold at most ceil((4096 - 1 + 8192)/16) + 1 = 769 pages of the 512 needed:
    # at 8192 tokens every layer needs all 512 pages
    assert plan.max_concurrency == pytest.approx(plan.kv_cache_tokens / 16 / 512)


def test_quantization_config_bits_win():
    info = modelinfo.from_config(AWQ_CKPT)
    assert info.quantization == modelinfo.Quantization("awq", 4, 64)
    g64 = plan_vllm(info, Format.AWQ, catalog().gpu("l4"), EngineOptions(max_model_len=4096))
    plain = plan_vllm(modelinfo.from_config({k: v for k, v in AWQ_CKPT.items()
                                             if k != "quantization_config"}),
                      Format.AWQ, catalog().gpu("l4"), EngineOptions(max_model_len=4096))
    assert g64.weight_bytes > plain.weight_bytes  # 4 + 20/64 bits > 4 + 20/128 bits


def test_multimodal_wrapper_uses_text_config():
    info = modelinfo.from_config({"model_type": "llava", "text_config": MIXTRAL})
    assert info.num_layers == 32


def test_missing_key_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ModelInfoError, match="missing 'num_hidden_layers'"):
        modelinfo.load(str(tmp_path))


def test_dir_without_config(tmp_path):
    with pytest.raises(ModelInfoError, match=r"has no config\.json"):
        modelinfo.load(str(tmp_path))


def test_hub_id_offline_is_a_clear_error():
    with pytest.raises(ModelInfoError, match="not cached and the hub cannot be reached"):
        modelinfo.load("qinfra-tests/no-such-model")


def test_not_a_hub_id():
    with pytest.raises(ModelInfoError, match="neither an existing path nor a hub id"):
        modelinfo.load("./missing/dir")


def test_gguf_file_and_demo_model_agree(tmp_path):
    from qinfra.core.demomodel import write_demo_model

    path = tmp_path / "demo.gguf"
    write_demo_model(path)
    from_file = modelinfo.load(str(path))
    builtin = modelinfo.load(modelinfo.DEMO_MODEL_ID)
    for field in ("hidden_size", "num_layers", "num_attention_heads", "num_kv_heads", "head_dim",
                  "intermediate_size", "vocab_size", "max_position_embeddings"):
        assert getattr(from_file, field) == getattr(builtin, field), field


DEEPSEEK_V2_LITE = {  # deepseek-ai/DeepSeek-V2-Lite config.json (the facts used)
    "model_type": "deepseek_v2", "hidden_size": 2048, "num_hidden_layers": 27,
    "num_attention_heads": 16, "num_key_value_heads": 16, "kv_lora_rank": 512,
    "q_lora_rank": None, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "intermediate_size": 10944, "moe_intermediate_size": 1408, "n_routed_experts": 64,
    "n_shared_experts": 2, "num_experts_per_tok": 6, "first_k_dense_replace": 1,
    "vocab_size": 102400, "max_position_embeddings": 163840, "tie_word_embeddings": False,
}


def test_mla_stores_one_latent_per_layer_not_split_by_tp():
    """serving-memory.md: MLA keeps kv_lora_rank + qk_rope_head_dim (512 + 64) per token and
    layer, no x2 for K and V, not split across ranks: 27 x 576 x 2 B = 31,104 B in bf16."""
    from qinfra.planning.planner import kv_bytes_per_token_vllm

    info = modelinfo.from_config(DEEPSEEK_V2_LITE)
    assert info.mla is not None and info.moe is not None and info.moe.dense_layers == 1
    assert kv_bytes_per_token_vllm(info, 1, "auto") == 27 * 576 * 2
    assert kv_bytes_per_token_vllm(info, 2, "auto") == 27 * 576 * 2
    assert kv_bytes_per_token_vllm(info, 1, "fp8") == 27 * 576
    total = sum(vars(param_counts(info)).values())
    assert total / 1e9 == pytest.approx(15.7, abs=0.05)  # model card: 15.7B


# --- shipped facts and the hub edge ------------------------------------------------------------

# Shipped facts against the reference copies of the same public config.json files.
SHIPPED_REFERENCES = {
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "mistralai/Mistral-7B-Instruct-v0.3": "mistral-7b-v0.3",
}
# Model cards: Llama-3.1-8B 8.03B, Llama-3.1-70B 70.6B, Mistral-7B-v0.3 7.25B, Qwen2.5-7B 7.62B.
SHIPPED_PARAMS_B = {
    "meta-llama/Llama-3.1-8B-Instruct": 8.03,
    "meta-llama/Llama-3.1-70B-Instruct": 70.6,
    "mistralai/Mistral-7B-Instruct-v0.3": 7.25,
    "Qwen/Qwen2.5-7B-Instruct": 7.62,
}


def test_shipped_facts_cover_the_example_stacks_and_popular_families():
    from qinfra.core.hub import is_hub_id

    shipped = modelinfo.shipped_models()
    sources = {m.source for m in shipped.values()}
    assert set(SHIPPED_PARAMS_B) <= sources
    stack_ids = {line.split("id:", 1)[1].strip()
                 for f in (Path(__file__).parents[1] / "stacks").glob("Pulumi.*.yaml")
                 for line in f.read_text().splitlines() if line.strip().startswith("id:")}
    assert {i for i in stack_ids if is_hub_id(i)} <= sources
    for model in {m.source: m for m in shipped.values()}.values():
        assert is_hub_id(model.source) and len(model.revision) == 40, model.source
        info = modelinfo.from_config(model.config, name=model.source)
        total = sum(vars(param_counts(info)).values())
        assert total / 1e9 == pytest.approx(SHIPPED_PARAMS_B[model.source], abs=0.05), model.source


@pytest.mark.parametrize(("hub_id", "reference"), sorted(SHIPPED_REFERENCES.items()))
def test_shipped_facts_match_the_reference_config(reference_models, hub_id, reference):
    shipped = modelinfo.load(hub_id)
    local = modelinfo.load(str(reference_models / reference))
    assert vars(shipped) | {"name": ""} == vars(local) | {"name": ""}


def test_shipped_facts_need_no_hub_and_follow_aliases_and_case():
    """conftest sets HF_HUB_OFFLINE with an empty cache: only shipped facts can answer."""
    pinned = modelinfo.shipped_models()["meta-llama/llama-3.1-8b-instruct"].revision
    for hub_id, revision in [("meta-llama/Llama-3.1-8B-Instruct", "main"),
                             ("meta-llama/Llama-3.1-8B-Instruct", pinned),
                             ("meta-llama/Meta-Llama-3.1-8B-Instruct", "main"),
                             ("META-LLAMA/llama-3.1-8b-instruct", "main")]:
        info = modelinfo.load(hub_id, revision)
        assert (info.name, info.num_layers, info.num_kv_heads) == (hub_id, 32, 8)


def test_another_revision_of_a_shipped_model_goes_to_the_hub():
    with pytest.raises(ModelInfoError, match="not cached and the hub cannot be reached"):
        modelinfo.load("meta-llama/Llama-3.1-8B-Instruct", "0" * 40)


class _Hub(http.server.BaseHTTPRequestHandler):
    """A loopback stand-in for a hub that cannot be reached: it counts each request and drops the
    connection without an answer (what a dead proxy or a broken route looks like to httpx), or,
    with `answer_404`, answers as the hub does for an unknown repo."""

    requests: typing.ClassVar[list[str]] = []
    answer_404: typing.ClassVar[bool] = False

    def _count(self) -> None:
        type(self).requests.append(f"{self.command} {self.path}")
        if not self.answer_404:
            self.close_connection = True
            return
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET = _count

    def log_message(self, *args: object) -> None:
        """Quiet: the test reads `requests`."""


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """HF_ENDPOINT at the counting loopback server, online mode, an empty hub cache."""
    _Hub.requests = []
    _Hub.answer_404 = False
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    yield _Hub
    server.shutdown()
    server.server_close()


def _qinfra(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh process, so huggingface-hub reads HF_ENDPOINT and HF_HUB_OFFLINE anew."""
    return subprocess.run([sys.executable, "-m", "qinfra.cli.main", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def _for_the_model(requests: list[str]) -> int:
    """Requests for the model's files; huggingface-hub also fetches its own agent-harness
    registry (GET /api/agent-harnesses, once a day, no retry) when it builds request headers."""
    return sum("/qinfra-tests/no-such-model/" in r for r in requests)


def test_plan_of_a_shipped_model_sends_no_request(hub, stacks):
    result = _qinfra("plan", "--stack", "prod", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)
    assert hub.requests == []


def test_unreachable_hub_fails_after_one_request_with_a_fix(hub):
    """huggingface-hub alone would retry five more times with backoff (~23 s of warnings)."""
    result = _qinfra("plan", "--model", "qinfra-tests/no-such-model", "--format", "bf16",
                     "--gpu", "h100-80gb")
    assert result.returncode != 0
    assert _for_the_model(hub.requests) == 1, hub.requests
    assert "cannot be reached" in result.stderr
    assert "local directory holding config.json" in result.stderr
    assert "HF_HUB_OFFLINE=1" in result.stderr
    assert "Retry" not in result.stderr


def test_unknown_repo_fails_after_one_request(hub):
    hub.answer_404 = True
    result = _qinfra("plan", "--model", "qinfra-tests/no-such-model", "--format", "bf16",
                     "--gpu", "h100-80gb")
    assert result.returncode != 0
    assert _for_the_model(hub.requests) == 1, hub.requests
    assert "hub repo 'qinfra-tests/no-such-model' not found" in result.stderr
