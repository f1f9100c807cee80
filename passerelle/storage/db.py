"""Storage settings, connections and the one exception family of the storage package.

Every failure that leaves this package is a `StorageError` whose message says what a person
must fix. `DatabaseUnavailable` is singled out because callers react to it differently: the
télécollecte dialogue spools the remise instead of failing the terminal.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool


class StorageError(Exception):
    """Base of every storage failure; the message names the problem and, if known, the fix."""


class DatabaseUnavailable(StorageError):
    """PostgreSQL could not be reached or dropped the connection: retry later or spool."""


class StorageConfigError(StorageError):
    """The storage configuration (settings, DSN) is wrong: fix it, retrying will not help."""


class StorageSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The `[storage]` table of the configuration.

    With no `dsn`, an embedded PostgreSQL is started in `state_dir` (see `embedded.py`).
    """

    dsn: str | None = None
    state_dir: str = ".state"
    pool_min_size: int = 1
    pool_max_size: int = 20
    connect_timeout_s: float = 5.0
    statement_timeout_ms: int = 30_000
    retention_months: int = 15
    months_ahead: int = 3

    def __post_init__(self) -> None:
        if self.pool_min_size < 0 or self.pool_max_size < 1:
            raise StorageConfigError(
                f"storage.pool_min_size must be >= 0 and storage.pool_max_size >= 1, "
                f"got {self.pool_min_size} and {self.pool_max_size}"
            )
        if self.pool_min_size > self.pool_max_size:
            raise StorageConfigError(
                f"storage.pool_min_size ({self.pool_min_size}) exceeds "
                f"storage.pool_max_size ({self.pool_max_size})"
            )
        if self.connect_timeout_s <= 0:
            raise StorageConfigError(
                f"storage.connect_timeout_s must be > 0, got {self.connect_timeout_s}"
            )
        if self.statement_timeout_ms < 0:
            raise StorageConfigError(
                f"storage.statement_timeout_ms must be >= 0, got {self.statement_timeout_ms}"
            )
        if self.retention_months < 1:
            raise StorageConfigError(
                f"storage.retention_months must be >= 1, got {self.retention_months}"
            )
        if self.months_ahead < 0:
            raise StorageConfigError(f"storage.months_ahead must be >= 0, got {self.months_ahead}")


def settings_from_table(table: dict[str, object]) -> StorageSettings:
    """Validate the raw `[storage]` configuration table, naming the bad key."""
    try:
        return msgspec.convert(table, StorageSettings)
    except msgspec.ValidationError as exc:
        raise StorageConfigError(f"[storage] configuration: {exc}") from exc


def _connect_kwargs(dsn: str, settings: StorageSettings) -> dict[str, object]:
    kwargs: dict[str, object] = {"connect_timeout": max(1, round(settings.connect_timeout_s))}
    if settings.statement_timeout_ms:
        # A keyword `options` replaces the DSN's (and PGOPTIONS): keep the operator's settings
        # (search_path, role...) and add ours after them, so ours wins only for the timeout.
        try:
            theirs = psycopg.conninfo.conninfo_to_dict(dsn).get("options")
        except psycopg.ProgrammingError:
            theirs = None  # connect() reports the bad DSN
        theirs = theirs if theirs is not None else os.environ.get("PGOPTIONS", "")
        ours = f"-c statement_timeout={settings.statement_timeout_ms}"
        kwargs["options"] = f"{theirs} {ours}".strip()
    return kwargs


def describe_dsn(dsn: str) -> str:
    """The DSN without its password, fit for an error message or a log line."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})


def connect(
    dsn: str, settings: StorageSettings | None = None, *, autocommit: bool = False
) -> psycopg.Connection:
    """Open one synchronous connection (CLI, migrations, retention)."""
    settings = settings or StorageSettings(dsn=dsn)
    try:
        return psycopg.connect(dsn, autocommit=autocommit, **_connect_kwargs(dsn, settings))
    except psycopg.ProgrammingError as exc:
        raise StorageConfigError(f"invalid PostgreSQL DSN: {exc}") from exc
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot connect to PostgreSQL at {describe_dsn(dsn)}: {str(exc).strip()}"
        ) from exc


# Failures that retrying later can cure: connection lost or refused, pool exhausted, timeouts,
# a primary demoted to read-only during a failover, serialization conflicts, and a database
# that came back empty (its schema is migrated before the spool is replayed).
_TRANSIENT = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg.errors.TransactionRollback,
    psycopg.errors.ReadOnlySqlTransaction,
    psycopg.errors.UndefinedTable,
)


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn psycopg exceptions raised while doing `what` into `StorageError`s."""
    try:
        yield
    except StorageError:
        raise
    except _TRANSIENT as exc:
        raise DatabaseUnavailable(f"{what}: PostgreSQL unavailable: {str(exc).strip()}") from exc
    except psycopg.Error as exc:
        raise StorageError(f"{what}: {str(exc).strip()}") from exc


def open_pool(dsn: str, settings: StorageSettings | None = None) -> AsyncConnectionPool:
    """An asyncio connection pool, not yet opened (use `async with` or `await pool.open()`).

    The pool does not wait for PostgreSQL at open: switchd must start and answer terminals
    (spooling remises) even while the database is away.
    """
    settings = settings or StorageSettings(dsn=dsn)
    return AsyncConnectionPool(
        dsn,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        kwargs=_connect_kwargs(dsn, settings),
        timeout=settings.connect_timeout_s,
        open=False,
        name="passerelle",
    )
