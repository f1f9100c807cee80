"""Bad input on the télécollecte: a clear answer, a log line naming it, nothing half-stored."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from passerelle.codecs.iso8583 import encode
from passerelle.sim.telecollecte import (
    CB2A,
    Batch,
    Faults,
    answer_code,
    dial,
    end_message,
    generate_batches,
    header_message,
    sign_on_message,
    telecollecte,
    transaction_message,
)
from passerelle.sim.terminal import Terminal
from passerelle.switchd.gateway import Gateway
from tests.integration.storage_helpers import setup_fleet
from tests.integration.telecollecte_helpers import pki_in, port, running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _counts(dsn: str) -> tuple[int, int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT (SELECT count(*) FROM remise_keys),"
                           " (SELECT count(*) FROM remises),"
                           " (SELECT count(*) FROM transactions)").fetchone()
    assert row is not None
    return row


def _batch(seed: int = 1, terminal: str = "TPE0000", contract: str = "1234567",
           transactions: int = 6, remise: int = 1) -> Batch:
    return generate_batches(random.Random(seed), terminal, contract, "CBEMV", days=1,
                            per_day=(transactions, transactions), first_remise=remise)[0]


def _run(db_dsn: str, tmp_path: Path,
         body: Callable[[Gateway], Awaitable[Any]]) -> tuple[Any, list[dict[str, Any]]]:
    setup_fleet(db_dsn, terminals=1)
    pki = pki_in(tmp_path)

    async def scenario() -> Any:
        async with running_gateway(db_dsn, tmp_path / "state", pki) as gateway:
            result = await body(gateway)
            # The daemon is still serving: a correct télécollecte goes through afterwards.
            good = await telecollecte(
                lambda: dial("cbcom", "127.0.0.1", port(gateway, "cbcom")),
                [_batch(seed=99, remise=500)])
            assert good[0].code == "00"
            return result

    with capture_logs() as logs:
        result = asyncio.run(scenario())
    return result, logs


def _refusals(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("event") == "telecollecte.refused"]


async def _session(gateway: Gateway) -> Terminal:
    return await dial("cbcom", "127.0.0.1", port(gateway, "cbcom"))


def test_totals_that_disagree_are_stored_with_the_difference_named(
        db_dsn: str, tmp_path: Path) -> None:
    batch = _batch()

    async def body(gateway: Gateway) -> Any:
        first = await telecollecte(lambda: _session(gateway), [batch],
                                   faults=Faults(wrong_totals=True))
        # The same remise again, its totals now right: answered for what is stored.
        again = await telecollecte(lambda: _session(gateway), [batch])
        return first + again

    results, logs = _run(db_dsn, tmp_path, body)

    assert [r.code for r in results] == ["95", "95"]  # reconcile error: stored, differs
    assert [e["event"] for e in logs if e.get("event") == "telecollecte.repeat_differs"]
    with psycopg.connect(db_dsn) as conn:
        status, count = conn.execute(
            "SELECT status, transaction_count FROM remises WHERE remise_number = %s",
            (batch.remise_number,)).fetchone() or (None, None)
    assert status is not None and status.startswith("ECART ACHATS MONTANT DECLARE")
    assert count == len(batch.transactions)
    stored = [e for e in logs if e.get("event") == "telecollecte.remise_stored"
              and e.get("code") == "95"]
    assert stored and stored[0]["status"] == status


def test_messages_out_of_order_are_refused_and_nothing_is_stored(
        db_dsn: str, tmp_path: Path) -> None:
    batch = _batch()

    async def body(gateway: Gateway) -> list[tuple[str, str | None]]:
        answers = []
        async with await _session(gateway) as tpe:
            # A file header before the sign-on.
            answers.append(answer_code(await tpe.exchange(header_message(batch, 4)))[:2])
            answers.append(answer_code(await tpe.exchange(
                sign_on_message(batch.terminal, batch.contract)))[:2])
            answers.append(answer_code(await tpe.exchange(header_message(batch, 4)))[:2])
            tpe.send(transaction_message(batch, 1, batch.transactions[0]))
            # Message 3 where 2 was due: refused at once, the file is dropped.
            answer = await tpe.exchange(transaction_message(batch, 3, batch.transactions[2]))
            assert batch.transactions[2].pan.encode() not in answer
            answers.append(answer_code(answer)[:2])
            answers.append(answer_code(await tpe.exchange(end_message(batch)))[:2])
        return answers

    answers, logs = _run(db_dsn, tmp_path, body)

    assert answers == [("0316", "12"), ("0814", "00"), ("0316", "00"), ("0256", "12"),
                       ("0516", "12")]
    reasons = [e["reason"] for e in _refusals(logs)]
    assert "message number 3 out of order, expected 2" in reasons
    assert any("0306 in phase connected" in r for r in reasons)
    assert _counts(db_dsn) == (1, 1, 6)  # only the correct télécollecte after it


def test_a_window_never_acknowledged_refuses_the_file(db_dsn: str, tmp_path: Path) -> None:
    batch = _batch(transactions=7)

    async def body(gateway: Gateway) -> Any:
        return await telecollecte(lambda: _session(gateway), [batch], window=3,
                                  faults=Faults(end_early=2))

    results, logs = _run(db_dsn, tmp_path, body)

    assert (results[0].refused_by, results[0].code) == ("0516", "12")
    assert any("window from 4 never acknowledged" in e["reason"] for e in _refusals(logs))
    assert _counts(db_dsn) == (1, 1, 6)


def test_unknown_terminal_and_unknown_contract_are_refused(db_dsn: str, tmp_path: Path
                                                           ) -> None:
    stranger = _batch(terminal="NOPE0001")
    no_contract = _batch(contract="7654321")

    async def body(gateway: Gateway) -> Any:
        first = await telecollecte(lambda: _session(gateway), [stranger])
        second = await telecollecte(lambda: _session(gateway), [no_contract])
        return first + second

    results, logs = _run(db_dsn, tmp_path, body)

    assert [(r.refused_by, r.code) for r in results] == [("0814", "58"), ("0316", "03")]
    reasons = [e["reason"] for e in _refusals(logs)]
    assert "unknown terminal 'NOPE0001'" in reasons
    assert "unknown contract '7654321' for application 'CBEMV'" in reasons
    assert _counts(db_dsn) == (1, 1, 6)


def test_a_malformed_transaction_gets_a_format_error_naming_the_field(
        db_dsn: str, tmp_path: Path) -> None:
    batch = _batch()

    async def body(gateway: Gateway) -> Any:
        async with await _session(gateway) as tpe:
            await tpe.exchange(sign_on_message(batch.terminal, batch.contract))
            await tpe.exchange(header_message(batch, 4))
            tx = batch.transactions[0]
            bad = encode(CB2A, "0246", {
                2: tx.pan, 3: "310000", 4: "000000000100", 11: "000001", 12: "101010",
                13: "0101", 39: "00", 41: "TPE0000 ", 42: "1234567".ljust(15), 49: "978",
                71: "0001"})
            answer = await tpe.exchange(bad)
            assert tx.pan.encode() not in answer and bytes.fromhex(
                tx.pan if len(tx.pan) % 2 == 0 else "0" + tx.pan) not in answer
            mti, code, message = answer_code(answer)
            return mti, code, message.get(44)

    (mti, code, field44), logs = _run(db_dsn, tmp_path, body)

    assert (mti, code, field44) == ("0256", "30", (("AA", "00300"),))
    assert any(e["field"] == 3 for e in _refusals(logs))
    assert _counts(db_dsn) == (1, 1, 6)


def _repeat(message: bytes) -> bytes:
    """The same message with the repeat MTI (xxx6 -> xxx7, 0804 -> 0805)."""
    mti = message[:2].hex()
    return bytes.fromhex(mti[:3] + str(int(mti[3]) + 1)) + message[2:]


def test_repeats_after_lost_answers_are_answered_again_and_counted_once(
        db_dsn: str, tmp_path: Path) -> None:
    batch = _batch(transactions=5)

    async def body(gateway: Gateway) -> list[tuple[str, str | None]]:
        answers = []
        async with await _session(gateway) as tpe:
            sign_on = sign_on_message(batch.terminal, batch.contract)
            answers.append(answer_code(await tpe.exchange(sign_on))[:2])
            answers.append(answer_code(await tpe.exchange(_repeat(sign_on)))[:2])
            header = header_message(batch, 4)
            answers.append(answer_code(await tpe.exchange(header))[:2])
            answers.append(answer_code(await tpe.exchange(_repeat(header)))[:2])
            messages = [transaction_message(batch, n, tx)
                        for n, tx in enumerate(batch.transactions, 1)]
            for message in messages[:4]:
                tpe.send(message)
            answers.append(answer_code(await tpe.receive())[:2])
            answers.append(answer_code(await tpe.exchange(_repeat(messages[3])))[:2])
            answers.append(answer_code(await tpe.exchange(messages[4]))[:2])
            answers.append(answer_code(await tpe.exchange(end_message(batch)))[:2])
        return answers

    answers, _logs = _run(db_dsn, tmp_path, body)

    assert answers == [("0814", "00"), ("0814", "00"), ("0316", "00"), ("0316", "00"),
                       ("0256", "00"), ("0256", "00"), ("0256", "00"), ("0516", "00")]
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute("SELECT transaction_count, status FROM remises"
                           " WHERE remise_number = %s", (batch.remise_number,)).fetchone()
    assert row == (5, "REMISE CORRECTE")
