"""`kill -9` switchd in the middle of a file, and just after a 0506: the terminal dials again,
each remise is stored exactly once. Then no full card number in a dump of the database nor
in switchd's logs."""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import subprocess
from pathlib import Path

import psycopg
import pytest

from passerelle.sim.telecollecte import (
    Batch,
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
from passerelle.storage.embedded import postgres_bin_dir
from passerelle.switchd.process import SwitchdProcess
from tests.integration.storage_helpers import setup_fleet
from tests.integration.telecollecte_helpers import (
    assert_stored_as_sent,
    card_numbers_in,
    pki_in,
    settings_dict,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


async def _up_to(tpe: Terminal, batch: Batch, sent: int, window: int = 4) -> None:
    """Sign on, open the file, send its first `sent` transactions (acknowledged windows)."""
    assert answer_code(await tpe.exchange(sign_on_message(batch.terminal, batch.contract)))[1] \
        == "00"
    assert answer_code(await tpe.exchange(header_message(batch, window)))[1] == "00"
    for number, tx in enumerate(batch.transactions[:sent], 1):
        tpe.send(transaction_message(batch, number, tx))
        if number % window == 0 or number == len(batch.transactions):
            assert answer_code(await tpe.receive())[:2] == ("0256", "00")


def _pg_dump(dsn: str) -> str:
    pg_dump = shutil.which("pg_dump") or str(postgres_bin_dir() / "pg_dump")
    return subprocess.run([pg_dump, "--data-only", "--inserts", "-d", dsn],
                          capture_output=True, text=True, check=True, timeout=60).stdout


def test_switchd_killed_mid_batch_terminal_retries_stored_exactly_once(
        db_dsn: str, tmp_path: Path) -> None:
    setup_fleet(db_dsn, terminals=1)
    pki = pki_in(tmp_path)
    settings = settings_dict(db_dsn, tmp_path / "state", pki)
    batches = generate_batches(random.Random(9), "TPE0000", "1234567", "CBEMV", days=2,
                               per_day=(10, 10))
    processes: list[SwitchdProcess] = []

    def start() -> SwitchdProcess:
        # switchd runs the gateway (storage + télécollecte): the settings have [storage].
        processes.append(SwitchdProcess(settings, tmp_path, ready_timeout=60).start())
        return processes[-1]

    def kill(process: SwitchdProcess) -> None:
        process.signal(signal.SIGKILL)
        assert process.proc is not None
        process.proc.wait(10)

    try:
        first = start()

        async def killed_mid_file() -> bool:
            async with await dial("cbcom", "127.0.0.1", first.port("cbcom")) as tpe:
                await _up_to(tpe, batches[0], sent=6)
                await asyncio.to_thread(kill, first)
                await tpe.wait_closed()
                return tpe.closed

        assert asyncio.run(killed_mid_file())
        second = start()

        async def killed_after_0506() -> None:
            async with await dial("cbcom", "127.0.0.1", second.port("cbcom")) as tpe:
                await _up_to(tpe, batches[1], sent=len(batches[1].transactions))
                tpe.send(end_message(batches[1]))
                # Committed: switchd dies before the terminal reads any 0516.
                await asyncio.to_thread(second.wait_for, "telecollecte.remise_stored")
                await asyncio.to_thread(kill, second)

        asyncio.run(killed_after_0506())
        with psycopg.connect(db_dsn) as conn:
            before = conn.execute("SELECT remise_number FROM remises").fetchall()
        assert before == [(batches[1].remise_number,)]  # nothing of the first, half-sent file
        third = start()
        results = asyncio.run(telecollecte(
            lambda: dial("cbcom", "127.0.0.1", third.port("cbcom")), batches))
        assert [r.code for r in results] == ["00", "00"]
        assert third.find("telecollecte.remise_already_stored")  # the repeat, acknowledged
        assert third.stop() == 0
    finally:
        for process in processes:
            if process.proc is not None and process.proc.poll() is None:
                process.stop()

    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute("SELECT remise_number, transaction_count FROM remises"
                            " ORDER BY 1").fetchall()
    assert rows == [(b.remise_number, len(b.transactions)) for b in batches]
    assert_stored_as_sent(db_dsn, batches)
    # What an operator could leak: the database's data and switchd's logs.
    dump = _pg_dump(db_dsn)
    assert "497010" in dump or "513100" in dump or "453978" in dump  # masked cards are there
    sirets = frozenset(s for (s,) in psycopg.connect(db_dsn).execute(
        "SELECT siret FROM contracts").fetchall())  # Luhn-valid by design, and public
    assert card_numbers_in(dump, batches, sirets) == []
    logs = b"".join(line for p in processes for line in p.raw_lines).decode()
    assert "telecollecte.remise_stored" in logs
    assert card_numbers_in(logs, batches) == []
