"""Build live `Backend` objects from `DeploymentConfig`s, one factory per provider.

The factory table is built per call (`default_factories()`), not kept in a module global, so
tests and the gateway can pass their own table (e.g. one with a fake "local" factory) without
patching anything. Factories import their backend module lazily: building only
OpenAI-compatible deployments never imports litellm.

To add a provider (the in-process "local" model, later): write ``factory(cfg) -> Backend`` and
add it in `default_factories()`, or pass ``factories={**default_factories(), "local": f}``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from backends.base import Backend
from common.types import DeploymentConfig

__all__ = ["BackendFactory", "UnsupportedProviderError", "api_key_for", "build_backend", "default_factories"]

BackendFactory = Callable[[DeploymentConfig], Backend]


class UnsupportedProviderError(ValueError):
    """No factory is registered for a deployment's provider."""


def api_key_for(cfg: DeploymentConfig) -> str | None:
    """The upstream key from the env var named by ``api_key_env`` (None when the config names none, or
    the variable is unset or empty).

    A named but unset variable is not raised: one deployment missing its key must not stop the gateway
    from serving the others (its calls fail as kind "auth"); the gateway warns about it at start
    (`gateway.preflight`).
    """
    if not cfg.api_key_env:
        return None
    return os.environ.get(cfg.api_key_env) or None


def _openai_compatible(cfg: DeploymentConfig) -> Backend:
    from backends.openai_compatible import OpenAICompatibleBackend

    return OpenAICompatibleBackend.from_config(cfg, api_key=api_key_for(cfg))


def _litellm(cfg: DeploymentConfig) -> Backend:
    from backends.litellm_backend import LiteLLMBackend

    return LiteLLMBackend(cfg, api_key=api_key_for(cfg))


def _local(cfg: DeploymentConfig) -> Backend:
    """The in-process local model (backends.local_backend); torch is imported only when one is configured."""
    from backends.local_backend import build_local_backend

    try:
        return build_local_backend(cfg)
    except FileNotFoundError as exc:
        raise UnsupportedProviderError(f"deployment {cfg.name!r}: provider 'local': {exc}") from exc


def default_factories() -> dict[str, BackendFactory]:
    """A fresh provider → factory table (callers may extend their copy)."""
    return {
        "openai_compatible": _openai_compatible,
        "litellm": _litellm,
        "local": _local,
    }


def build_backend(cfg: DeploymentConfig, factories: Mapping[str, BackendFactory] | None = None) -> Backend:
    """The live backend for one deployment. Raises UnsupportedProviderError / ValueError on bad config."""
    table = factories if factories is not None else default_factories()
    factory = table.get(cfg.provider)
    if factory is None:
        raise UnsupportedProviderError(
            f"deployment {cfg.name!r}: unknown provider {cfg.provider!r} (known: {', '.join(sorted(table))})"
        )
    return factory(cfg)
