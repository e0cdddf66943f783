"""The parts one gateway app is made of, built and torn down by the app factory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from backends.base import Backend
from backends.executor import Executor
from gateway.config import Settings
from gateway.keys import KeyStore
from gateway.metrics import Metrics
from requestlog.sink import LogSink
from service.routing import GatewayRouter


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    sink: LogSink
    keys: KeyStore
    metrics: Metrics
    router: GatewayRouter
    executor: Executor
    backends: dict[str, Backend]
    extras: dict[str, Any] = field(default_factory=dict)
