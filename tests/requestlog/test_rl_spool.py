"""The spool file format and segment lifecycle, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from requestlog.codec import decode_record, encode_record, sanitize_record, to_record
from requestlog.spool import REJECTED_FILE, Spool
from tests.support.requestlog import make_request


def _lines(prefix: str, n: int) -> list[bytes]:
    return [encode_record(to_record(*make_request(f"{prefix}-{i}", 1 + i % 3))) for i in range(n)]


def _ids(lines: list[bytes]) -> list[str]:
    return [decode_record(line)[0]["id"] for line in lines]


def _drain(spool: Spool, chunk: int = 7) -> list[str]:
    out: list[str] = []
    while (lines := spool.read_chunk(chunk)) is not None:
        out += _ids(lines)
        spool.commit()
    return out


def test_record_round_trips_exactly() -> None:
    plus2 = timezone(timedelta(hours=2))
    request, attempts = make_request(
        "rt-1",
        2,
        created_at=datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=plus2),
        cost_usd=0.1 + 0.2,  # not representable exactly: must survive as the same float
        metadata={"when": "x", "n": [1, 2.5, None, True], "deep": {"ü": "✓"}},
        request_body='{"messages": [{"role": "user", "content": "hi\\u0000"}]}',
    )
    attempts[0].started_at = datetime(2025, 1, 2, 3, 4, 5)  # naive stays naive
    record = to_record(request, attempts)
    back = decode_record(encode_record(record))
    assert back == record
    assert back[0]["created_at"].utcoffset() == timedelta(hours=2)
    assert back[1][0]["started_at"].tzinfo is None


def test_odd_metadata_values_are_kept_as_text() -> None:
    class Custom:
        def __str__(self) -> str:
            return "custom!"

    request, attempts = make_request(
        "odd-1", metadata={"obj": Custom(), 1: "int key", "big": 2**70, "set": {3}}
    )
    back = decode_record(encode_record(to_record(request, attempts)))
    assert back[0]["metadata"]["obj"] == "custom!"
    assert back[0]["metadata"]["1"] == "int key"
    assert back[0]["metadata"]["big"] == 2**70


def test_decoding_tolerates_added_and_missing_fields() -> None:
    import orjson

    request, attempts = to_record(*make_request("compat-1"))
    request = dict(request, some_future_field=1)
    del request["prompt_text"]  # written by an older version
    request["created_at"] = request["created_at"].isoformat()
    line = orjson.dumps({"v": 1, "r": request, "a": []}) + b"\n"
    back, atts = decode_record(line)
    assert "some_future_field" not in back
    assert back["prompt_text"] is None
    assert back["created_at"] == datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert atts == []


def test_sanitize_removes_nul_and_flattens_metadata() -> None:
    request, attempts = make_request("san-1", response_body="a\x00b", metadata={"t": datetime(2025, 1, 1)})
    clean, _ = sanitize_record(to_record(request, attempts))
    assert clean["response_body"] == "a\ufffdb"
    assert clean["metadata"] == {"t": "2025-01-01T00:00:00"}


def test_append_read_commit_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    assert not spool.pending and spool.read_chunk(10) is None
    spool.append(_lines("a", 5))
    spool.append(_lines("b", 5))
    assert spool.pending and spool.pending_records() == 10
    assert _drain(spool, 3) == [f"a-{i}" for i in range(5)] + [f"b-{i}" for i in range(5)]
    assert not spool.pending and spool.pending_records() == 0
    assert list(tmp_path.glob("seg-*")) == []  # confirmed segments are deleted
    spool.close()


def test_rotation_and_appends_during_replay_keep_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_segment_bytes=2000)  # a few records per segment
    spool.append(_lines("a", 10))
    spool.append(_lines("b", 10))
    spool.append(_lines("c", 10))
    assert len(list(tmp_path.glob("seg-*.jsonl"))) >= 2
    first = spool.read_chunk(4)
    assert first is not None
    spool.commit()
    spool.append(_lines("d", 3))  # arrives while replaying: goes behind
    rest = _drain(spool)
    got = _ids(first) + rest
    assert got == [f"{p}-{i}" for p in "abc" for i in range(10)] + [f"d-{i}" for i in range(3)]


def test_rollback_rereads_the_chunk(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(_lines("r", 6))
    first = spool.read_chunk(4)
    spool.rollback()
    again = spool.read_chunk(4)
    assert first == again
    spool.commit()
    assert _drain(spool) == ["r-4", "r-5"]


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    writer = Spool(tmp_path)
    writer.append(_lines("t", 3))
    writer.close()
    [segment] = tmp_path.glob("seg-*.jsonl")
    with segment.open("ab") as f:
        f.write(_lines("torn", 1)[0][:-10])  # crash in the middle of an append
    reader = Spool(tmp_path)
    assert _drain(reader) == ["t-0", "t-1", "t-2"]
    assert reader.torn_lines == 1
    assert not segment.exists()


def test_live_writer_segment_is_not_taken_by_another_spool(tmp_path: Path) -> None:
    """Two processes (here: two instances) sharing a directory never replay each other's open
    segment; once its owner closes it, anyone may replay it."""
    owner = Spool(tmp_path)
    owner.append(_lines("o", 4))
    other = Spool(tmp_path)
    assert other.read_chunk(10) is None  # locked by its live owner
    owner.close()
    other.rescan()
    assert _drain(other) == [f"o-{i}" for i in range(4)]
    other.close()


def test_leftover_spool_is_found_by_a_new_instance(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    first.append(_lines("old", 3))
    first.close()
    second = Spool(tmp_path)
    assert second.pending and second.pending_records() == 3
    second.append(_lines("new", 2))
    assert _drain(second) == ["old-0", "old-1", "old-2", "new-0", "new-1"]


def test_rejected_records_are_kept_apart(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.write_rejected([b'{"error":"x"}\n'])
    assert (tmp_path / REJECTED_FILE).read_bytes() == b'{"error":"x"}\n'
    assert not spool.pending  # never replayed
