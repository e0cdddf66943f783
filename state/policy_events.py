"""Policy change notifications over Redis pub/sub: the push half of policy hot reload.

Every gateway process polls the policy store (`PolicyRegistry.run_reload_loop`); on its own that
makes a change live everywhere within the poll interval, at the price of every process querying
the database every interval. With Redis configured, the process that makes a change also
announces it here, and every process subscribed reloads at once (milliseconds instead of up to
one interval), so polling can relax to a safety net.

Pub/sub is at-most-once: a message published while a subscriber is reconnecting, or a publish
that fails because Redis is down, is simply lost. Hence the rules:

- publishing never raises (the change is already committed to the database; polling will carry
  it), it logs a warning;
- a subscriber reloads once every time its subscription (re)starts, to catch what it missed
  while disconnected;
- `RedisPolicyEvents.live` is True only while the subscription is known to work (it answers a
  PING at least every ``dead_after_s``), so the poll loop returns to its full rate as soon as
  the push path is in doubt, including a silently dead connection that never reports an error.

This module knows nothing about policies beyond a name and a version: the reload is a callback,
so `state/` does not import `policies/` (and `policies/` does not import Redis). The same class
carries API key changes on their own channel (`gateway.keys.KeyStore`: revocations reach every
process in milliseconds; ``what`` names the subject in log lines).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from common.errors import error_text
from state.redis_util import REDIS_ERRORS

log = logging.getLogger("hybridgate.state")


class RedisPolicyEvents:
    """Publishes policy changes and subscribes to everyone's (one object per process).

    ``client`` may be the shared fail-fast client (`make_redis`): publishing is one short command,
    and the subscription takes one connection from its pool for as long as it lives. Reads on the
    subscription always pass an explicit timeout, so the client's short socket timeout does not
    apply to waiting for messages.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        channel: str = "hg:policies",
        ping_interval_s: float = 1.0,
        dead_after_s: float = 3.0,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 2.0,
        rng: random.Random | None = None,
        what: str = "policy",
    ) -> None:
        self.client = client
        self.what = what
        self.channel = channel
        self.ping_interval_s = ping_interval_s
        self.dead_after_s = dead_after_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.origin = uuid.uuid4().hex  # tells this process's own messages apart
        self._rng = rng or random.Random()
        self._live = False
        # observability and tests
        self.published = 0
        self.publish_failures = 0
        self.received = 0
        self.subscriptions = 0  # successful (re)subscriptions

    @property
    def live(self) -> bool:
        """True while the subscription is up and answering: changes arrive by push right now."""
        return self._live

    # ---- publishing ------------------------------------------------------------------------------

    async def changed(self, name: str, active_version: int | None) -> None:
        """Announce that policy ``name`` changed (its active version is now ``active_version``).

        Never raises: the change is already in the database, and every process's store polling
        picks it up within its interval even if this message never leaves.
        """
        message = json.dumps({"name": name, "version": active_version, "origin": self.origin})
        try:
            await self.client.publish(self.channel, message)
        except REDIS_ERRORS as exc:
            self.publish_failures += 1
            log.warning(
                "%s %s v%s: change not announced (Redis: %s: %s); other processes will see it "
                "by polling the store",
                self.what,
                name,
                active_version,
                type(exc).__name__,
                exc,
            )
        else:
            self.published += 1

    # ---- subscribing -----------------------------------------------------------------------------

    async def run(self, on_change: Callable[[], Awaitable[Any]], stop: asyncio.Event | None = None) -> None:
        """Call ``on_change()`` for every change another process announces, until ``stop`` is set
        (or the task is cancelled). Reconnects with capped, jittered exponential backoff when Redis
        drops, so many processes do not reconnect in lockstep; ``on_change`` errors are logged and
        the subscription carries on (polling retries the reload)."""
        stop = stop or asyncio.Event()
        backoff = self.backoff_initial_s
        was_down = False
        while not stop.is_set():
            pubsub = self.client.pubsub()
            try:
                await self._subscribe(pubsub)
                self._live = True
                self.subscriptions += 1
                if was_down:
                    log.warning("policy events: subscribed to %s again", self.channel)
                was_down = False
                backoff = self.backoff_initial_s
                await self._reload(on_change)  # whatever changed while we were not listening
                await self._listen(pubsub, on_change, stop)
            except REDIS_ERRORS as exc:
                if not was_down:
                    log.warning(
                        "policy events: subscription to %s lost (%s: %s); polling the policy store "
                        "at full rate until it is back",
                        self.channel,
                        type(exc).__name__,
                        exc,
                    )
                was_down = True
            finally:
                self._live = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            if stop.is_set():
                break
            delay = backoff * self._rng.uniform(0.5, 1.0)
            backoff = min(backoff * 2, self.backoff_max_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    async def _subscribe(self, pubsub: PubSub) -> None:
        """Subscribe and wait for the server's confirmation: only then are messages delivered."""
        await pubsub.subscribe(self.channel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.dead_after_s
        while (remaining := deadline - loop.time()) > 0:
            msg = await pubsub.get_message(timeout=remaining)
            if msg is not None and msg["type"] == "subscribe":
                return
        raise TimeoutError(f"no confirmation of SUBSCRIBE {self.channel} within {self.dead_after_s} s")

    async def _listen(
        self, pubsub: PubSub, on_change: Callable[[], Awaitable[Any]], stop: asyncio.Event
    ) -> None:
        """Handle messages; when the channel is quiet, PING so a dead connection is noticed within
        ``dead_after_s`` (TCP alone may take minutes to report a peer that vanished).

        Silence is counted in waits for a message that came back empty, not only in time since
        the last one: when this process is the slow party (a busy event loop, a long reload, CPU
        starvation), a reply that arrived meanwhile is still unread in the buffer, and one wait
        that overran by seconds is still one ``ping_interval_s`` of listening. Dead means both:
        more than ``dead_after_s`` since anything was heard, and more than ``dead_after_s`` of
        actual listening without a reply.
        """
        loop = asyncio.get_running_loop()
        last_heard = loop.time()
        empty_waits = 0
        while not stop.is_set():
            msg = await pubsub.get_message(timeout=self.ping_interval_s)
            now = loop.time()
            if msg is not None:
                last_heard = now
                empty_waits = 0
                if msg["type"] == "message" and self._from_elsewhere(msg["data"]):
                    self.received += 1
                    await self._reload(on_change)
                continue
            empty_waits += 1
            silent_s = now - last_heard
            if silent_s > self.dead_after_s and empty_waits * self.ping_interval_s > self.dead_after_s:
                raise TimeoutError(f"no reply from Redis for {silent_s:.1f} s ({empty_waits} empty waits)")
            await pubsub.ping()

    def _from_elsewhere(self, data: Any) -> bool:
        """False for this process's own announcements (its registry already has the change)."""
        try:
            return json.loads(data).get("origin") != self.origin
        except (ValueError, TypeError, AttributeError):
            return True  # not ours to judge: reloading is idempotent

    @staticmethod
    async def _reload(on_change: Callable[[], Awaitable[Any]]) -> None:
        try:
            await on_change()
        except Exception as exc:  # the database may be down; the poll loop retries
            log.warning("policy events: reload after a change notification failed: %s", error_text(exc))
