"""Conversions of log rows: dataclass -> insert parameters, and to/from spool lines.

The unit everywhere is a *record*: one request with its attempts, i.e. what one
``LogSink.record()`` call received. Spool lines hold one record each, so a torn or corrupt
line loses nothing but itself, and replays keep a request together with its attempts.

Datetimes are written as ISO 8601 text and parsed back by field (the dataclass annotations say
which fields are datetimes), so they round-trip exactly, offset included.
"""

from __future__ import annotations

import json
import operator
import typing
from dataclasses import MISSING, fields
from datetime import datetime
from typing import Any

import orjson

from .rows import AttemptRow, RequestRow

Params = dict[str, Any]
"""Insert parameters of one row: column name -> value."""

Record = tuple[Params, list[Params]]
"""One request's parameters with its attempts' parameters."""

SPOOL_FORMAT = 1


class _RowSpec:
    """Field layout of one row dataclass, computed once (no per-row reflection)."""

    def __init__(self, cls: type) -> None:
        self.names: tuple[str, ...] = tuple(f.name for f in fields(cls))
        self.getter = operator.attrgetter(*self.names)
        hints = typing.get_type_hints(cls)
        self.datetime_fields: tuple[str, ...] = tuple(
            name for name in self.names if datetime in (hints[name], *typing.get_args(hints[name]))
        )
        self.defaults: Params = {}
        for f in fields(cls):
            if f.default is not MISSING:
                self.defaults[f.name] = f.default
            elif f.default_factory is not MISSING:
                self.defaults[f.name] = None
        self.required: frozenset[str] = frozenset(n for n in self.names if n not in self.defaults)

    def params(self, row: Any) -> Params:
        return dict(zip(self.names, self.getter(row), strict=True))

    def from_json(self, data: dict[str, Any]) -> Params:
        """Parameters from a decoded spool dict: unknown keys dropped, missing ones defaulted."""
        missing = self.required.difference(data)
        if missing:
            raise ValueError(f"spool record lacks required fields {sorted(missing)}")
        out = {name: data.get(name, self.defaults.get(name)) for name in self.names}
        for name in self.datetime_fields:
            value = out[name]
            if isinstance(value, str):
                out[name] = datetime.fromisoformat(value)
        return out


REQUEST = _RowSpec(RequestRow)
ATTEMPT = _RowSpec(AttemptRow)


def to_record(request: RequestRow, attempts: list[AttemptRow]) -> Record:
    """Insert parameters of one ``record()`` call."""
    return REQUEST.params(request), [ATTEMPT.params(a) for a in attempts]


def _default(obj: Any) -> Any:
    # Anything orjson cannot encode natively (Decimal, sets, custom objects in metadata):
    # keep it as text rather than lose the whole record.
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


_ORJSON_OPTS = orjson.OPT_NON_STR_KEYS


def dumps_json(obj: Any) -> str:
    """JSON text for JSON columns; never fails on odd values inside ``metadata``."""
    try:
        return orjson.dumps(obj, default=_default, option=_ORJSON_OPTS).decode()
    except (TypeError, orjson.JSONEncodeError):  # e.g. integers beyond 64 bits
        return json.dumps(obj, default=_default)


def encode_record(record: Record) -> bytes:
    """One spool line (with its trailing newline)."""
    request, attempts = record
    obj = {"v": SPOOL_FORMAT, "r": request, "a": attempts}
    try:
        line = orjson.dumps(obj, default=_default, option=_ORJSON_OPTS)
    except (TypeError, orjson.JSONEncodeError):
        line = json.dumps(obj, default=_jsondefault_with_dates, separators=(",", ":")).encode()
    return line + b"\n"


def _jsondefault_with_dates(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat()
    return _default(obj)


def decode_record(line: bytes) -> Record:
    """Parse one spool line back into insert parameters; raises ValueError when corrupt."""
    obj = orjson.loads(line)
    if not isinstance(obj, dict) or obj.get("v") != SPOOL_FORMAT:
        raise ValueError("not a spool record of a known format")
    return REQUEST.from_json(obj["r"]), [ATTEMPT.from_json(a) for a in obj["a"]]


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {str(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _scrub_params(params: Params) -> Params:
    out = {k: _scrub(v) for k, v in params.items()}
    if out.get("metadata") is not None:
        # force plain JSON types (a datetime or a custom object inside metadata becomes text)
        out["metadata"] = orjson.loads(dumps_json(out["metadata"]))
    return out


def sanitize_record(record: Record) -> Record:
    """A last-chance variant of a record the database refused: NUL characters (which
    PostgreSQL text cannot hold) replaced, ``metadata`` reduced to plain JSON values."""
    request, attempts = record
    return _scrub_params(request), [_scrub_params(a) for a in attempts]
