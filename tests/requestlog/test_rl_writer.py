"""DbWriter on PostgreSQL: a batch is one INSERT statement per table, so statement-level
triggers (the admin rollups) run once per batch, and re-sent rows stay counted once."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from requestlog.codec import to_record
from requestlog.writer import DbWriter, make_engine
from tests.support.requestlog import make_request, scalar

_COUNTER = (
    "CREATE TABLE {name} (tbl text, fired int, rows_inserted int)",
    """CREATE FUNCTION {name}_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO {name} SELECT TG_TABLE_NAME, 1, count(*) FROM new_rows;
  RETURN NULL;
END $$""",
    "CREATE TRIGGER {name}_req AFTER INSERT ON requests REFERENCING NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION {name}_fn()",
    "CREATE TRIGGER {name}_att AFTER INSERT ON attempts REFERENCING NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION {name}_fn()",
)


async def test_postgres_batch_is_one_statement_per_table_and_resends_insert_nothing(
    pg_log_url: str,
) -> None:
    name = f"stmt_counter_{uuid.uuid4().hex[:8]}"
    engine = make_engine(pg_log_url)
    try:
        async with engine.begin() as conn:
            for statement in _COUNTER:
                await conn.exec_driver_sql(statement.format(name=name))
        p = f"w{uuid.uuid4().hex[:10]}"
        records = [to_record(*make_request(f"{p}-{i}", 1 + i % 3)) for i in range(40)]
        writer = DbWriter(engine)
        assert (await writer.write(records)).written == 40
        assert (await writer.write(records[:10])).written == 10  # a replay: already there
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f"DROP TRIGGER {name}_req ON requests")
            await conn.exec_driver_sql(f"DROP TRIGGER {name}_att ON attempts")
        rows = await scalar(
            pg_log_url,
            f"SELECT json_agg(json_build_array(tbl, fired, rows_inserted) ORDER BY tbl) FROM {name}",
        )
        n_attempts = sum(len(a) for _, a in records)
        # first batch: once per table, with every row; the replay: once per table, inserting none
        assert sorted(map(tuple, rows)) == [
            ("attempts", 1, 0),
            ("attempts", 1, n_attempts),
            ("requests", 1, 0),
            ("requests", 1, 40),
        ]
        assert await scalar(pg_log_url, "SELECT count(*) FROM requests WHERE id LIKE :p", p=f"{p}-%") == 40
    finally:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
            await conn.execute(sa.text(f"DROP FUNCTION IF EXISTS {name}_fn"))
        await engine.dispose()
