"""Half-open probe slots across a Redis outage: a probe whose end Redis missed frees its slot for every
process as soon as Redis answers again (not after probe_timeout_s), and a give-back sent again never
frees a slot another probe holds (real Redis; process a reaches it through a cuttable proxy)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from router.breaker import BreakerConfig
from state.breakers import RedisBreakerStore
from state.redis_util import make_redis
from tests.support.redis import Clock, delete_keys
from tests.support.requestlog import TcpProxy

CFG = BreakerConfig(consecutive_failures=1, cooldown_s=5, half_open_probes=1, successes_to_close=1,
                    probe_timeout_s=30)


@dataclass
class Processes:
    """Two gateway processes sharing breakers: ``a`` reaches Redis through ``proxy``, ``b`` directly;
    ``watcher`` is a third that only asks for probe slots."""

    a: RedisBreakerStore
    b: RedisBreakerStore
    watcher: RedisBreakerStore
    proxy: TcpProxy
    clock: Clock


@pytest.fixture()
async def procs(redis_url: str, redis_prefix: str) -> AsyncIterator[Processes]:
    proxy = TcpProxy("127.0.0.1", urlsplit(redis_url).port or 6379)
    await proxy.start()
    via_proxy = make_redis(f"redis://127.0.0.1:{proxy.port}/0", timeout_s=0.5, connect_timeout_s=0.5)
    direct: aioredis.Redis = make_redis(redis_url, timeout_s=5.0, connect_timeout_s=5.0)
    clock = Clock()
    # retry_after_s=0: the guard never keeps a off Redis, so what a sees is the proxy's doing alone
    a = RedisBreakerStore(via_proxy, prefix=redis_prefix, config=CFG, clock=clock, retry_after_s=0.0)
    b = RedisBreakerStore(direct, prefix=redis_prefix, config=CFG, clock=clock)
    watcher = RedisBreakerStore(direct, prefix=redis_prefix, config=CFG, clock=clock)
    await b.record("d", False)  # opens
    clock.t += CFG.cooldown_s  # half-open: one probe at a time
    try:
        yield Processes(a, b, watcher, proxy, clock)
    finally:
        await via_proxy.aclose()
        await direct.aclose()
        await proxy.close()
        await delete_keys(redis_url, redis_prefix)


@pytest.mark.parametrize("end", ["record", "release"])
async def test_a_probe_that_ended_while_redis_was_unreachable_frees_its_slot_once_redis_answers(
    procs: Processes, end: str
) -> None:
    """The probe's process lost Redis mid-probe: its outcome (or release) could not reach Redis, so
    the shared slot stays taken through the outage; once Redis answers, the next ``maintain`` round
    gives it back, and any process may probe, long before probe_timeout_s."""
    p = procs
    probe = await p.a.allow("d")
    assert probe and probe.probe is not None and not await p.watcher.allow("d")
    await p.proxy.cut()
    if end == "record":
        await p.a.record("d", True, 20.0, probe.probe)  # answered from a's own breaker
    else:
        await p.a.release("d", probe.probe)
    assert p.a.guard.degraded
    await p.a.maintain()  # Redis still unreachable: kept for later
    assert not await p.watcher.allow("d")  # the shared slot is still taken
    await p.proxy.restore()
    back = time.monotonic()
    await p.a.maintain()
    freed = await p.watcher.allow("d")
    assert freed and freed.probe is not None  # a new probe, in another process
    assert time.monotonic() - back < 5.0 and p.clock.t < 1_715_774_400.0 + CFG.cooldown_s + CFG.probe_timeout_s
    assert await p.b.state("d") == "half_open"  # only the slot came back: the stale verdict was not replayed
    assert await p.b.record("d", True, 20.0, freed.probe) == "closed"


async def test_a_give_back_that_landed_but_whose_answer_was_lost_frees_no_other_probe_when_retried(
    procs: Processes,
) -> None:
    """Redis ran a's release, but the answer never came back: a cannot tell, so it retries the
    give-back once Redis answers. Meanwhile b took the slot; the retry must not free b's probe
    (a blind retry would, and a third process would then probe beside b)."""
    p = procs
    probe = await p.a.allow("d")
    assert probe and probe.probe is not None
    p.proxy.replies_dropped = True
    await p.a.release("d", probe.probe)  # runs in Redis; a times out waiting for the answer
    assert p.a.guard.degraded
    p.proxy.replies_dropped = False
    taken = await p.b.allow("d")
    assert taken and taken.probe is not None  # a's release did land
    await p.a.maintain()  # the retried give-back
    await p.a.maintain()
    assert not await p.watcher.allow("d")  # b still holds the only probe slot
    assert await p.b.state("d") == "half_open"
    assert await p.b.record("d", True, 20.0, taken.probe) == "closed"


async def test_a_give_back_retried_after_its_slot_expired_frees_no_other_probe(procs: Processes) -> None:
    """a's release never reached Redis; before Redis answered again a's slot expired and b probes
    in its place. a's retried give-back then finds its own slot gone and leaves b's alone."""
    p = procs
    probe = await p.a.allow("d")
    assert probe and probe.probe is not None
    await p.proxy.cut()
    p.clock.t += 1
    await p.a.release("d", probe.probe)  # Redis missed it: kept for maintain
    p.clock.t += CFG.probe_timeout_s - 0.5  # a's slot has expired in Redis; the kept give-back has not
    taken = await p.b.allow("d")
    assert taken and taken.probe is not None
    await p.proxy.restore()
    await p.a.maintain()
    assert not await p.watcher.allow("d")  # b still holds the only probe slot
    assert await p.b.record("d", True, 20.0, taken.probe) == "closed"


async def test_an_allow_whose_answer_was_lost_gives_back_the_slot_it_may_have_taken(procs: Processes) -> None:
    """The allow script took a slot but its answer never reached a, which went on with its own
    breaker: the slot Redis holds for nobody is given back once Redis answers, not after the timeout."""
    p = procs
    assert await p.a.state("d") == "half_open"  # a's connection is up: what it sends next reaches Redis
    p.proxy.replies_dropped = True
    await p.a.allow("d")  # Redis took the slot; a answered from its own state
    assert p.a.guard.degraded
    p.proxy.replies_dropped = False
    assert not await p.watcher.allow("d")  # the slot is taken, by nobody
    await p.a.maintain()
    freed = await p.watcher.allow("d")
    assert freed and freed.probe is not None


async def test_a_probe_admitted_from_local_state_that_ends_after_redis_returns_frees_its_local_slot(
    procs: Processes,
) -> None:
    """During an outage a's own breaker opened and admitted a local probe; the probe ends once Redis is
    back (its outcome goes to Redis). Its local slot is given back too, so in the next outage a's
    breaker may probe at once instead of waiting out the probe timeout."""
    p = procs
    await p.proxy.cut()
    assert await p.a.record("d", False) == "open"  # a's own breaker, while Redis is unreachable
    p.clock.t += CFG.cooldown_s
    local = await p.a.allow("d")
    assert local and local.probe is not None  # a probe slot of a's own breaker
    await p.proxy.restore()
    await p.a.record("d", True, 20.0, local.probe)
    assert not p.a.guard.degraded  # the outcome went to Redis
    await p.proxy.cut()
    again = await p.a.allow("d")  # the next outage: a's own breaker is still half-open
    assert again and again.probe is not None
