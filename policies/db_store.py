"""`PolicyStore` over the ``policies`` / ``policy_active`` tables (SQLAlchemy async Core).

Works on PostgreSQL and SQLite (the tables come from `requestlog.tables`; migrations create
them). The ``(name, version)`` primary key is what turns two processes writing the same version
at once into a `VersionConflict` for one of them instead of a lost update.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from policies.registry import StoredPolicy, VersionConflict
from requestlog.tables import policies as policies_table
from requestlog.tables import policy_active as active_table


class DbPolicyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def load(self) -> tuple[list[StoredPolicy], dict[str, int]]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(sa.select(policies_table))).mappings().all()
            active = (await conn.execute(sa.select(active_table.c.name, active_table.c.version))).all()
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
        return stored, {name: version for name, version in active}

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
