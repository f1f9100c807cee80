"""`mpctl export`: remises or transactions as Excel-ready CSV, at most 31 days at a time.

The file opens with a double click in a French Excel or LibreOffice and every column comes
out typed: UTF-8 with a BOM (so accents survive), `;` between fields, CRLF line ends,
dates dd/mm/yyyy and times hh:mm:ss in Europe/Paris, amounts as plain decimals with a
comma, written from integer minor units (so never 1,2E+12). Identifiers whose leading
zeros matter — contract, rang, bank code, remise and file numbers, SIRET, authorization
and dossier numbers, terminal serial — are written `="0012345"`, the one text form both
spreadsheets keep as text. Text that a spreadsheet would take for a formula (=, +, -, @)
is prefixed with an apostrophe.

Rows stream from a server-side cursor into a temporary file beside the output, renamed
into place at the end: memory stays flat whatever the month, and a failed export leaves
no half file. Every filter of `mpctl remises` / `mpctl transactions` applies.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import click

from passerelle.cli.cmd_transactions import card_filters, hsm_config_option
from passerelle.cli.common import (
    REMISE_FILTERS,
    TRANSACTION_FILTERS,
    database,
    database_options,
    errors,
    filter_options,
    is_tty_stderr,
    pan_keys_option,
    resolve_user,
    take_filters,
)
from passerelle.storage import queries
from passerelle.storage.filters import (
    check_export_window,
    parse_remise_filters,
)
from passerelle.tickets import CURRENCIES, PARIS

BOM = "\ufeff"


def decimal(amount: int, currency: int) -> str:
    """Minor units -> "1234,56" (no thousands separator, never an exponent)."""
    exponent = CURRENCIES.get(currency, ("", 2))[1]
    sign = "-" if amount < 0 else ""
    if exponent == 0:
        return f"{sign}{abs(amount)}"
    whole, frac = divmod(abs(amount), 10**exponent)
    return f"{sign}{whole},{frac:0{exponent}d}"


def ident(value: object) -> str:
    """An identifier kept as text, leading zeros included: ="0012345"."""
    if value is None or value == "":
        return ""
    text = str(value)
    if '"' in text:
        return text_cell(text)
    return f'="{text}"'


def text_cell(value: object) -> str:
    """Plain text, quoted when needed, defused when a spreadsheet would evaluate it."""
    if value is None:
        return ""
    text = str(value)
    if text[:1] in ("=", "+", "-", "@"):
        text = "'" + text
    if any(c in text for c in ';"\r\n'):
        text = '"' + text.replace('"', '""') + '"'
    return text


def _currency(code: int) -> str:
    return CURRENCIES.get(code, (f"{code:03d}", 2))[0]


def _when(at: Any) -> tuple[str, str]:
    """dd/mm/yyyy and hh:mm:ss in Europe/Paris (f-strings: strftime is the slow part)."""
    t = at.astimezone(PARIS)
    return (f"{t.day:02d}/{t.month:02d}/{t.year:04d}",
            f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}")


REMISE_HEADER = (
    "Date", "Heure", "Terminal", "Fabricant", "Contrat", "Rang", "Code banque",
    "Application", "Libellé", "Enseigne", "SIRET", "N° remise", "N° fichier", "Devise",
    "Nb transactions", "Nb débits", "Montant débits", "Nb crédits", "Montant crédits",
    "Nb annulations", "Montant annulations", "Nb non autorisées", "Montant non autorisées",
    "Montant net", "Statut",
)


def remise_cells(r: queries.RemiseRow) -> list[str]:
    day, hour = _when(r.collected_at)
    c = r.currency
    return [
        day, hour, ident(r.terminal_serial), text_cell(r.maker), ident(r.contract_number),
        ident(r.rang), ident(r.bank_code), text_cell(r.application), text_cell(r.label),
        text_cell(r.trade_name), ident(r.siret), ident(f"{r.remise_number:06d}"),
        ident(f"{r.file_number:06d}"), _currency(c), str(r.transaction_count),
        str(r.purchases_count), decimal(r.purchases_amount, c), str(r.refunds_count),
        decimal(r.refunds_amount, c), str(r.cancellations_count),
        decimal(r.cancellations_amount, c), str(r.unauthorized_count),
        decimal(r.unauthorized_amount, c), decimal(r.net_amount, c), text_cell(r.status),
    ]


TRANSACTION_HEADER = (
    "Date", "Heure", "Terminal", "Fabricant", "Contrat", "Rang", "Code banque",
    "Application", "Enseigne", "SIRET", "N° remise", "N° fichier", "Etat remise",
    "Opération", "Type", "Résultat", "Code réponse", "Carte", "Expiration", "N° autorisation",
    "Emetteur", "Produit", "N° dossier", "Montant", "Devise",
)


def transaction_cells(t: queries.TransactionRow) -> list[str]:
    day, hour = _when(t.tx_at)
    expiry = f"{t.expiry[2:]}/{t.expiry[:2]}" if t.expiry else ""
    return [
        day, hour, ident(t.terminal_serial), text_cell(t.maker), ident(t.contract_number),
        ident(t.rang), ident(t.bank_code), text_cell(t.application), text_cell(t.trade_name),
        ident(t.siret), ident(f"{t.remise_number:06d}"), ident(f"{t.file_number:06d}"),
        text_cell(t.remise_state), text_cell(t.operation), t.direction.upper(),
        text_cell(t.result), ident(t.response_code), text_cell(t.pan_masked), ident(expiry),
        ident(t.authorization_number), text_cell(t.issuer), text_cell(t.product),
        ident(t.rrn), decimal(t.amount, t.currency), _currency(t.currency),
    ]


def write_csv(out: IO[str], header: Iterable[str], rows: Iterable[Any],
              cells: Callable[[Any], list[str]], advance: Callable[[int], None]) -> int:
    """Write the BOM, the header and every row; return the row count.

    `advance(n)` reports progress every 1000 rows (redrawing a bar per row costs more
    than writing the row)."""
    out.write(BOM + ";".join(text_cell(h) for h in header) + "\r\n")
    written = 0
    for row in rows:
        out.write(";".join(cells(row)) + "\r\n")
        written += 1
        if written % 1000 == 0:
            advance(1000)
    advance(written % 1000)
    return written


@contextlib.contextmanager
def _atomic(path: str) -> Iterator[IO[str]]:
    if path == "-":
        yield sys.stdout
        return
    target = Path(path)
    if target.is_dir():
        raise click.BadParameter(f"{path} is a directory", param_hint="'--output'")
    if not target.parent.is_dir():
        raise click.BadParameter(f"{target.parent} does not exist", param_hint="'--output'")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # an ordinary file, not mkstemp's private 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            yield out
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _run(kind: str, kwargs: dict[str, Any], filters: Any) -> None:
    check_export_window(filters)
    output = kwargs["output"]
    with database(kwargs["dsn"], kwargs["state_dir"]) as conn:
        user_id = resolve_user(conn, kwargs["as_user"])
        show = is_tty_stderr() and output != "-"
        total = queries.count(conn, filters, user_id) if show else 0
        cells: Callable[[Any], list[str]]
        if kind == "remises":
            rows: Iterable[Any] = queries.iter_remises(conn, filters, user_id)
            header, cells = REMISE_HEADER, remise_cells
        else:
            rows = queries.iter_transactions(conn, filters, user_id)
            header, cells = TRANSACTION_HEADER, transaction_cells
        with _atomic(output) as out, click.progressbar(
            length=total, label=f"exporting {kind}", file=sys.stderr,
            hidden=not show,
        ) as bar:
            written = write_csv(out, header, rows, cells, bar.update)
    if output != "-":
        click.echo(f"{written} {kind} written to {output}", err=True)


def _options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--as-user", help="Only what this user (id or e-mail) may see.")(func)
    func = click.option("--output", "-o", required=True, metavar="FILE",
                        help="CSV file to write ('-' for standard output).")(func)
    return errors(database_options(func))


@click.group(name="export")
def command() -> None:
    """Export remises or transactions as Excel-ready CSV (at most 31 days).

    \b
    Examples:
      mpctl export remises --from 2026-11-01 --to 2026-11-30 -o remises-novembre.csv
      mpctl export transactions --from 01/11/2026 --to 15/11/2026 --contract 0012345 -o tx.csv
    """


@command.command(name="remises")
@filter_options(REMISE_FILTERS)
@_options
def remises(**kwargs: Any) -> None:
    """Remises of a period (--from and --to required, at most 31 days).

    \b
    Example:
      mpctl export remises --from 2026-11-01 --to 2026-11-30 --status difference -o ecarts.csv
    """
    _run("remises", kwargs, parse_remise_filters(take_filters(kwargs, REMISE_FILTERS)))


@command.command(name="transactions")
@filter_options(TRANSACTION_FILTERS)
@pan_keys_option
@hsm_config_option
@_options
def transactions(**kwargs: Any) -> None:
    """Transactions of a period (--from and --to required, at most 31 days).

    \b
    Example:
      mpctl export transactions --from 2026-11-01 --to 2026-11-30 --type credit -o avoirs.csv
    """
    _run("transactions", kwargs, card_filters(take_filters(kwargs, TRANSACTION_FILTERS),
                                              kwargs["pan_keys"], kwargs["config"]))
