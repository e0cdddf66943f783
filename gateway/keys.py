"""Gateway API keys: created once, shown once, stored only as a SHA-256 hash.

Keys are 256 random bits, so a fast hash is enough (no password stretching needed: there is
nothing to brute-force); the hash is what the database holds and what lookups use. The
cleartext key exists only in the create call's return value.

A key may carry an expiry (``expires_at``, UTC): from that instant on it is refused like a revoked
key, but with its own error, so its holder knows why. The row stays (as a revoked one does), and so
do its limits and the request log's rows that name it; an admin may extend the expiry later.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from requestlog.tables import api_keys

KEY_PREFIX = "hg-"


class KeyNotifier(Protocol):
    """Announces a key change to every other process (`state.policy_events.RedisPolicyEvents`)."""

    async def changed(self, name: str, active_version: int | None) -> None: ...


class KeyExpired(Exception):
    """The key exists and is not revoked, but its ``expires_at`` has passed."""

    def __init__(self, key_id: str, expires_at: datetime) -> None:
        super().__init__(f"key {key_id} expired at {expires_at.isoformat()}")
        self.key_id = key_id
        self.expires_at = expires_at


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(slots=True)
class ApiKey:
    """A key's record, as the request path needs it (never the key itself)."""

    id: str
    name: str
    key_prefix: str
    created_at: datetime
    revoked_at: datetime | None = None
    allowed_models: list[str] | None = None
    budget_usd: float | None = None
    budget_period: str | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_concurrency: int | None = None
    user: str | None = None
    team: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    expires_at: datetime | None = None  # UTC; None: never expires

    @property
    def active(self) -> bool:
        """Not revoked (an expired key is still active in this sense: an admin may extend it)."""
        return self.revoked_at is None

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or datetime.now(UTC))

    @property
    def status(self) -> str:
        """``revoked`` (final), ``expired`` (until an admin extends it) or ``active``."""
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expired() else "active"

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "key_prefix": self.key_prefix,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "status": self.status,
            "allowed_models": self.allowed_models, "budget_usd": self.budget_usd,
            "budget_period": self.budget_period, "rpm_limit": self.rpm_limit, "tpm_limit": self.tpm_limit,
            "max_concurrency": self.max_concurrency, "user": self.user, "team": self.team,
            "metadata": self.metadata,
        }


def _utc(value: Any) -> Any:
    """A stored timestamp as an aware UTC datetime (None stays None)."""
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def _row_to_key(row: Any) -> ApiKey:
    m = row._mapping
    return ApiKey(
        id=m["id"], name=m["name"], key_prefix=m["key_prefix"],
        created_at=_utc(m["created_at"]), revoked_at=_utc(m["revoked_at"]),
        expires_at=_utc(m["expires_at"]),
        allowed_models=m["allowed_models"], budget_usd=m["budget_usd"], budget_period=m["budget_period"],
        rpm_limit=m["rpm_limit"], tpm_limit=m["tpm_limit"], max_concurrency=m["max_concurrency"],
        user=m["user"], team=m["team"], metadata=m["metadata"] or {},
    )


class KeyStore:
    """CRUD over the api_keys table, with a small cache so the request path rarely touches the DB.

    A change made through this store (revoke, update) takes effect here at once and is announced
    through ``notifier`` (Redis pub/sub): every process subscribed calls :meth:`invalidate` within
    milliseconds. Positive entries live `ttl_s`, the fallback when the announcement is lost (no
    Redis, or Redis down), and never past the key's expiry: the next lookup after it reads the
    database, so an expiry extended by another process without Redis is seen then. Expiry needs no
    announcement: every lookup, cached or not, compares it with this process's clock. Unknown (and
    expired) hashes are cached briefly too, so a client hammering with a bad key cannot hammer the
    database.
    """

    def __init__(self, engine: AsyncEngine, ttl_s: float = 5.0, negative_ttl_s: float = 2.0,
                 notifier: KeyNotifier | None = None) -> None:
        self._engine = engine
        self._ttl = ttl_s
        self._neg_ttl = negative_ttl_s
        self._notifier = notifier
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._generation = 0  # bumped by every invalidation: a lookup begun before one is not cached

    async def invalidate(self) -> None:
        """Forget every cached key (another process changed one); the next lookups read the database."""
        self._generation += 1
        self._cache.clear()

    async def _changed(self, key_id: str) -> None:
        await self.invalidate()
        if self._notifier is not None:
            await self._notifier.changed(key_id, None)

    async def create(self, name: str, **limits: Any) -> tuple[str, ApiKey]:
        """Returns (cleartext key, record). The cleartext is not stored anywhere."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        rec = ApiKey(id=uuid.uuid4().hex[:16], name=name, key_prefix=secret[:10], created_at=datetime.now(UTC),
                     **limits)
        values = {k: v for k, v in rec.public().items() if k != "status"} | {
            "key_hash": hash_key(secret), "created_at": rec.created_at, "revoked_at": None,
            "expires_at": rec.expires_at}
        async with self._engine.begin() as conn:
            await conn.execute(api_keys.insert().values(**values))
        return secret, rec

    async def list(self, limit: int | None = None, before: str | None = None) -> list[ApiKey]:
        """Every key, oldest first; or, with ``limit``, at most that many, newest first, from the one
        created after the key whose id is ``before`` (the previous page's last; keys are never deleted,
        so a cursor stays valid). Raises KeyError for a ``before`` that names no key."""
        t = api_keys
        async with self._engine.connect() as conn:
            if limit is None:
                rows = (await conn.execute(sa.select(t).order_by(t.c.created_at, t.c.id))).all()
                return [_row_to_key(r) for r in rows]
            stmt = sa.select(t).order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit)
            if before is not None:
                at = (await conn.execute(sa.select(t.c.created_at).where(t.c.id == before))).scalar_one_or_none()
                if at is None:
                    raise KeyError(before)
                # (created_at, id) below the cursor's: keys created in the same instant are not skipped
                stmt = stmt.where(sa.or_(t.c.created_at < at, sa.and_(t.c.created_at == at, t.c.id < before)))
            rows = (await conn.execute(stmt)).all()
        return [_row_to_key(r) for r in rows]

    async def get(self, key_id: str) -> ApiKey | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id))).first()
        return _row_to_key(row) if row else None

    async def update(self, key_id: str, **limits: Any) -> ApiKey | None:
        """Change the given limits; the record as it is now, None for an unknown key. No limits
        given changes nothing (and announces nothing)."""
        if not limits:
            return await self.get(key_id)
        async with self._engine.begin() as conn:
            await conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(**limits))
        await self._changed(key_id)
        return await self.get(key_id)

    async def revoke(self, key_id: str) -> bool:
        async with self._engine.begin() as conn:
            res = await conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        await self._changed(key_id)
        return bool(res.rowcount)

    async def authenticate(self, secret: str) -> ApiKey | None:
        """The usable key for this cleartext, or None (unknown or revoked). Raises
        :class:`KeyExpired` for a key past its ``expires_at``."""
        h = hash_key(secret)
        now = time.monotonic()
        hit = self._cache.get(h)
        if hit is not None and hit[0] > now:
            return _unexpired(hit[1])
        generation = self._generation
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(api_keys).where(api_keys.c.key_hash == h))).first()
        rec = _row_to_key(row) if row else None
        if rec is not None and not rec.active:
            rec = None
        if generation != self._generation:
            return _unexpired(rec)  # a change was announced while we read: do not cache what may predate it
        if len(self._cache) > 10_000:
            self._cache.clear()
        ttl = self._ttl if rec is not None else self._neg_ttl
        if rec is not None and rec.expires_at is not None:
            left = (rec.expires_at - datetime.now(UTC)).total_seconds()
            ttl = min(ttl, left) if left > 0 else self._neg_ttl  # a usable key's entry ends at its expiry
        self._cache[h] = (now + ttl, rec)
        return _unexpired(rec)


def _unexpired(rec: ApiKey | None) -> ApiKey | None:
    """``rec``, unless it has expired by now: then :class:`KeyExpired`."""
    if rec is not None and rec.expires_at is not None and rec.expired():
        raise KeyExpired(rec.id, rec.expires_at)
    return rec
