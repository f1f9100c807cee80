"""Schema migrations: plain SQL files `migrations/NNNN_name.sql`, applied in order, once.

Each applied file is recorded in `schema_migrations` with a checksum, so a file edited after
it was applied is reported instead of silently diverging. A session advisory lock makes
concurrent runs (several switchd nodes starting together) apply each file exactly once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from importlib import resources

import msgspec
import psycopg

from passerelle.storage.db import StorageError, connect, translate_errors

# pg_advisory_lock key: "passerel" as a big-endian 64-bit integer.
MIGRATION_LOCK_KEY = int.from_bytes(b"passerel", "big", signed=True)
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    sql: str

    def __repr__(self) -> str:
        return f"Migration({self.version:04d}_{self.name})"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available_migrations() -> list[Migration]:
    """The migration files shipped in the package, sorted by version."""
    found: dict[int, Migration] = {}
    folder = resources.files("passerelle.storage") / "migrations"
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _NAME.match(entry.name)
        if match is None:
            raise StorageError(
                f"migration file {entry.name!r} is not named NNNN_lowercase_name.sql"
            )
        version = int(match.group(1))
        if version in found:
            raise StorageError(f"two migration files share version {version:04d}")
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def _applied(conn: psycopg.Connection) -> dict[int, str]:
    conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version     integer PRIMARY KEY,
               name        text NOT NULL,
               checksum    text NOT NULL,
               applied_at  timestamptz NOT NULL DEFAULT now())"""
    )
    rows = conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
    return dict(rows)


def migrate(dsn: str, progress: Callable[[str], None] | None = None) -> list[Migration]:
    """Apply every pending migration; return those applied (empty when up to date)."""
    say = progress or (lambda _msg: None)
    migrations = available_migrations()
    applied_now: list[Migration] = []
    with connect(dsn, autocommit=True) as conn, translate_errors("migrating the schema"):
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            done = _applied(conn)
            for migration in migrations:
                recorded = done.get(migration.version)
                if recorded is not None:
                    if recorded != migration.checksum:
                        raise StorageError(
                            f"migration {migration.version:04d}_{migration.name}.sql was "
                            "changed after it was applied; add a new migration instead"
                        )
                    continue
                say(f"applying {migration.version:04d}_{migration.name}")
                try:
                    with conn.transaction():
                        conn.execute(migration.sql.encode())
                        conn.execute(
                            "INSERT INTO schema_migrations (version, name, checksum)"
                            " VALUES (%s, %s, %s)",
                            (migration.version, migration.name, migration.checksum),
                        )
                except psycopg.Error as exc:
                    raise StorageError(
                        f"migration {migration.version:04d}_{migration.name}.sql failed: "
                        f"{str(exc).strip()}"
                    ) from exc
                applied_now.append(migration)
            unknown = sorted(set(done) - {m.version for m in migrations})
            if unknown:
                say(f"database has migrations newer than this code: {unknown}")
        finally:
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied_now
