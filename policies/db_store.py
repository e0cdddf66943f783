"""`PolicyStore` over the ``policies`` / ``policy_active`` / ``policy_retirements`` tables
(SQLAlchemy async Core).

Works on PostgreSQL and SQLite (the tables come from `requestlog.tables`; migrations create
them). The ``(name, version)`` primary key is what turns two processes writing the same version
at once into a `VersionConflict` for one of them instead of a lost update. A retirement deletes
the ``policy_active`` row and records itself in one transaction, so every process that polls sees
both or neither.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from policies.registry import Retirement, StoredPolicy, VersionConflict
from requestlog.tables import policies as policies_table
from requestlog.tables import policy_active as active_table
from requestlog.tables import policy_retirements as retirements_table


class DbPolicyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def load(self) -> tuple[list[StoredPolicy], dict[str, int], list[Retirement]]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(sa.select(policies_table))).mappings().all()
            active = (await conn.execute(sa.select(active_table.c.name, active_table.c.version))).all()
            retired = (await conn.execute(
                sa.select(retirements_table).order_by(retirements_table.c.retired_at, retirements_table.c.id)
            )).mappings().all()
        stored = [
            StoredPolicy(
                name=r["name"],
                version=r["version"],
                spec_yaml=r["spec_yaml"],
                created_at=r["created_at"],
                created_by=r["created_by"],
                comment=r["comment"],
            )
            for r in rows
        ]
        retirements = [Retirement(r["name"], r["version"], r["retired_at"], r["retired_by"]) for r in retired]
        return stored, {name: version for name, version in active}, retirements

    async def insert(self, row: StoredPolicy) -> None:
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    policies_table.insert().values(
                        name=row.name,
                        version=row.version,
                        spec_yaml=row.spec_yaml,
                        created_at=row.created_at,
                        created_by=row.created_by,
                        comment=row.comment,
                    )
                )
        except IntegrityError as exc:
            raise VersionConflict(f"{row.name} v{row.version} exists") from exc

    async def set_active(self, name: str, version: int) -> None:
        # Portable upsert: update, insert when nothing was there; a concurrent insert of the same
        # name loses to the primary key and is retried as an update.
        for _ in range(2):
            try:
                async with self._engine.begin() as conn:
                    res = await conn.execute(
                        active_table.update().where(active_table.c.name == name).values(version=version)
                    )
                    if res.rowcount == 0:
                        await conn.execute(active_table.insert().values(name=name, version=version))
                return
            except IntegrityError:
                continue
        raise RuntimeError(f"could not set active version of {name}")

    async def retire(self, name: str, retired_at: datetime, retired_by: str | None) -> Retirement | None:
        async with self._engine.begin() as conn:
            version = (await conn.execute(
                active_table.delete().where(active_table.c.name == name).returning(active_table.c.version)
            )).scalar_one_or_none()
            if version is None:
                return None
            await conn.execute(retirements_table.insert().values(
                name=name, version=version, retired_at=retired_at, retired_by=retired_by))
        return Retirement(name, version, retired_at, retired_by)
