"""`mpctl terminals`: payment terminals (TPE) — list, add, move to another contract.

Moving a terminal changes its current contract and records the move in
`terminal_contracts`; the remises it already sent stay under the contract they were
collected on, so a contract's history does not change when its terminal leaves.
"""

from __future__ import annotations

import click
import psycopg

from passerelle.cli.common import (
    NotFound,
    database,
    database_options,
    emit_json,
    errors,
    fail,
    json_option,
    paris,
    table,
)
from passerelle.storage.fleet import upsert_terminal


@click.group(name="terminals")
def command() -> None:
    """Payment terminals: list, add, move.

    \b
    Examples:
      mpctl terminals list --contract 0012345
      mpctl terminals add ING0100042 --contract 0012345 --maker Ingenico
      mpctl terminals move ING0100042 --contract 0117074
    """


def _contract(conn: psycopg.Connection, number: str, application: str) -> int:
    row = conn.execute("SELECT id FROM contracts WHERE contract_number = %s"
                       " AND application = upper(%s)", (number, application)).fetchone()
    if row is None:
        raise NotFound(f"--contract: no contract {number}/{application.upper()}")
    return int(row[0])


@command.command(name="list")
@click.option("--contract", "contract_number", help="Only terminals now on this contract.")
@json_option
@database_options
@errors
def list_terminals(contract_number: str | None, as_json: bool, dsn: str | None,
                   state_dir: str) -> None:
    """Terminals with their current contract and last télécollecte.

    \b
    Example:
      mpctl terminals list --json
    """
    with database(dsn, state_dir) as conn:
        rows = conn.execute(
            """SELECT t.id, t.serial, t.maker, t.itp, c.contract_number, c.application,
                      t.active, (SELECT max(k.collected_at) FROM remise_keys k
                                  WHERE k.terminal_serial = t.serial)
                 FROM terminals t LEFT JOIN contracts c ON c.id = t.contract_id
                WHERE %(num)s::text IS NULL OR c.contract_number = %(num)s
                ORDER BY t.serial""", {"num": contract_number}).fetchall()
    if as_json:
        emit_json([{"id": r[0], "serial": r[1], "maker": r[2], "itp": r[3], "contract": r[4],
                    "application": r[5], "active": r[6], "last_collected_at": r[7]}
                   for r in rows])
        return
    table(["ID", "SERIAL", "MAKER", "ITP", "CONTRACT", "ACTIVE", "LAST TELECOLLECTE"],
          [[r[0], r[1], r[2], r[3], r[4], "yes" if r[6] else "no", paris(r[7]) or "never"]
           for r in rows], right=(0,))


@command.command()
@click.argument("serial")
@click.option("--contract", "contract_number", required=True, help="Its contract number.")
@click.option("--application", default="CBEMV", show_default=True,
              help="Application of that contract.")
@click.option("--maker", help="Ingenico, Verifone, PAX...")
@click.option("--itp", help="Terminal identifier at the acquirer (ITP).")
@json_option
@database_options
@errors
def add(*, serial: str, contract_number: str, application: str, maker: str | None,
        itp: str | None, as_json: bool, dsn: str | None, state_dir: str) -> None:
    """Register a new terminal on a contract.

    \b
    Example:
      mpctl terminals add ING0100042 --contract 0012345 --maker Ingenico --itp ITP01
    """
    if not serial.strip() or not serial.isprintable() or len(serial) > 64:
        raise fail("SERIAL: empty, too long or not printable", 2)
    with database(dsn, state_dir) as conn:
        if conn.execute("SELECT 1 FROM terminals WHERE serial = %s", (serial,)).fetchone():
            raise fail(f"SERIAL: terminal {serial} already exists; use `mpctl terminals "
                       "move` to change its contract", 2)
        terminal_id = upsert_terminal(conn, serial, _contract(conn, contract_number,
                                                              application),
                                      maker=maker, itp=itp)
        conn.commit()
    if as_json:
        emit_json({"id": terminal_id, "serial": serial, "contract": contract_number})
    else:
        click.echo(f"terminal {serial} added on contract {contract_number} (id {terminal_id})")


@command.command()
@click.argument("serial")
@click.option("--contract", "contract_number", required=True, help="Its new contract.")
@click.option("--application", default="CBEMV", show_default=True,
              help="Application of that contract.")
@json_option
@database_options
@errors
def move(*, serial: str, contract_number: str, application: str, as_json: bool,
         dsn: str | None, state_dir: str) -> None:
    """Move a terminal to another contract; its past remises stay where they were.

    \b
    Example:
      mpctl terminals move ING0100042 --contract 0117074
    """
    with database(dsn, state_dir) as conn:
        row = conn.execute(
            "SELECT t.id, c.contract_number FROM terminals t"
            " LEFT JOIN contracts c ON c.id = t.contract_id WHERE t.serial = %s",
            (serial,)).fetchone()
        if row is None:
            raise NotFound(f"no terminal {serial}")
        target = _contract(conn, contract_number, application)
        upsert_terminal(conn, serial, target)
        kept = conn.execute("SELECT count(*) FROM remise_keys WHERE terminal_serial = %s",
                            (serial,)).fetchone()
        conn.commit()
    count = kept[0] if kept else 0
    if as_json:
        emit_json({"serial": serial, "from": row[1], "to": contract_number,
                   "remises_kept": count})
    else:
        click.echo(f"terminal {serial} moved from {row[1]} to {contract_number}; its {count} "
                   "remise(s) stay under the contract they were collected on")
