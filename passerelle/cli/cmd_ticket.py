"""`mpctl ticket`: print — or mail — a stored remise's or payment's ticket as it printed.

A ticket is named by its id (from `mpctl remises` / `mpctl transactions`) or by filters
that match exactly one row; several matches are refused with their ids, none is "not
found" (exit 1). `--mail` takes at most 5 addresses and is checked before anything is
read or sent.
"""

from __future__ import annotations

from typing import Any

import click

from passerelle.cli.common import (
    NotFound,
    database,
    database_options,
    emit_json,
    errors,
    fail,
    json_option,
    mail_config_option,
    mail_settings,
    resolve_user,
)
from passerelle.mail import Delivery, parse_recipients, send_ticket
from passerelle.storage import queries
from passerelle.storage.filters import (
    RemiseFilters,
    TransactionFilters,
    parse_remise_filters,
    parse_transaction_filters,
)
from passerelle.tickets import PARIS, render_payment, render_remise


@click.group(name="ticket")
def command() -> None:
    """Print or mail the ticket of a remise (télécollecte) or of a payment.

    \b
    Examples:
      mpctl ticket remise 506
      mpctl ticket remise --number 15 --terminal PAX01R0001 --application CBEMV
      mpctl ticket payment 6728 --mail client@example.fr,compta@example.fr
      mpctl ticket payment --auth 916943 --date 2026-11-21 --copy merchant
    """


def _common(func: Any) -> Any:
    for decorator in (
        click.option("--mail", "mail_to", metavar="ADDR[,ADDR...]",
                     help="Also mail the ticket to these addresses (at most 5)."),
        mail_config_option,
        click.option("--as-user", help="Only what this user (id or e-mail) may see."),
        json_option,
        database_options,
        errors,
    ):
        func = decorator(func)
    return func


def _one(conn: Any, filters: RemiseFilters | TransactionFilters, user_id: int | None,
         what: str) -> Any:
    page = queries.search(conn, filters, user_id=user_id, limit=5)
    if not page.rows:
        raise NotFound(f"no {what} matches these filters")
    if len(page.rows) > 1:
        ids = ", ".join(str(r.id) for r in page.rows) + (", ..." if page.next_cursor else "")
        raise fail(f"several {what}s match (ids {ids}); give the ID or more filters", 2)
    return page.rows[0]


def _deliver(kwargs: dict[str, Any], recipients: list[str] | None, *, subject: str,
             ticket: str, key: str, row_id: int) -> None:
    delivery: Delivery | None = None
    if recipients:
        settings, branding = mail_settings(kwargs["config_path"])
        delivery = send_ticket(settings, branding, recipients, subject, ticket)
    if kwargs["as_json"]:
        emit_json({key: row_id, "ticket": ticket, "mail": delivery})
    else:
        click.echo(ticket, nl=False)
    if delivery is None:
        return
    for address in delivery.accepted:
        click.echo(f"mailed to {address}", err=True)
    for address, reason in delivery.refused.items():
        click.echo(f"error: {address} refused: {reason}", err=True)
    if delivery.error and not delivery.refused:
        click.echo(f"error: mail not sent: {delivery.error}", err=True)
    if not delivery.ok:
        raise click.exceptions.Exit(1)


@command.command(name="remise")
@click.argument("remise_id", required=False, type=click.IntRange(min=1))
@click.option("--number", "remise_number", help="Remise number.")
@click.option("--terminal", "terminal_serial", help="Terminal serial number.")
@click.option("--contract", "contract_number", help="Contract number.")
@click.option("--application", help="Application (CBEMV, CBCLESS, AMEX, CONECS...).")
@click.option("--date", "day", help="Day it was collected (Europe/Paris).")
@_common
def remise(remise_id: int | None, day: str | None, mail_to: str | None,
           **kwargs: Any) -> None:
    """The télécollecte ticket of one remise, by ID or by filters.

    \b
    Examples:
      mpctl ticket remise 506
      mpctl ticket remise --number 15 --terminal PAX01R0001 --application CBEMV
      mpctl ticket remise 506 --mail compta@example.fr --config /etc/passerelle.toml
    """
    recipients = parse_recipients(mail_to) if mail_to else None
    if recipients:
        mail_settings(kwargs["config_path"])  # a bad configuration stops us before any work
    selectors = {k: kwargs.pop(k) for k in ("remise_number", "terminal_serial",
                                            "contract_number", "application")}
    if remise_id is None and not any(selectors.values()):
        raise fail("give a remise ID or --number/--terminal/--contract/--application", 2)
    filters = parse_remise_filters({**selectors, "date_from": day, "date_to": day})
    with database(kwargs["dsn"], kwargs["state_dir"]) as conn:
        user_id = resolve_user(conn, kwargs["as_user"])
        if remise_id is not None:
            row = queries.get_remise(conn, remise_id, user_id)
            if row is None:
                raise NotFound(f"no remise {remise_id}")
        else:
            row = _one(conn, filters, user_id, "remise")
        city = queries.contract_city(conn, row.contract_id)
    ticket = render_remise(row, city=city)
    day_text = row.collected_at.astimezone(PARIS).strftime("%d/%m/%Y")
    _deliver(kwargs, recipients, subject=f"Ticket de télécollecte du {day_text}, remise "
             f"{row.remise_number}", ticket=ticket, key="remise_id", row_id=row.id)


@command.command(name="payment")
@click.argument("transaction_id", required=False, type=click.IntRange(min=1))
@click.option("--auth", "authorization_number", help="Authorization number (N° AUTO).")
@click.option("--dossier", "rrn", help="Dossier number (RRN).")
@click.option("--terminal", "terminal_serial", help="Terminal serial number.")
@click.option("--remise", "remise_number", help="Remise number.")
@click.option("--last4", help="Last 4 digits of the card.")
@click.option("--amount", help="Amount in euros: 12,50.")
@click.option("--date", "day", help="Day of the payment (Europe/Paris).")
@click.option("--copy", "copy_kind", type=click.Choice(["client", "merchant"]),
              default="client", show_default=True,
              help="Cardholder copy (last 4 digits) or merchant copy (masked PAN).")
@_common
def payment(transaction_id: int | None, day: str | None, copy_kind: str,
            mail_to: str | None, **kwargs: Any) -> None:
    """The ticket of one payment (or refund), by ID or by filters.

    \b
    Examples:
      mpctl ticket payment 6728
      mpctl ticket payment --auth 916943 --date 2026-11-21
      mpctl ticket payment 6728 --copy merchant --mail a@example.fr,b@example.fr
    """
    recipients = parse_recipients(mail_to) if mail_to else None
    if recipients:
        mail_settings(kwargs["config_path"])  # a bad configuration stops us before any work
    selectors = {k: kwargs.pop(k) for k in ("authorization_number", "rrn", "terminal_serial",
                                            "remise_number", "last4", "amount")}
    if transaction_id is None and not any(selectors.values()):
        raise fail("give a payment ID or --auth/--dossier/--terminal/--remise/--last4/"
                   "--amount", 2)
    filters = parse_transaction_filters({**selectors, "date_from": day, "date_to": day})
    with database(kwargs["dsn"], kwargs["state_dir"]) as conn:
        user_id = resolve_user(conn, kwargs["as_user"])
        if transaction_id is not None:
            row = queries.get_transaction(conn, transaction_id, user_id)
            if row is None:
                raise NotFound(f"no payment {transaction_id}")
        else:
            row = _one(conn, filters, user_id, "payment")
        city = queries.contract_city(conn, row.contract_id)
    ticket = render_payment(row, city=city, copy=copy_kind)  # type: ignore[arg-type]
    day_text = row.tx_at.astimezone(PARIS).strftime("%d/%m/%Y")
    _deliver(kwargs, recipients, subject=f"Ticket de paiement du {day_text}", ticket=ticket,
             key="transaction_id", row_id=row.id)
