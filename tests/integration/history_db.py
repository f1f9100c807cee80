"""A database holding the generated fleet history, built once per test module.

The history (see passerelle.sim.history) ends on a fixed day so that tests are
deterministic; read-only tests share it, tests that change data build their own.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from datetime import date

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from passerelle.sim.history import HistorySpec, write_history

END = date(2026, 11, 21)  # the terminal replacement falls on 2026-11-07
SPEC = HistorySpec(terminals=6, days=30, end=END, seed=1)


@contextlib.contextmanager
def history_database(pg_dsn: str, template: str, spec: HistorySpec = SPEC,
                     bulk: bool = True) -> Iterator[str]:
    """A new database cloned from the migrated template, filled with `spec`'s history."""
    name = f"passerelle_hist_{secrets.token_hex(6)}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)))
    dsn = make_conninfo(pg_dsn, dbname=name)
    try:
        write_history(dsn, spec, bulk=bulk)
        yield dsn
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
