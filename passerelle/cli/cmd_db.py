"""`mpctl db`: schema migrations and retention of the PostgreSQL database.

Which database: `--dsn` or PASSERELLE_DSN; with neither, the embedded PostgreSQL of
`--state-dir` (started for the command and stopped after it, unless switchd also uses it).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import click
import msgspec

from passerelle.storage.db import StorageConfigError, StorageError, describe_dsn


def _database_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--state-dir",
        default=".state",
        show_default=True,
        type=click.Path(file_okay=False),
        help="State directory of the embedded PostgreSQL, used when no DSN is given.",
    )(func)
    return click.option(
        "--dsn",
        envvar="PASSERELLE_DSN",
        help="PostgreSQL DSN (or PASSERELLE_DSN). Default: the embedded server.",
    )(func)


@contextlib.contextmanager
def _database(dsn: str | None, state_dir: str, quiet: bool) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    from passerelle.storage.embedded import EmbeddedPostgres  # noqa: PLC0415

    server = EmbeddedPostgres(state_dir)
    if not quiet:
        click.echo(f"starting the embedded PostgreSQL in {server.pgdata}", err=True)
    try:
        yield server.start()
    finally:
        server.stop()


def _fail(exc: StorageError) -> click.exceptions.Exit:
    click.echo(f"error: {exc}", err=True)
    # 2: what the operator gave is wrong (DSN); 1: the database is away or a check failed.
    return click.exceptions.Exit(2 if isinstance(exc, StorageConfigError) else 1)


@click.group(name="db")
def command() -> None:
    """Database administration: schema migrations and retention.

    \b
    Examples:
      mpctl db migrate                          embedded database in ./.state
      mpctl db migrate --dsn postgresql://passerelle@db1/passerelle
      mpctl db retention --keep-months 15 --months-ahead 3
    """


@command.command()
@_database_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def migrate(dsn: str | None, state_dir: str, as_json: bool) -> None:
    """Apply pending schema migrations (safe to run concurrently and repeatedly)."""
    from passerelle.storage.migrate import migrate as run_migrations  # noqa: PLC0415

    say = (lambda _m: None) if as_json else click.echo
    try:
        with _database(dsn, state_dir, as_json) as target:
            applied = run_migrations(target, progress=say)
    except StorageError as exc:
        raise _fail(exc) from exc
    if as_json:
        click.echo(json.dumps({"applied": [f"{m.version:04d}_{m.name}" for m in applied]}))
    elif applied:
        click.echo(f"{len(applied)} migration(s) applied to {describe_dsn(target)}")
    else:
        click.echo(f"schema up to date ({describe_dsn(target)})")


@command.command()
@_database_options
@click.option(
    "--keep-months", default=15, show_default=True, type=click.IntRange(min=1),
    help="Months of remises, transactions and authorizations to keep.",
)
@click.option(
    "--months-ahead", default=3, show_default=True, type=click.IntRange(min=0),
    help="Future monthly partitions to create.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def retention(
    dsn: str | None, state_dir: str, keep_months: int, months_ahead: int, as_json: bool
) -> None:
    """Drop monthly partitions older than the retention and create the months ahead."""
    from passerelle.storage.retention import apply_retention  # noqa: PLC0415

    say = (lambda _m: None) if as_json else click.echo
    try:
        with _database(dsn, state_dir, as_json) as target:
            report = apply_retention(
                target, keep_months=keep_months, months_ahead=months_ahead, progress=say
            )
    except StorageError as exc:
        raise _fail(exc) from exc
    if as_json:
        click.echo(msgspec.json.encode(report).decode())
