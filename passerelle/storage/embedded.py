"""The embedded PostgreSQL: with no DSN configured, a private server in the state directory.

`pgserver` ships PostgreSQL binaries and runs `initdb`/`pg_ctl` on a data directory, listening
on a Unix socket only. Root-safety (initdb refuses to run as root): pgserver 0.1.4 itself
handles it when the effective uid is 0 — it creates a system user `pgserver` (`useradd`),
gives it the data directory, opens `o+rx` on the directory's parents and its own binaries,
and runs initdb/pg_ctl as that user. We check the preconditions first so that a machine
without `useradd` gets a clear message instead of a traceback. Consequence to know: as root,
every parent of the state directory becomes group/other readable and traversable (the
server's user must reach its data), so keep the state directory out of /root.

Several processes may share one server (switchd and mpctl on the same state directory):
pgserver counts the pids using it and the last one to leave stops it. A process killed with
-9 never leaves, so dead pids are pruned before attaching.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import warnings
from pathlib import Path
from types import ModuleType

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from passerelle.storage.db import StorageError

_SYSTEM_USER = "pgserver"  # the name pgserver 0.1.4 uses when started as root
_PIDS_FILE = ".handle_pids.json"


def _check_root_prerequisites() -> None:
    if os.geteuid() != 0:
        return
    try:
        pwd.getpwnam(_SYSTEM_USER)
    except KeyError:
        if shutil.which("useradd") is None:
            raise StorageError(
                "the embedded PostgreSQL cannot run as root and needs an unprivileged "
                f"system user {_SYSTEM_USER!r}, but `useradd` is missing to create it: "
                f"create the user yourself or configure storage.dsn"
            ) from None


def _prune_dead_handles(pgdata: Path) -> None:
    """Forget pids of processes that died without detaching (kill -9), so that the last
    live user still stops the server."""
    pids_file = pgdata / _PIDS_FILE
    try:
        pids = json.loads(pids_file.read_text())
    except (FileNotFoundError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
    if alive != pids:
        pids_file.write_text(json.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _import_pgserver() -> ModuleType:
    # Deferred: importing pgserver creates its lock file. Without XDG_RUNTIME_DIR (root,
    # containers) platformdirs warns and falls back to /tmp/runtime-<uid>, which is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver  # noqa: PLC0415
    return pgserver


def postgres_bin_dir() -> Path:
    """Where pgserver's PostgreSQL programs (pg_dump, psql, ...) are."""
    _import_pgserver()
    from pgserver._commands import POSTGRES_BIN_PATH  # noqa: PLC0415

    return Path(POSTGRES_BIN_PATH)


class EmbeddedPostgres:
    """A private PostgreSQL in `<state_dir>/pgdata`; use as a context manager or start/stop."""

    def __init__(self, state_dir: str | os.PathLike[str], database: str = "passerelle") -> None:
        self.database = database
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.pgdata = self.state_dir / "pgdata"
        self._server = None
        self.dsn: str | None = None

    def start(self) -> str:
        """Start (or attach to) the server; return a DSN for `database`, created if needed."""
        if self.dsn is not None:
            return self.dsn
        _check_root_prerequisites()
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create state directory {self.state_dir}: {exc}") from exc
        if self.pgdata.exists():
            _prune_dead_handles(self.pgdata)
        pgserver = _import_pgserver()
        try:
            self._server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        except (subprocess.SubprocessError, OSError, AssertionError) as exc:
            raise StorageError(
                f"the embedded PostgreSQL in {self.pgdata} did not start: {exc}. "
                f"Its log is {self.pgdata / 'log'}"
            ) from exc
        self.dsn = self._ensure_database(self._server.get_uri(), self.database)
        return self.dsn

    @staticmethod
    def _ensure_database(server_dsn: str, database: str) -> str:
        try:
            with psycopg.connect(server_dsn, autocommit=True, connect_timeout=10) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
                ).fetchone()
                if exists is None:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        except psycopg.Error as exc:
            raise StorageError(f"embedded PostgreSQL: cannot create database {database!r}: "
                               f"{str(exc).strip()}") from exc
        return make_conninfo(server_dsn, dbname=database)

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while started."""
        return None if self._server is None else self._server.get_pid()

    def stop(self) -> None:
        """Detach; the server stops when no other live process uses it."""
        server, self._server, self.dsn = self._server, None, None
        if server is not None:
            with contextlib.suppress(subprocess.SubprocessError):
                server.cleanup()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
