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
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from requestlog.tables import api_keys

KEY_PREFIX = "hg-"


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

    Positive entries live `ttl_s` (a revocation from another process takes effect within it; one
    made through this store takes effect at once); unknown hashes are cached briefly too, so a
    client hammering with a bad key cannot hammer the database.
    """

    def __init__(self, engine: AsyncEngine, ttl_s: float = 5.0, negative_ttl_s: float = 2.0) -> None:
        self._engine = engine
        self._ttl = ttl_s
        self._neg_ttl = negative_ttl_s
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

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
        async with self._engine.begin() as conn:
            await conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(**limits))
        self._cache.clear()
        return await self.get(key_id)

    async def revoke(self, key_id: str) -> bool:
        async with self._engine.begin() as conn:
            res = await conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        self._cache.clear()
        return bool(res.rowcount)

    async def authenticate(self, secret: str) -> ApiKey | None:
        """The active key for this cleartext, or None (unknown or revoked)."""
        h = hash_key(secret)
        now = time.monotonic()
        hit = self._cache.get(h)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(api_keys).where(api_keys.c.key_hash == h))).first()
        rec = _row_to_key(row) if row else None
        if rec is not None and not rec.active:
            rec = None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[h] = (now + (self._ttl if rec else self._neg_ttl), rec)
        return rec
