"""Shared by the télécollecte tests: a gateway in-process or as a child process, a fleet."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg

from passerelle.config import parse_config
from passerelle.sim.pki import DemoPki, make_pki
from passerelle.sim.telecollecte import Batch
from passerelle.storage.pan import luhn_valid, mask_pan
from passerelle.switchd.gateway import Gateway, TelecollecteSettings

PAN_KEY_HEX = "6b" * 32
LISTENERS = ("xot", "cbcom", "cbcom-tls")


def settings_dict(dsn: str | None, state_dir: Path, pki: DemoPki, **telecollecte: Any
                  ) -> dict[str, Any]:
    """switchd + [storage] + [telecollecte] settings: every listener on a free port."""
    storage: dict[str, Any] = {"state_dir": str(state_dir), "connect_timeout_s": 1.0,
                               "pool_min_size": 0, "pool_max_size": 8}
    if dsn is not None:
        storage["dsn"] = dsn
    local = {"host": "127.0.0.1", "port": 0}
    return {
        "switchd": {"state_dir": str(state_dir), "drain_timeout": 10.0},
        "listeners": {"xot": dict(local), "cbcom": dict(local),
                      "cbcom-tls": {**local, "enabled": True, "cert": str(pki.cert),
                                    "key": str(pki.key)},
                      "iso": {"enabled": False}},
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": 0},
        "storage": storage,
        "telecollecte": {"pan_hmac_key": PAN_KEY_HEX, "replay_interval": 0.2,
                         "spool_retry_after": 0.5, **telecollecte},
    }


@asynccontextmanager
async def running_gateway(dsn: str, state_dir: Path, pki: DemoPki,
                          **telecollecte: Any) -> AsyncIterator[Gateway]:
    """A gateway on this event loop (real sockets), stopped on exit."""
    raw = settings_dict(dsn, state_dir, pki, **telecollecte)
    table = raw.pop("telecollecte")
    gateway = Gateway(parse_config(raw), TelecollecteSettings(**table))
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


def port(gateway: Gateway, listener: str) -> int:
    assert gateway.daemon is not None
    return gateway.daemon.listeners[listener].port


def pki_in(directory: Path) -> DemoPki:
    return make_pki(directory / "pki")


def expected_hmac(pan: str) -> bytes:
    return hmac.new(bytes.fromhex(PAN_KEY_HEX), pan.encode(), hashlib.sha256).digest()


def stored_transactions(dsn: str) -> dict[tuple[str, str, int, int], dict[str, Any]]:
    """(terminal, application, remise number, seq) -> the stored transaction row."""
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(
            "SELECT terminal_serial, remise_number, seq, operation, result, response_code,"
            " amount, currency, pan_masked, pan_hmac, expiry, authorization_number, issuer,"
            " product, rrn, stan, aid, tx_at, application FROM transactions")
        names = [d.name for d in cur.description or ()]
        return {(r[0], r[18], r[1], r[2]): dict(zip(names, r, strict=True))
                for r in cur.fetchall()}


def assert_stored_as_sent(dsn: str, batches: list[Batch]) -> None:
    """Every transaction of `batches` is stored exactly as the terminal sent it."""
    rows = stored_transactions(dsn)
    assert len(rows) == sum(len(b.transactions) for b in batches)
    for batch in batches:
        for seq, tx in enumerate(batch.transactions, 1):
            row = rows[batch.terminal, batch.application, batch.remise_number, seq]
            assert row["pan_masked"] == mask_pan(tx.pan)
            assert bytes(row["pan_hmac"]) == expected_hmac(tx.pan)
            assert (row["operation"], row["amount"], row["currency"]) == (
                tx.operation, tx.amount, batch.currency)
            assert row["result"] == ("approved" if tx.approved else "declined")
            assert row["response_code"] == tx.response_code
            assert row["tx_at"] == tx.at.replace(microsecond=0)
            assert (row["expiry"], row["authorization_number"], row["rrn"]) == (
                tx.expiry, tx.authorization_number, tx.rrn)
            assert (row["issuer"], row["product"], row["aid"]) == (tx.issuer, tx.product,
                                                                  tx.aid)
            assert row["application"] == batch.application


def card_numbers_in(text: str, sent: list[Batch] | None = None,
                    not_cards: frozenset[str] = frozenset()) -> list[str]:
    """Full card numbers found in `text`: Luhn-valid runs of 13-19 digits, and any PAN the
    terminals sent (a 12-digit run, an RRN, is no PAN: our BINs give 15-16 digit cards).
    `not_cards`: known Luhn-valid numbers that are not cards (a SIRET is Luhn-valid too)."""
    found = [run for run in re.findall(r"(?<!\d)\d{13,19}(?!\d)", text)
             if luhn_valid(run) and run not in not_cards]
    pans = {tx.pan for batch in sent or () for tx in batch.transactions}
    return found + [pan for pan in pans if pan in text]
