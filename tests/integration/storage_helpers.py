"""Builders shared by the storage tests: a known fleet and realistic remises."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import psycopg

from passerelle.storage.db import open_pool
from passerelle.storage.fleet import Contract, upsert_contract, upsert_terminal
from passerelle.storage.pan import PanHmacKey, mask_pan, pan_hmac
from passerelle.storage.remises import (
    Remise,
    RemiseTransaction,
    RemiseWriter,
    compute_totals,
)

KEY = PanHmacKey(version=1, key=b"k" * 32)
EUR = 978
BINS = ("497010", "513100", "374245")
T = TypeVar("T")


def luhn_complete(prefix: str) -> str:
    """Append the check digit that makes `prefix` Luhn-valid."""
    for check in "0123456789":
        candidate = prefix + check
        total = 0
        for index, char in enumerate(reversed(candidate)):
            value = int(char) * (2 if index % 2 else 1)
            total += value - 9 if value > 9 else value
        if total % 10 == 0:
            return candidate
    raise AssertionError("unreachable")


def make_pan(rng: random.Random) -> str:
    bin_ = rng.choice(BINS)
    length = 15 if bin_.startswith("37") else 16
    body = "".join(rng.choice("0123456789") for _ in range(length - 7))
    return luhn_complete(bin_ + body)


def setup_fleet(dsn: str, terminals: int = 1, applications: tuple[str, ...] = ("CBEMV",)) -> None:
    """Contracts 1234567 (one per application) and terminals TPE0000..."""
    with psycopg.connect(dsn) as conn:
        ids = [
            upsert_contract(
                conn,
                Contract(
                    contract_number="1234567", application=app, bank_code="30004",
                    rang="001", acquirer="bnp", label="BOULANGERIE CENTRE",
                    trade_name="Au Bon Pain", siret="99900000000011",
                ),
            )
            for app in applications
        ]
        for number in range(terminals):
            upsert_terminal(conn, f"TPE{number:04d}", ids[0], maker="Ingenico", itp="ITP01")
        conn.commit()


def make_remise(
    *,
    terminal: str = "TPE0000",
    remise_number: int = 1,
    transactions: int = 5,
    application: str = "CBEMV",
    seed: int = 0,
    collected_at: datetime | None = None,
    pans: list[str] | None = None,
) -> Remise:
    """A remise whose declared totals agree with its transactions."""
    rng = random.Random(seed)
    collected_at = collected_at or datetime.now(UTC).replace(microsecond=0)
    txs = []
    for seq in range(1, transactions + 1):
        pan = make_pan(rng)
        if pans is not None:
            pans.append(pan)
        digest, version = pan_hmac(KEY, pan)
        roll = rng.random()
        operation = "refund" if roll < 0.1 else "cancellation" if roll < 0.15 else "purchase"
        result = "declined" if rng.random() < 0.05 else "approved"
        txs.append(
            RemiseTransaction(
                seq=seq,
                at=collected_at - timedelta(minutes=rng.randint(1, 600)),
                operation=operation,
                result=result,
                amount=rng.randint(100, 50_000),
                currency=EUR,
                pan_masked=mask_pan(pan),
                pan_hmac=digest,
                pan_hmac_key_version=version,
                expiry=f"{rng.randint(27, 31)}{rng.randint(1, 12):02d}",
                response_code="00" if result == "approved" else "05",
                authorization_number=f"{rng.randint(0, 999999):06d}",
                issuer="BNP PARIBAS",
                product="VISA CLASSIC",
                rrn=f"{rng.randint(0, 10**12 - 1):012d}",
                stan=f"{seq:06d}",
                aid="A0000000421010",
            )
        )
    return Remise(
        terminal_serial=terminal,
        contract_number="1234567",
        application=application,
        remise_number=remise_number,
        file_number=remise_number,
        currency=EUR,
        collected_at=collected_at,
        declared=compute_totals(txs),
        transactions=txs,
        ack_window=8,
    )


def run_with_writer(dsn: str, body: Callable[[RemiseWriter], Awaitable[T]], size: int = 4) -> T:
    """Run `body(writer)` on a fresh pool in a fresh event loop."""

    async def main() -> T:
        async with open_pool(dsn) as pool:
            await pool.resize(min_size=1, max_size=size)
            return await body(RemiseWriter(pool))

    return asyncio.run(main())
