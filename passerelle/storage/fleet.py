"""Contracts and terminals: the reference data a remise is checked against and copied from.

A terminal has one current contract; moving it records the change in `terminal_contracts`
and leaves stored remises under the contract they were collected on.
"""

from __future__ import annotations

import msgspec
import psycopg

from passerelle.storage.db import StorageError, translate_errors


class Contract(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An acceptor contract (contrat commerçant) for one application."""

    contract_number: str
    application: str
    bank_code: str
    rang: str = "000"
    acquirer: str | None = None
    label: str | None = None
    trade_name: str | None = None
    siret: str | None = None


def upsert_contract(conn: psycopg.Connection, contract: Contract) -> int:
    """Create or update a contract; return its id."""
    with translate_errors(f"saving contract {contract.contract_number!r}"):
        row = conn.execute(
            """INSERT INTO contracts (contract_number, application, bank_code, rang, acquirer,
                                      label, trade_name, siret)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (contract_number, application) DO UPDATE
                  SET bank_code = EXCLUDED.bank_code, rang = EXCLUDED.rang,
                      acquirer = EXCLUDED.acquirer, label = EXCLUDED.label,
                      trade_name = EXCLUDED.trade_name, siret = EXCLUDED.siret
               RETURNING id""",
            (
                contract.contract_number, contract.application, contract.bank_code,
                contract.rang, contract.acquirer, contract.label, contract.trade_name,
                contract.siret,
            ),
        ).fetchone()
    assert row is not None
    return row[0]


def upsert_terminal(
    conn: psycopg.Connection,
    serial: str,
    contract_id: int,
    *,
    maker: str | None = None,
    itp: str | None = None,
) -> int:
    """Create a terminal or move it to `contract_id`, keeping the history of moves."""
    with translate_errors(f"saving terminal {serial!r}"), conn.transaction():
        current = conn.execute(
            "SELECT id, contract_id FROM terminals WHERE serial = %s FOR UPDATE", (serial,)
        ).fetchone()
        if current is None:
            row = conn.execute(
                "INSERT INTO terminals (serial, maker, itp, contract_id)"
                " VALUES (%s, %s, %s, %s) RETURNING id",
                (serial, maker, itp, contract_id),
            ).fetchone()
            assert row is not None
            terminal_id = row[0]
        else:
            terminal_id, previous = current
            conn.execute(
                "UPDATE terminals SET maker = COALESCE(%s, maker), itp = COALESCE(%s, itp),"
                " contract_id = %s, updated_at = now() WHERE id = %s",
                (maker, itp, contract_id, terminal_id),
            )
            if previous == contract_id:
                return terminal_id
            conn.execute(
                "UPDATE terminal_contracts SET valid_to = now()"
                " WHERE terminal_id = %s AND valid_to IS NULL",
                (terminal_id,),
            )
        conn.execute(
            "INSERT INTO terminal_contracts (terminal_id, contract_id) VALUES (%s, %s)",
            (terminal_id, contract_id),
        )
    return terminal_id


def require_contract(conn: psycopg.Connection, contract_number: str, application: str) -> int:
    """The id of a contract, or a StorageError naming what is unknown."""
    row = conn.execute(
        "SELECT id FROM contracts WHERE contract_number = %s AND application = %s",
        (contract_number, application),
    ).fetchone()
    if row is None:
        raise StorageError(f"unknown contract {contract_number!r} for {application!r}")
    return row[0]
