"""CBCOM timers during a télécollecte, on a real switchd child process: a 0246 that gets no
answer (most of a window) owes the terminal nothing, so a pause longer than TGR inside a
window or between windows is timed by TSI and the file completes."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import psycopg
import pytest

from passerelle.sim.telecollecte import (
    answer_code,
    close_message,
    dial,
    end_message,
    generate_batches,
    header_message,
    sign_on_message,
    transaction_message,
)
from passerelle.switchd.process import SwitchdProcess
from tests.integration.storage_helpers import setup_fleet
from tests.integration.telecollecte_helpers import assert_stored_as_sent, pki_in, settings_dict

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TGR = 0.5
PAUSE = 1.0  # the terminal's own pace: twice TGR, well under TSI
WINDOW = 3


@pytest.mark.parametrize("listener", ["cbcom", "xot"])
def test_pauses_longer_than_tgr_inside_and_between_windows_complete_the_file(
        listener: str, db_dsn: str, tmp_path: Path) -> None:
    setup_fleet(db_dsn, terminals=1)
    pki = pki_in(tmp_path)
    settings = settings_dict(db_dsn, tmp_path / "state", pki)
    settings["cbcom"] = {"tgr": TGR, "tsi": 30.0}
    batch = generate_batches(random.Random(11), "TPE0000", "1234567", "CBEMV", days=1,
                             per_day=(2 * WINDOW, 2 * WINDOW))[0]
    count = len(batch.transactions)

    async def scenario(process: SwitchdProcess) -> tuple[list[str | None], bool]:
        codes: list[str | None] = []
        async with await dial(listener, "127.0.0.1", process.port(listener)) as tpe:
            codes.append(answer_code(await tpe.exchange(
                sign_on_message(batch.terminal, batch.contract)))[1])
            codes.append(answer_code(await tpe.exchange(header_message(batch, WINDOW)))[1])
            for number, tx in enumerate(batch.transactions, 1):
                tpe.send(transaction_message(batch, number, tx))
                if number % WINDOW == 0 or number == count:
                    mti, code, ack = answer_code(await tpe.receive())
                    assert (mti, int(ack.get(71))) == ("0256", number)
                    codes.append(code)
                # A pause after every 0246, the window's last included: inside a window
                # (its 0246 got no answer) and between windows (after the 0256).
                await asyncio.sleep(PAUSE)
            codes.append(answer_code(await tpe.exchange(end_message(batch)))[1])
            codes.append(answer_code(await tpe.exchange(close_message(batch.terminal)))[1])
            return codes, tpe.aborted is None

    with SwitchdProcess(settings, tmp_path, ready_timeout=60) as process:
        codes, not_aborted = asyncio.run(scenario(process))
        assert not process.find("cbcom.aborted", code="0x1A")
    assert codes == ["00"] * (2 + count // WINDOW + 2)
    assert not_aborted
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute("SELECT remise_number, transaction_count FROM remises").fetchall()
    assert rows == [(batch.remise_number, count)]
    assert_stored_as_sent(db_dsn, [batch])


def test_a_silent_terminal_after_an_unanswered_0246_is_ended_by_tsi_not_tgr(
        db_dsn: str, tmp_path: Path) -> None:
    """The 0246 needs no answer, so the silence after it is inactivity: AB 0x19 (TSI),
    not 0x1A (TGR, which is shorter here)."""
    setup_fleet(db_dsn, terminals=1)
    pki = pki_in(tmp_path)
    settings = settings_dict(db_dsn, tmp_path / "state", pki)
    settings["cbcom"] = {"tgr": TGR, "tsi": 1.0}
    batch = generate_batches(random.Random(12), "TPE0000", "1234567", "CBEMV", days=1,
                             per_day=(WINDOW, WINDOW))[0]

    async def scenario(process: SwitchdProcess) -> int | None:
        async with await dial("cbcom", "127.0.0.1", process.port("cbcom")) as tpe:
            await tpe.exchange(sign_on_message(batch.terminal, batch.contract))
            await tpe.exchange(header_message(batch, WINDOW))
            tpe.send(transaction_message(batch, 1, batch.transactions[0]))
            # then silence: the 0246 needs no answer, so TSI (1 s), not TGR, ends the session
            await tpe.wait_closed()
            return tpe.aborted.code if tpe.aborted is not None else None

    with SwitchdProcess(settings, tmp_path, ready_timeout=60) as process:
        code = asyncio.run(scenario(process))
    assert code == 0x19
