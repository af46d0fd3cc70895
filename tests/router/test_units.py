"""The router's pure parts: where the key comes from, the config file's checks, reading responses
and comparing shadow outputs."""

from __future__ import annotations

import json

import pytest

from qinfra.core.spec import Variant
from qinfra.serving.router.config import RouterConfigError, config_mapping, load_config, parse_config
from qinfra.serving.router.keys import MAX_KEY_CHARS, request_key
from qinfra.serving.router.shadow import compare, is_greedy
from qinfra.serving.router.tally import Tally

H = "x-qinfra-user"
REPLICAS = {"baseline": ["http://127.0.0.1:1"], "quantized": ["http://127.0.0.1:2"]}


@pytest.mark.parametrize(
    ("headers", "body", "want"),
    [
        ({H: "alice", "cookie": "qinfra_user=carol"}, {"user": "bob"}, "alice"),  # header first
        ({H: "  ", "cookie": "qinfra_user=carol"}, {"user": "bob"}, "bob"),  # blank header skipped
        ({"cookie": "a=1; qinfra_user=carol"}, {"user": 7}, "carol"),  # non-string user skipped
        ({"cookie": "qinfra_user=" + "x" * (MAX_KEY_CHARS + 1)}, None, None),  # too long: no key
        ({"cookie": "\x00bad"}, None, None),  # unparsable cookie: no key
        ({"authorization": "Bearer tok"}, [1, 2], "bearer:"),  # hashed token; list body ignored
        ({"authorization": "Basic abc"}, None, None),  # not a bearer token
        ({}, None, None),
    ],
)
def test_request_key_sources_in_order(headers, body, want):
    got = request_key(headers, body, "X-Qinfra-User", "qinfra_user")
    if want == "bearer:":
        assert got is not None and got.startswith("bearer:") and "tok" not in got
    else:
        assert got == want


def test_config_round_trips_and_reads_yaml(tmp_path):
    config = parse_config({"replicas": REPLICAS, "quantized_percent": 12.5, "shadow_percent": 5})
    path = tmp_path / "router.json"
    path.write_text(json.dumps(config_mapping(config)))
    assert load_config(path) == config
    yaml = tmp_path / "router.yaml"
    yaml.write_text("replicas:\n  baseline: [http://127.0.0.1:1/]\nquantized_percent: 0\n")
    assert load_config(yaml).replicas_of(Variant.BASELINE) == ("http://127.0.0.1:1",)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"replicas": REPLICAS, "quantized_percnt": 5}, "Did you mean 'quantized_percent'?"),
        ({"replicas": REPLICAS, "quantized_percent": 101}, "quantized_percent must be within 0..100"),
        ({"replicas": REPLICAS, "quantized_percent": 1.234}, "at most two decimals"),
        ({"replicas": REPLICAS, "max_in_flight": 0}, "max_in_flight must be a whole number >= 1"),
        ({"replicas": REPLICAS, "read_timeout_s": True}, "read_timeout_s must be a number"),
        ({"replicas": {"baseline": ["http://h:1"]}, "quantized_percent": 5}, "replicas.quantized is empty"),
        ({"replicas": {"baseline": ["h:1"]}}, "is not a base URL"),
        ({"replicas": {"basline": ["http://h:1"]}}, "Did you mean 'baseline'?"),
        ({"replicas": {"baseline": ["http://h:1"]}, "shadow_percent": 1}, "shadow_percent is 1.0"),
        ([], "expected a mapping"),
    ],
)
def test_config_errors_name_the_key_and_the_rule(raw, message):
    with pytest.raises(RouterConfigError) as err:
        parse_config(raw, source="r.json")
    assert message in err.value.message and err.value.message.startswith("r.json: ")


def test_tally_reads_a_stream_split_anywhere():
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]},
        {"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
         "timings": {"prompt_n": 3, "cache_n": 2, "predicted_n": 2}},
    ]
    raw = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    tally = Tally()
    for i in range(0, len(raw), 7):
        tally.feed(raw[i : i + 7])
    assert (tally.output, tally.finish_reasons) == ("Hello", ["length"])
    assert (tally.prompt_tokens, tally.completion_count, len(tally.token_times)) == (5, 2, 2)


def test_tally_prefers_usage_and_counts_chunks_without_it():
    body = {"choices": [{"message": {"content": ""}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 0}}
    tally = Tally()
    tally.read_body(json.dumps(body).encode())
    assert (tally.output, tally.prompt_tokens, tally.completion_count) == ("", 4, 0)
    bare = Tally()
    bare.feed(b'data: {"choices":[{"text":"a"}]}\n\ndata: {"choices":[{"text":"b"}]}\n\n')
    assert (bare.prompt_tokens, bare.completion_count) == (None, 2)


def test_compare_and_greedy():
    assert compare("same", "same").exact
    diff = compare("abcd", "abxy")
    assert (diff.exact, diff.prefix_fraction) == (False, 0.5) and 0 < diff.similarity < 1
    assert compare("", "x").prefix_fraction == 0.0
    assert is_greedy({"temperature": 0}) and is_greedy({"temperature": 0.0})
    assert not any(is_greedy(d) for d in ({}, {"temperature": 0.7}, {"temperature": False}, None))


@pytest.mark.parametrize(
    ("data", "why"),
    [(b"\xff\xfe{}", "not UTF-8"), (b"[" * 100_000, "nested too deeply")],
)
def test_load_config_raises_only_router_config_error_whatever_the_bytes(tmp_path, data, why):
    for suffix in (".json", ".yaml"):
        path = tmp_path / f"router{suffix}"
        path.write_bytes(data)
        with pytest.raises(RouterConfigError) as err:
            load_config(path)
        assert why in err.value.message and str(path) in err.value.message
