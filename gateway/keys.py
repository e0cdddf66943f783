"""Gateway API keys: created once, shown once, stored only as a SHA-256 hash.

Keys are 256 random bits, so a fast hash is enough (no password stretching needed: there is
nothing to brute-force); the hash is what the database holds and what lookups use. The
cleartext key exists only in the create call's return value.
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

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "key_prefix": self.key_prefix,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "allowed_models": self.allowed_models, "budget_usd": self.budget_usd,
            "budget_period": self.budget_period, "rpm_limit": self.rpm_limit, "tpm_limit": self.tpm_limit,
            "max_concurrency": self.max_concurrency, "user": self.user, "team": self.team,
            "metadata": self.metadata,
        }


def _row_to_key(row: Any) -> ApiKey:
    m = row._mapping
    created = m["created_at"]
    revoked = m["revoked_at"]
    return ApiKey(
        id=m["id"], name=m["name"], key_prefix=m["key_prefix"],
        created_at=created if created.tzinfo else created.replace(tzinfo=UTC),
        revoked_at=(revoked if revoked is None or revoked.tzinfo else revoked.replace(tzinfo=UTC)),
        allowed_models=m["allowed_models"], budget_usd=m["budget_usd"], budget_period=m["budget_period"],
        rpm_limit=m["rpm_limit"], tpm_limit=m["tpm_limit"], max_concurrency=m["max_concurrency"],
        user=m["user"], team=m["team"], metadata=m["metadata"] or {},
    )


class KeyStore:
    """CRUD over the api_keys table, with a small cache so the request path rarely touches the DB.

    A change made through this store (revoke, update) takes effect here at once and is announced
    through ``notifier`` (Redis pub/sub): every process subscribed calls :meth:`invalidate` within
    milliseconds. Positive entries live `ttl_s`, the fallback when the announcement is lost (no
    Redis, or Redis down). Unknown hashes are cached briefly too, so a client hammering with a bad
    key cannot hammer the database.
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
        values = rec.public() | {"key_hash": hash_key(secret), "created_at": rec.created_at, "revoked_at": None}
        async with self._engine.begin() as conn:
            await conn.execute(api_keys.insert().values(**values))
        return secret, rec

    async def list(self) -> list[ApiKey]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(sa.select(api_keys).order_by(api_keys.c.created_at))).all()
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
        """The active key for this cleartext, or None (unknown or revoked)."""
        h = hash_key(secret)
        now = time.monotonic()
        hit = self._cache.get(h)
        if hit is not None and hit[0] > now:
            return hit[1]
        generation = self._generation
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(api_keys).where(api_keys.c.key_hash == h))).first()
        rec = _row_to_key(row) if row else None
        if rec is not None and not rec.active:
            rec = None
        if generation != self._generation:
            return rec  # a change was announced while we read: do not cache what may predate it
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[h] = (now + (self._ttl if rec else self._neg_ttl), rec)
        return rec
