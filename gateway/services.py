"""The parts one gateway app is made of, built and torn down by the app factory."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from backends.base import Backend
from gateway.config import Settings
from gateway.keys import KeyStore
from requestlog.sink import LogSink
from service.artifact_slots import ArtifactSlots
from service.cascade import Cascades
from service.executor import Executor
from service.feedback import FeedbackRecorder
from service.metrics import Metrics
from service.remote_load import RemoteLoadPoller
from service.routing import GatewayRouter
from state.instances import Heartbeat
from state.policy_events import RedisPolicyEvents


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
    redis: Redis | None  # the shared-state client, when Redis is configured
    remote_load: RemoteLoadPoller
    policy_events: RedisPolicyEvents | None
    artifacts: ArtifactSlots
    feedback: FeedbackRecorder
    cascades: Cascades
    key_events: RedisPolicyEvents | None  # API key changes pushed to every process (KeyStore's notifier)
    heartbeat: Heartbeat  # this process's row in gateway_instances
