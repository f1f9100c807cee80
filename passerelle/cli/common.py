"""Helpers shared by the reporting and administration commands of mpctl.

- Which database: `--dsn` / PASSERELLE_DSN, else the embedded PostgreSQL of `--state-dir`
  (as `mpctl db` does).
- Errors: `errors` turns a `FilterError`, `StorageError` or `MailError` into one line on
  stderr and the exit code of DESIGN.md §11 — 1 when something is not found or the
  database is away, 2 when the input is wrong — never a traceback.
- Output: `table` for people (aligned columns, amounts with a decimal comma, times in
  Europe/Paris), `emit_json` for scripts (msgspec: integers stay integers, times ISO 8601 UTC).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

import click
import msgspec
import psycopg

from passerelle.mail import Branding, MailError, MailSettings, load_settings
from passerelle.storage.db import DatabaseUnavailable, StorageError, connect
from passerelle.storage.filters import FilterError
from passerelle.storage.pan import PanHmacKey
from passerelle.tickets import PARIS, money


class NotFound(Exception):
    """What the operator named does not exist (exit code 1)."""


def fail(message: str, code: int = 2) -> click.exceptions.Exit:
    click.echo(f"error: {message}", err=True)
    return click.exceptions.Exit(code)


def errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """One-line errors and exit codes instead of tracebacks."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except NotFound as exc:
            raise fail(str(exc), 1) from None
        except (FilterError, MailError) as exc:
            raise fail(str(exc), 2) from None
        except DatabaseUnavailable as exc:
            raise fail(str(exc), 1) from None
        except StorageError as exc:
            raise fail(str(exc), 2) from None

    return wrapper


def database_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--state-dir", default=".state", show_default=True, type=click.Path(file_okay=False),
        help="State directory of the embedded PostgreSQL, used when no DSN is given.",
    )(func)
    return click.option(
        "--dsn", envvar="PASSERELLE_DSN",
        help="PostgreSQL DSN (or PASSERELLE_DSN). Default: the embedded server.",
    )(func)


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(func)


@contextlib.contextmanager
def database(dsn: str | None, state_dir: str) -> Iterator[psycopg.Connection]:
    """A connection to the configured database (embedded one started for the command)."""
    if dsn:
        with connect(dsn) as conn:
            yield conn
        return
    from passerelle.storage.embedded import EmbeddedPostgres  # noqa: PLC0415

    server = EmbeddedPostgres(state_dir)
    try:
        with connect(server.start()) as conn:
            yield conn
    finally:
        server.stop()


def pan_keys_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--pan-key", "pan_keys", multiple=True, envvar="PASSERELLE_PAN_KEYS",
        metavar="VERSION:HEX",
        help="PAN HMAC key for --card searches, once per key version still in retention "
             "(or PASSERELLE_PAN_KEYS, space separated).",
    )(func)


def parse_pan_keys(values: Sequence[str]) -> list[PanHmacKey]:
    """`1:00ff..` -> PanHmacKey(1, ...); the option is named in every error."""
    keys = []
    for value in values:
        for item in value.split():
            version, _, key_hex = item.partition(":")
            if not version.isdigit() or not key_hex:
                raise FilterError("pan_key", "expected VERSION:HEX")
            try:
                keys.append(PanHmacKey.from_hex(int(version), key_hex))
            except StorageError as exc:
                raise FilterError("pan_key", str(exc)) from None
    return keys


def resolve_user(conn: psycopg.Connection, who: str | None) -> int | None:
    """A user id from an id or an e-mail address (None: no scope restriction)."""
    if who is None:
        return None
    if who.isdigit():
        row = conn.execute("SELECT id FROM users WHERE id = %s", (int(who),)).fetchone()
    else:
        row = conn.execute("SELECT id FROM users WHERE lower(email) = lower(%s)",
                           (who,)).fetchone()
    if row is None:
        raise NotFound(f"--as-user: no user {who!r}")
    return int(row[0])


# --- output ---------------------------------------------------------------------------------


def paris(at: datetime | None) -> str:
    return "" if at is None else at.astimezone(PARIS).strftime("%d/%m/%Y %H:%M:%S")


def amount(value: int, currency: int) -> str:
    """"1721,56 EUR": the ticket's spelling, for tables too."""
    return money(value, currency)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]],
          right: Sequence[int] = ()) -> None:
    """Aligned columns; `right` lists the indexes of right-aligned (numeric) columns."""
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(widths[i]) if i in right else v.ljust(widths[i])
            for i, v in enumerate(values)
        ).rstrip()

    click.echo(line(headers))
    click.echo(line(["-" * w for w in widths]))
    for row in cells:
        click.echo(line(row))


def emit_json(value: object) -> None:
    click.echo(msgspec.json.encode(value, enc_hook=_enc_hook).decode())


def _enc_hook(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


def mail_config_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--config", "config_path", envvar="PASSERELLE_CONFIG",
        type=click.Path(dir_okay=False),
        help="TOML configuration with the [mail] and [branding] tables (or PASSERELLE_CONFIG).",
    )(func)


def mail_settings(config_path: str | None) -> tuple[MailSettings, Branding]:
    """The [mail] and [branding] settings, or a clear error when none are configured."""
    if config_path is None:
        raise MailError("--config: sending mail needs the [mail] settings; give --config "
                        "FILE or set PASSERELLE_CONFIG")
    return load_settings(config_path)


def is_tty_stderr() -> bool:
    return os.isatty(2)


# --- search filters as options --------------------------------------------------------------

# (field, option, help, choices) — option names match filters.option_name.
_COMMON_FILTERS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("date_from", "--from", "First day (Europe/Paris), YYYY-MM-DD or DD/MM/YYYY.", ()),
    ("date_to", "--to", "Last day, included.", ()),
    ("application", "--application", "Application: CBEMV, CBCLESS, AMEX, CONECS...", ()),
    ("contract_number", "--contract", "Contract number (exact, leading zeros count).", ()),
    ("label", "--label", "Contract label contains this (any case).", ()),
    ("rang", "--rang", "Rang (point of sale of the contract).", ()),
    ("bank_code", "--bank-code", "Bank code (5 digits).", ()),
    ("amount", "--amount", "Amount in euros, exact: 12,50.", ()),
    ("amount_min", "--amount-min", "Amount at least (euros).", ()),
    ("amount_max", "--amount-max", "Amount at most (euros).", ()),
    ("currency", "--currency", "ISO 4217 numeric currency (978 = EUR).", ()),
    ("remise_number", "--remise", "Remise number.", ()),
    ("file_number", "--file", "File number.", ()),
    ("terminal_serial", "--terminal", "Terminal serial number.", ()),
    ("maker", "--maker", "Terminal maker (Ingenico, Verifone, PAX...).", ()),
    ("trade_name", "--trade-name", "Trade name contains this (any case).", ()),
    ("siret", "--siret", "SIRET (14 digits).", ()),
)
REMISE_FILTERS = (
    *_COMMON_FILTERS,
    ("status", "--status", "Remise status.", ("correct", "difference")),
    ("transaction_count", "--count", "Number of transactions, exact.", ()),
    ("transaction_count_min", "--count-min", "At least this many transactions.", ()),
    ("transaction_count_max", "--count-max", "At most this many transactions.", ()),
)
TRANSACTION_FILTERS = (
    *_COMMON_FILTERS,
    ("remise_id", "--remise-id", "Transactions of this remise (its id).", ()),
    ("remise_state", "--remise-state", "State of the remise they came in.",
     ("correct", "difference")),
    ("direction", "--type", "Debit (purchases) or credit (refunds, cancellations).",
     ("debit", "credit")),
    ("operation", "--operation", "Operation.", ("purchase", "refund", "cancellation")),
    ("result", "--result", "Result.", ("approved", "declined")),
    ("response_code", "--response-code", "Response code (2 characters).", ()),
    ("card_number", "--card", "Card number, exact (searched by keyed HMAC).", ()),
    ("last4", "--last4", "Last 4 digits of the card.", ()),
    ("expiry", "--expiry", "Card expiry, MM/YY.", ()),
    ("authorization_number", "--auth", "Authorization number (N° AUTO).", ()),
    ("issuer", "--issuer", "Issuer (bank, or meal-voucher issuer).", ()),
    ("product", "--product", "Card product.", ()),
    ("rrn", "--dossier", "Dossier number (RRN).", ()),
)


_METAVARS = {
    "date_from": "DATE", "date_to": "DATE", "amount": "EUROS", "amount_min": "EUROS",
    "amount_max": "EUROS", "currency": "CODE", "remise_number": "N", "file_number": "N",
    "transaction_count": "N", "transaction_count_min": "N", "transaction_count_max": "N",
    "remise_id": "ID", "card_number": "PAN", "last4": "NNNN", "expiry": "MM/YY",
    "siret": "SIRET", "bank_code": "CODE", "response_code": "CODE",
}


def filter_options(spec: Sequence[tuple[str, str, str, tuple[str, ...]]]
                   ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command with one option per filter field."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for field, option, help_text, choices in reversed(spec):
            kind: Any = click.Choice(choices, case_sensitive=False) if choices else None
            metavar = None if choices else _METAVARS.get(field, "TEXT")
            func = click.option(option, field, type=kind, metavar=metavar,
                                help=help_text)(func)
        return func

    return decorate


def take_filters(kwargs: dict[str, Any],
                 spec: Sequence[tuple[str, str, str, tuple[str, ...]]]) -> dict[str, Any]:
    """Remove the filter fields from a command's keyword arguments."""
    return {field: kwargs.pop(field) for field, *_ in spec}


def paging_options(sorts: Sequence[str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--sort/--asc/--limit/--cursor/--offset/--group-by/--as-user/--json."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        func = json_option(func)
        func = click.option("--as-user", help="Only what this user (id or e-mail) may see.")(
            func)
        func = click.option("--group-by", type=click.Choice(["contract", "application",
                            "issuer"]), help="Group the totals.")(func)
        func = click.option("--offset", type=click.IntRange(min=0),
                            help="Skip this many rows (prefer --cursor on deep pages).")(func)
        func = click.option("--cursor", help="Continue after the page that printed it.")(func)
        func = click.option("--limit", default=50, show_default=True,
                            type=click.IntRange(min=1),
                            help="Rows per page (at most 500).")(func)
        func = click.option("--asc", is_flag=True, help="Oldest / smallest first.")(func)
        return click.option("--sort", default="date", show_default=True,
                            type=click.Choice(sorted(sorts)), help="Sort column.")(func)

    return decorate


def print_totals(rows: Sequence[Any], grouped: bool) -> None:
    """The totals of a search, one line per currency (and group)."""
    headers = ["GROUP"] if grouped else []
    headers += ["CURRENCY", "COUNT", "DEBITS", "DEBIT AMOUNT", "CREDITS", "CREDIT AMOUNT",
                "DECLINED", "NET"]
    table(headers, [
        ([t.group or "-"] if grouped else []) + [
            money(0, t.currency).split()[-1], t.count, t.debit_count,
            amount(t.debit_amount, t.currency), t.credit_count,
            amount(t.credit_amount, t.currency), t.declined_count,
            amount(t.net_amount, t.currency),
        ] for t in rows
    ], right=range(1 if grouped else 0, len(headers)))
