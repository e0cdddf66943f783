"""Cost in USD of an upstream call, and per-deployment defaults (prices, context window).

Prices come from the deployment's `Pricing` when it sets them (field by field), else, for a
``litellm`` deployment, from litellm's cost map, else 0; its context window and output limit likewise
(else the config's default window, and no output limit). Only a litellm deployment names its model as
the map does (a provider's model, ``openai/gpt-4o``): an ``openai_compatible`` one is a server of its own
(vLLM, SGLang) whose model id may well be a map key (``gpt-4o`` behind a private proxy, a self-hosted model listed under a
hosting provider's name), and it takes no one else's price or limits unless its config gives them.

The cost map is the JSON file that ships inside the litellm package
(``model_prices_and_context_window_backup.json``, the same data as ``litellm.model_cost``). It
is read directly — located with `importlib.util.find_spec`, which does not import the package —
because importing litellm costs seconds and 100+ MB, which the gateway would otherwise pay just to read
prices. It is loaded lazily, once (~3 MB of JSON), and every lookup is cached, so `cost_usd` is cheap
enough for the per-request path.

`cost_usd(cfg, usage)` has the executor's `Pricer` signature; `with_cost_map_limits(cfg)` is the
deployment as the gateway serves it, with the context window and output limit the config leaves unset.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import orjson

from backends.base import Usage
from common.types import DeploymentConfig

__all__ = [
    "COST_MAP_FILENAME",
    "Prices",
    "context_window",
    "cost_map_entry",
    "cost_map_path",
    "cost_usd",
    "load_cost_map",
    "lookup_model",
    "max_output_tokens",
    "price_table",
    "resolve_prices",
    "with_cost_map_limits",
]

COST_MAP_FILENAME = "model_prices_and_context_window_backup.json"


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per million tokens, and where each number came from."""

    input_per_mtok: float
    output_per_mtok: float
    source: Literal["config", "cost_map", "mixed", "none"] = "none"

    def cost(self, usage: Usage) -> float:
        return (
            usage.prompt_tokens * self.input_per_mtok + usage.completion_tokens * self.output_per_mtok
        ) / 1e6


def cost_map_path() -> Path | None:
    """Path of the cost map inside the installed litellm package, without importing litellm."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / COST_MAP_FILENAME
        if p.is_file():
            return p
    return None


@functools.lru_cache(maxsize=1)
def load_cost_map() -> Mapping[str, Mapping[str, Any]]:
    """The cost map (read-only), or an empty map when litellm is not installed."""
    path = cost_map_path()
    if path is None:
        return MappingProxyType({})
    data = orjson.loads(path.read_bytes())
    data.pop("sample_spec", None)
    return MappingProxyType(data)


@functools.lru_cache(maxsize=4096)
def lookup_model(upstream_model: str) -> Mapping[str, Any] | None:
    """Cost-map entry of a model string: exact key, then without a ``provider/`` prefix."""
    cmap = load_cost_map()
    entry = cmap.get(upstream_model)
    if entry is None and "/" in upstream_model:
        # 'anthropic/x' may use anthropic's 'x'; 'hosted_vllm/x' must not be priced as someone else's 'x'
        provider, rest = upstream_model.split("/", 1)
        candidate = cmap.get(rest)
        if candidate is not None and (provider == "openai" or candidate.get("litellm_provider") == provider):
            entry = candidate
    return entry


def cost_map_entry(cfg: DeploymentConfig) -> Mapping[str, Any] | None:
    """The cost-map entry a deployment takes its defaults from: its upstream model's, for a ``litellm``
    deployment only (see the module's docstring); None for any other."""
    return lookup_model(cfg.upstream_model) if cfg.provider == "litellm" else None


@functools.lru_cache(maxsize=4096)
def _map_prices(upstream_model: str) -> tuple[float, float] | None:
    entry = lookup_model(upstream_model)
    if entry is None:
        return None
    inp = entry.get("input_cost_per_token")
    out = entry.get("output_cost_per_token")
    if not isinstance(inp, (int, float)) and not isinstance(out, (int, float)):
        return None
    return (float(inp or 0.0) * 1e6, float(out or 0.0) * 1e6)


def resolve_prices(
    cfg: DeploymentConfig, overrides: Mapping[str, tuple[float, float]] | None = None
) -> Prices:
    """Prices of a deployment: its config field by field, else `overrides[upstream_model]`, else the cost map
    (a litellm deployment only).

    `overrides` maps an upstream model string to (input, output) USD per million tokens: a site
    price list that should win over litellm's public one but not over a deployment's own config.
    """
    cfg_in, cfg_out = cfg.pricing.input_per_mtok, cfg.pricing.output_per_mtok
    if cfg_in is not None and cfg_out is not None:
        return Prices(cfg_in, cfg_out, "config")
    fallback = (overrides or {}).get(cfg.upstream_model) or (
        _map_prices(cfg.upstream_model) if cost_map_entry(cfg) is not None else None)
    if fallback is None:
        if cfg_in is None and cfg_out is None:
            return Prices(0.0, 0.0, "none")
        return Prices(cfg_in or 0.0, cfg_out or 0.0, "config")
    if cfg_in is None and cfg_out is None:
        return Prices(fallback[0], fallback[1], "cost_map")
    return Prices(
        cfg_in if cfg_in is not None else fallback[0],
        cfg_out if cfg_out is not None else fallback[1],
        "mixed",
    )


def cost_usd(cfg: DeploymentConfig, usage: Usage) -> float:
    """USD cost of `usage` on deployment `cfg` (the executor's `Pricer`)."""
    return resolve_prices(cfg).cost(usage)


def price_table(deployments: Iterable[DeploymentConfig]) -> dict[str, tuple[float, float]]:
    """{deployment name: (input, output) USD per million tokens} — e.g. for the router's signals."""
    out = {}
    for d in deployments:
        p = resolve_prices(d)
        out[d.name] = (p.input_per_mtok, p.output_per_mtok)
    return out


def context_window(cfg: DeploymentConfig) -> int:
    """Context window: the config's when set explicitly, else the cost map's max input (a litellm deployment
    only), else the config default."""
    if "context_window" in cfg.model_fields_set:
        return cfg.context_window
    entry = cost_map_entry(cfg)
    if entry is not None:
        for key in ("max_input_tokens", "max_tokens"):
            v = entry.get(key)
            if isinstance(v, int) and v > 0:
                return v
    return cfg.context_window


def max_output_tokens(cfg: DeploymentConfig) -> int | None:
    """Max output tokens: the config's, else the cost map's (a litellm deployment only), else None (unknown)."""
    if cfg.max_output_tokens is not None:
        return cfg.max_output_tokens
    entry = cost_map_entry(cfg)
    if entry is not None:
        v = entry.get("max_output_tokens")
        if isinstance(v, int) and v > 0:
            return v
    return None


def with_cost_map_limits(cfg: DeploymentConfig) -> DeploymentConfig:
    """The deployment with its context window and output limit from the cost map where the config leaves them
    unset (`context_window`, `max_output_tokens`; a litellm deployment only); ``cfg`` itself when nothing
    changes.

    The output limit comes along with the window: without it, the budget's worst case of a request without
    ``max_tokens`` is the whole (now larger) window, and a direct request may ask for more than the model
    can write. A cost-map output limit never exceeds the window in force (an explicit smaller one)."""
    window = context_window(cfg)
    out = cfg.max_output_tokens
    if out is None and (mapped := max_output_tokens(cfg)) is not None:
        out = min(mapped, window)
    if window == cfg.context_window and out == cfg.max_output_tokens:
        return cfg
    return cfg.model_copy(update={"context_window": window, "max_output_tokens": out})
