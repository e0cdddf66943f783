"""The database vanishes from the network mid-traffic and comes back: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import random
import uuid
from pathlib import Path

import pytest

from requestlog import migrate
from requestlog.sink import LogSink
from tests.support.requestlog import TcpProxy, fetch, make_request, scalar


@pytest.mark.parametrize(
    "outages",
    [[(200, 400)], [(100, 130), (250, 252), (380, 520)]],
    ids=["one-long-outage", "flapping"],
)
async def test_outage_through_a_cut_proxy(
    fresh_pg_url: str, spool_dir: Path, outages: list[tuple[int, int]]
) -> None:
    migrate.upgrade(fresh_pg_url)
    database = fresh_pg_url.rsplit("/", 1)[1]
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    sink = LogSink(
        proxy.url(database),
        spool_dir=spool_dir,
        batch_max_rows=40,
        batch_max_ms=5,
        probe_initial_s=0.05,
        probe_max_s=0.2,
        write_timeout_s=5,
    )
    rng = random.Random(7)
    n = 600
    cuts = {start for start, _ in outages}
    restores = {end for _, end in outages}
    expected_attempts = 0
    stats_during_outage: dict[str, object] = {}
    try:
        await sink.start()
        for i in range(n):
            if i in cuts:
                await proxy.cut()
            if i in restores:
                stats_during_outage = sink.stats()
                await proxy.restore()
            k = rng.randint(1, 3)
            expected_attempts += k
            sink.record(*make_request(f"o{uuid.uuid4().hex}-{i}", k))
            if i % 10 == 0:
                await asyncio.sleep(0.005)  # traffic spread over time, so batches straddle the cut
        await sink.flush()  # probes now, replays the spool, then writes the rest
        final = sink.stats()
        await sink.aclose()
    finally:
        await proxy.close()

    assert stats_during_outage["db_up"] is False
    assert stats_during_outage["spooled"] > 0
    assert final["db_up"] is True and final["spool_pending"] is False, final
    assert final["replayed"] > 0 and final["rejected"] == 0 and final["dropped"] == 0, final
    assert proxy.connections_seen > 1  # it did reconnect after the cut

    assert await scalar(fresh_pg_url, "SELECT count(*) FROM requests") == n
    assert await scalar(fresh_pg_url, "SELECT count(DISTINCT id) FROM requests") == n
    assert await scalar(fresh_pg_url, "SELECT count(*) FROM attempts") == expected_attempts
    assert await scalar(fresh_pg_url, "SELECT count(DISTINCT id) FROM attempts") == expected_attempts
    # every request has exactly its attempts, none orphaned
    mismatched = await scalar(
        fresh_pg_url,
        "SELECT count(*) FROM requests r WHERE r.attempts_count <> "
        "(SELECT count(*) FROM attempts a WHERE a.request_id = r.id)",
    )
    assert mismatched == 0
    # Rows reached the database in the order they were recorded: spooled ones were replayed
    # before anything newer was written directly (xmin = id of the inserting transaction).
    rows = await fetch(fresh_pg_url, "SELECT id, xmin::text::bigint FROM requests")
    xmins = [x for _, x in sorted(rows, key=lambda r: int(r[0].rsplit("-", 1)[1]))]
    assert xmins == sorted(xmins)
    assert list(spool_dir.glob("seg-*")) == []
