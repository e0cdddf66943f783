"""Pricing from config / litellm's cost map, the backend registry, and the SSE decoder."""

from __future__ import annotations

import subprocess
import sys

import pytest

from backends.base import Usage
from backends.openai_compatible import OpenAICompatibleBackend
from backends.pricing import (
    Prices,
    context_window,
    cost_map_path,
    cost_usd,
    load_cost_map,
    lookup_model,
    max_output_tokens,
    price_table,
    resolve_prices,
    with_cost_map_limits,
)
from backends.registry import UnsupportedProviderError, api_key_for, build_backend, default_factories
from backends.sse import SSEDecoder, client_wants_usage, is_usage_chunk, with_stream_usage
from common.types import DeploymentConfig, Pricing


def dep(upstream: str, **kw) -> DeploymentConfig:
    return DeploymentConfig(name=kw.pop("name", "d"), model="m", upstream_model=upstream, **kw)


def litellm_dep(upstream: str, **kw) -> DeploymentConfig:
    return dep(upstream, provider="litellm", **kw)


# -- pricing ----------------------------------------------------------------------------------------------


def test_cost_map_is_loaded_without_importing_litellm() -> None:
    code = (
        "import sys; from backends.pricing import load_cost_map, cost_map_path; "
        "m = load_cost_map(); assert len(m) > 1000 and 'gpt-4o' in m; "
        "assert 'litellm' not in sys.modules, 'litellm was imported'; print(cost_map_path())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("model_prices_and_context_window_backup.json")
    assert cost_map_path() is not None and "sample_spec" not in load_cost_map()


def test_prices_from_cost_map_and_config() -> None:
    entry = lookup_model("gpt-4o")
    assert entry is not None
    pin, pout = entry["input_cost_per_token"] * 1e6, entry["output_cost_per_token"] * 1e6
    p = resolve_prices(litellm_dep("openai/gpt-4o"))
    assert (p.input_per_mtok, p.output_per_mtok, p.source) == (
        pytest.approx(pin),
        pytest.approx(pout),
        "cost_map",
    )
    assert cost_usd(litellm_dep("gpt-4o"), Usage(1_000_000, 500_000)) == pytest.approx(pin + pout / 2)
    own = litellm_dep("gpt-4o", pricing=Pricing(input_per_mtok=1.0, output_per_mtok=2.0))
    assert resolve_prices(own).source == "config" and cost_usd(
        own, Usage(2_000_000, 1_000_000)
    ) == pytest.approx(4.0)
    half = litellm_dep("gpt-4o", pricing=Pricing(input_per_mtok=1.0))
    assert resolve_prices(half).source == "mixed" and resolve_prices(half).output_per_mtok == pytest.approx(
        pout
    )
    unknown = litellm_dep("my-own-llama")
    assert resolve_prices(unknown).source == "none" and cost_usd(unknown, Usage(10**6, 10**6)) == 0.0
    assert resolve_prices(unknown, {"my-own-llama": (0.5, 1.0)}).output_per_mtok == 1.0
    # a provider prefix only matches the provider's own entry
    assert lookup_model("hosted_vllm/gpt-4o") is None
    assert price_table([litellm_dep("gpt-4o", name="a"), unknown]) == {
        "a": (pytest.approx(pin), pytest.approx(pout)),
        "d": (0.0, 0.0),
    }


def test_context_window_and_max_output_defaults() -> None:
    entry = lookup_model("gpt-4o")
    assert entry is not None
    assert context_window(litellm_dep("gpt-4o")) == entry["max_input_tokens"]
    assert context_window(litellm_dep("gpt-4o", context_window=1000)) == 1000  # explicit config wins
    assert context_window(litellm_dep("my-own-llama")) == 8192  # config default
    assert max_output_tokens(litellm_dep("gpt-4o")) == entry["max_output_tokens"]
    assert max_output_tokens(litellm_dep("gpt-4o", max_output_tokens=10)) == 10
    assert max_output_tokens(litellm_dep("my-own-llama")) is None


def test_a_served_deployment_takes_the_limits_its_config_leaves_unset_from_the_cost_map() -> None:
    entry = lookup_model("gpt-4o")
    assert entry is not None
    served = with_cost_map_limits(litellm_dep("gpt-4o"))
    assert (served.context_window, served.max_output_tokens) == (entry["max_input_tokens"], entry["max_output_tokens"])
    pinned = with_cost_map_limits(litellm_dep("gpt-4o", context_window=1000))  # explicit window wins; output fits in it
    assert (pinned.context_window, pinned.max_output_tokens) == (1000, 1000)
    both = litellm_dep("gpt-4o", context_window=1000, max_output_tokens=10)
    unknown = litellm_dep("my-own-llama")
    assert with_cost_map_limits(both) is both and with_cost_map_limits(unknown) is unknown
    assert unknown.context_window == 8192 and unknown.max_output_tokens is None


def test_a_self_hosted_server_takes_no_price_or_limits_from_the_cost_map() -> None:
    """An openai_compatible deployment (vLLM, SGLang) whose model id is a cost-map key is a server of its own,
    not that provider: no public price, window or output limit unless its config says so; a local one
    neither. Its explicit config, as a litellm deployment's, is what it is served with."""
    entry = lookup_model("gpt-4o")
    assert entry is not None and entry["max_input_tokens"] != 8192
    for provider in ("openai_compatible", "local"):
        own = dep("gpt-4o", provider=provider, api_base="http://10.0.0.5:8000/v1")
        assert resolve_prices(own) == Prices(0.0, 0.0, "none") and cost_usd(own, Usage(10**6, 10**6)) == 0.0
        assert (context_window(own), max_output_tokens(own)) == (8192, None)
        assert with_cost_map_limits(own) is own
        assert price_table([own]) == {"d": (0.0, 0.0)}
    half = dep("gpt-4o", pricing=Pricing(input_per_mtok=0.5))  # the unset half is 0, not the map's
    assert resolve_prices(half) == Prices(0.5, 0.0, "config")
    pinned = dep("gpt-4o", context_window=32768, max_output_tokens=4096,
                 pricing=Pricing(input_per_mtok=0.1, output_per_mtok=0.2))
    assert resolve_prices(pinned) == Prices(0.1, 0.2, "config")
    assert with_cost_map_limits(pinned) is pinned and context_window(pinned) == 32768
    site = resolve_prices(dep("gpt-4o"), {"gpt-4o": (0.3, 0.6)})  # a site's own price list is configuration
    assert (site.input_per_mtok, site.output_per_mtok) == (0.3, 0.6)


# -- registry ------------------------------------------------------------------------------------------------


async def test_registry_builds_and_rejects() -> None:
    b = build_backend(dep("fake-model", api_base="http://127.0.0.1:1/v1"))
    assert isinstance(b, OpenAICompatibleBackend) and b.name == "d"
    # (the real "local" factory belongs to backends.local_backend and imports torch: not built here)
    sentinel = object()
    got = build_backend(
        dep("jamba", provider="local"), {**default_factories(), "local": lambda cfg: sentinel}
    )
    assert got is sentinel
    with pytest.raises(UnsupportedProviderError, match="unknown provider"):
        build_backend(dep("x", provider="local"), {"litellm": default_factories()["litellm"]})
    with pytest.raises(ValueError, match="api_base"):
        build_backend(dep("x"))


def test_openai_compatible_build_does_not_import_litellm() -> None:
    code = (
        "import sys; from backends.registry import build_backend; from common.types import DeploymentConfig; "
        "build_backend(DeploymentConfig(name='a', model='m', upstream_model='x', api_base='http://h/v1')); "
        "assert 'litellm' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_a_missing_api_key_env_does_not_stop_the_backend_from_being_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """The other deployments are served; the gateway's start warns (tests/gateway/test_bad_config.py)."""
    monkeypatch.delenv("HG_NOT_SET_ANYWHERE", raising=False)
    monkeypatch.setenv("HG_EMPTY", "")
    for var in ("HG_NOT_SET_ANYWHERE", "HG_EMPTY"):
        d = dep("x", api_base="http://h/v1", api_key_env=var)
        assert api_key_for(d) is None
        assert isinstance(build_backend(d), OpenAICompatibleBackend)


# -- SSE -----------------------------------------------------------------------------------------------------------


def test_sse_decoder_handles_arbitrary_splits() -> None:
    stream = (
        b'data: {"a": 1}\n\n: keep-alive\n\nevent: message_start\r\ndata: {"b": 2}\r\n\r\n'
        b"data: line1\ndata: line2\n\nid: 7\nretry: 10\ndata: [DONE]\n\n"
    )
    expected = [
        (None, b'{"a": 1}'),
        ("message_start", b'{"b": 2}'),
        (None, b"line1\nline2"),
        (None, b"[DONE]"),
    ]
    for size in (1, 2, 3, 7, len(stream)):
        d = SSEDecoder()
        got = []
        for i in range(0, len(stream), size):
            got += d.feed(stream[i : i + size])
        got += d.flush()
        assert got == expected, size
    d = SSEDecoder()
    assert d.feed(b"data: tail-without-blank-line") == [] and d.flush() == [
        (None, b"tail-without-blank-line")
    ]


def test_usage_helpers() -> None:
    body = {"model": "m", "messages": [], "stream_options": {"foo": 1}}
    out = with_stream_usage(body)
    assert out["stream"] is True and out["stream_options"] == {"foo": 1, "include_usage": True}
    assert body == {"model": "m", "messages": [], "stream_options": {"foo": 1}}
    assert not client_wants_usage(body) and client_wants_usage(out)
    assert is_usage_chunk({"choices": [], "usage": {"prompt_tokens": 1}})
    assert not is_usage_chunk({"choices": [{"delta": {}}], "usage": None})
