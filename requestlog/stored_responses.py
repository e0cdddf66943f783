"""Stored Responses API objects (table ``stored_responses``), beside the request log.

A stored response carries the conversation so far as chat messages (`history`), so a request with
`previous_response_id` continues it in any gateway process, also after a restart. Each response is
visible only to the API key that created it (anonymous responses to anonymous callers).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from requestlog.tables import stored_responses as t


@dataclass(slots=True, frozen=True)
class StoredResponse:
    id: str
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    history: list[dict[str, Any]]


class ResponseStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def put(
        self,
        rid: str,
        key_id: str | None,
        model: str,
        response: dict[str, Any],
        input_items: list[dict[str, Any]],
        history: list[dict[str, Any]],
    ) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                t.insert().values(
                    id=rid,
                    created_at=datetime.now(UTC),
                    api_key_id=key_id,
                    model=model,
                    response=response,
                    input_items=input_items,
                    history=history,
                )
            )

    def _owned(self, rid: str, key_id: str | None) -> sa.ColumnElement[bool]:
        owner = t.c.api_key_id.is_(None) if key_id is None else t.c.api_key_id == key_id
        return sa.and_(t.c.id == rid, owner)

    async def get(self, rid: str, key_id: str | None) -> StoredResponse | None:
        if "\x00" in rid:  # never stored (ids are generated), and Postgres refuses NUL in a query's text
            return None
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(t.c.id, t.c.response, t.c.input_items, t.c.history).where(
                        self._owned(rid, key_id)
                    )
                )
            ).first()
        if row is None:
            return None
        return StoredResponse(row.id, row.response, list(row.input_items), list(row.history))

    async def delete(self, rid: str, key_id: str | None) -> bool:
        if "\x00" in rid:
            return False
        async with self.engine.begin() as conn:
            result = await conn.execute(t.delete().where(self._owned(rid, key_id)))
        return bool(result.rowcount)
