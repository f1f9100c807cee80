"""Connection settings: our statement timeout is added to the operator's, never replaces them."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from passerelle.storage.db import StorageSettings, connect, open_pool

pytestmark = pytest.mark.integration


def _with_options(dsn: str, options: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    return psycopg.conninfo.make_conninfo(**{**info, "options": options})


def _shown(conn: psycopg.Connection, *names: str) -> list[str]:
    return [conn.execute(f"SHOW {name}").fetchone()[0] for name in names]


def test_the_dsn_options_are_kept_beside_the_statement_timeout(empty_db_dsn) -> None:
    dsn = _with_options(empty_db_dsn, "-c search_path=audit,public -c work_mem=8MB")
    with connect(dsn, StorageSettings(dsn=dsn, statement_timeout_ms=1234)) as conn:
        assert _shown(conn, "search_path", "work_mem", "statement_timeout") == [
            "audit,public", "8MB", "1234ms"]


def test_pgoptions_is_kept_when_the_dsn_has_none(empty_db_dsn, monkeypatch) -> None:
    monkeypatch.setenv("PGOPTIONS", "-c work_mem=6MB")
    with connect(empty_db_dsn, StorageSettings(statement_timeout_ms=2000)) as conn:
        assert _shown(conn, "work_mem", "statement_timeout") == ["6MB", "2s"]


def test_the_pool_keeps_them_too(empty_db_dsn) -> None:
    dsn = _with_options(empty_db_dsn, "-c work_mem=7MB")

    async def shown() -> list[str]:
        settings = StorageSettings(dsn=dsn, statement_timeout_ms=3000)
        async with open_pool(dsn, settings) as pool, pool.connection() as conn:
            return [(await (await conn.execute(f"SHOW {name}")).fetchone())[0]
                    for name in ("work_mem", "statement_timeout")]

    assert asyncio.run(shown()) == ["7MB", "3s"]
