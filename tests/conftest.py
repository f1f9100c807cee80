"""Shared fixtures: a PostgreSQL server for the session, a fresh database for each test.

`pg_dsn` (session): a server-level DSN (database `postgres`), found in this order:
`PASSERELLE_TEST_DSN`, then 127.0.0.1:5432 as user postgres if it answers, else an embedded
server (passerelle.storage.embedded) started for the session and stopped after it.

`db_dsn` (function): a DSN to a freshly created, fully migrated database with a random name,
dropped after the test. It is cloned from a template migrated once per session, so a test
pays a file copy, not the migrations. `empty_db_dsn` is the same without the schema.

`embedded_state_dir` (function): an empty directory fit for `EmbeddedPostgres`, removed after.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

_LOCAL_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def _answers(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def _admin(pg_dsn: str) -> psycopg.Connection:
    return psycopg.connect(pg_dsn, autocommit=True, connect_timeout=10)


def _create_database(pg_dsn: str, prefix: str, template: str | None = None) -> str:
    name = f"{prefix}_{secrets.token_hex(6)}"
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with _admin(pg_dsn) as conn:
        conn.execute(query)
    return name


def _drop_database(pg_dsn: str, name: str) -> None:
    with _admin(pg_dsn) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A server-level DSN; tests must create their own databases (see `db_dsn`)."""
    configured = os.environ.get("PASSERELLE_TEST_DSN")
    if configured:
        yield configured
        return
    if _answers(_LOCAL_DSN):
        yield _LOCAL_DSN
        return
    from passerelle.storage.embedded import EmbeddedPostgres

    with _embedded_state_dir() as state_dir:
        server = EmbeddedPostgres(state_dir, database="postgres")
        try:
            yield server.start()
        finally:
            server.stop()


@contextlib.contextmanager
def _embedded_state_dir() -> Iterator[Path]:
    """A state directory for an embedded server, removed after use.

    Not under pytest's tmp_path: as root, the server runs as an unprivileged user that must
    traverse the path, and every pytest session starting on the machine resets
    /tmp/pytest-of-<user> to mode 0700.
    """
    path = Path(tempfile.mkdtemp(prefix="passerelle-pg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def _migrated_template(pg_dsn: str) -> Iterator[str]:
    from passerelle.storage.migrate import migrate

    name = _create_database(pg_dsn, "passerelle_tmpl")
    try:
        migrate(make_conninfo(pg_dsn, dbname=name))
        yield name
    finally:
        _drop_database(pg_dsn, name)


@pytest.fixture
def db_dsn(pg_dsn: str, _migrated_template: str) -> Iterator[str]:
    """DSN of a new database with the whole schema, dropped after the test."""
    name = _create_database(pg_dsn, "passerelle_test", template=_migrated_template)
    try:
        yield make_conninfo(pg_dsn, dbname=name)
    finally:
        with contextlib.suppress(psycopg.Error):
            _drop_database(pg_dsn, name)


@pytest.fixture
def empty_db_dsn(pg_dsn: str) -> Iterator[str]:
    """DSN of a new, empty database (no migrations applied), dropped after the test."""
    name = _create_database(pg_dsn, "passerelle_test")
    try:
        yield make_conninfo(pg_dsn, dbname=name)
    finally:
        with contextlib.suppress(psycopg.Error):
            _drop_database(pg_dsn, name)


@pytest.fixture
def embedded_state_dir() -> Iterator[Path]:
    """An empty state directory where an embedded PostgreSQL can run (even as root)."""
    with _embedded_state_dir() as path:
        yield path
