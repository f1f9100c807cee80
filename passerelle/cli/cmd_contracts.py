"""`mpctl contracts`: acceptor contracts (contrats commerçant) — list and add.

A contract is one number for one application (CBEMV, CBCLESS, AMEX, CONECS...) with its
bank code and rang (the point of sale). Adding an existing (number, application) updates it.
"""

from __future__ import annotations

import re

import click

from passerelle.cli.common import (
    database,
    database_options,
    emit_json,
    errors,
    fail,
    json_option,
    table,
)
from passerelle.storage.fleet import Contract, upsert_contract


@click.group(name="contracts")
def command() -> None:
    """Acceptor contracts: list, add.

    \b
    Examples:
      mpctl contracts list --application CBEMV
      mpctl contracts add 0012345 --application CBEMV --bank-code 30004 --rang 001 \\
          --trade-name "AU BON PAIN" --city PARIS --siret 73282932000074
    """


@command.command(name="list")
@click.option("--application", help="Only this application.")
@click.option("--number", "contract_number", help="Only this contract number.")
@json_option
@database_options
@errors
def list_contracts(application: str | None, contract_number: str | None, as_json: bool,
                   dsn: str | None, state_dir: str) -> None:
    """Contracts with their terminals count.

    \b
    Example:
      mpctl contracts list --number 0012345 --json
    """
    with database(dsn, state_dir) as conn:
        rows = conn.execute(
            """SELECT c.id, c.contract_number, c.application, c.bank_code, c.rang,
                      c.acquirer, c.label, c.trade_name, c.siret, c.city, c.active,
                      (SELECT count(*) FROM terminals t WHERE t.contract_id = c.id)
                 FROM contracts c
                WHERE (%(app)s::text IS NULL OR c.application = upper(%(app)s))
                  AND (%(num)s::text IS NULL OR c.contract_number = %(num)s)
                ORDER BY c.contract_number, c.application""",
            {"app": application, "num": contract_number}).fetchall()
    keys = ("id", "contract_number", "application", "bank_code", "rang", "acquirer", "label",
            "trade_name", "siret", "city", "active", "terminals")
    if as_json:
        emit_json([dict(zip(keys, r, strict=True)) for r in rows])
        return
    table(["ID", "CONTRACT", "APPLICATION", "BANK", "RANG", "ACQUIRER", "TRADE NAME", "CITY",
           "SIRET", "TERMINALS"],
          [[r[0], r[1], r[2], r[3], r[4], r[5], r[7], r[9], r[8], r[11]] for r in rows],
          right=(0, 9))


@command.command()
@click.argument("contract_number")
@click.option("--application", required=True, help="CBEMV, CBCLESS, AMEX, CONECS...")
@click.option("--bank-code", required=True, help="Bank code, 5 digits.")
@click.option("--rang", default="000", show_default=True, help="Rang (point of sale).")
@click.option("--acquirer", help="Acquirer name as the route table knows it.")
@click.option("--label", help="Label shown in searches.")
@click.option("--trade-name", help="Trade name printed on tickets.")
@click.option("--siret", help="SIRET, 14 digits.")
@click.option("--city", help="City printed on tickets.")
@json_option
@database_options
@errors
def add(*, contract_number: str, application: str, bank_code: str, rang: str,
        acquirer: str | None, label: str | None, trade_name: str | None, siret: str | None,
        city: str | None, as_json: bool, dsn: str | None, state_dir: str) -> None:
    """Create (or update) a contract.

    \b
    Example:
      mpctl contracts add 0012345 --application CBCLESS --bank-code 30004 --rang 001
    """
    if not re.fullmatch(r"[0-9]{5}", bank_code):
        raise fail(f"--bank-code: {bank_code!r} is not 5 digits", 2)
    if siret is not None and not re.fullmatch(r"[0-9]{14}", siret):
        raise fail(f"--siret: {siret!r} is not 14 digits", 2)
    if not contract_number.strip() or not contract_number.isprintable():
        raise fail("CONTRACT_NUMBER: empty or not printable", 2)
    contract = Contract(contract_number=contract_number, application=application.upper(),
                        bank_code=bank_code, rang=rang, acquirer=acquirer, label=label,
                        trade_name=trade_name, siret=siret)
    with database(dsn, state_dir) as conn:
        contract_id = upsert_contract(conn, contract)
        conn.execute("UPDATE contracts SET city = %s WHERE id = %s", (city, contract_id))
        conn.commit()
    if as_json:
        emit_json({"id": contract_id, "contract_number": contract_number,
                   "application": contract.application})
    else:
        click.echo(f"contract {contract_number}/{contract.application} saved (id {contract_id})")
