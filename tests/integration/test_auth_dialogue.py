"""The authorization dialogue end to end: a terminal over CBCOM -> switchd -> acquirer
simulator on a real socket, and back; with PostgreSQL for the directory, SAF and the log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest

from passerelle.codecs.iso8583 import Message, encode
from passerelle.sim.acquirer import Rules
from passerelle.sim.terminal import Terminal
from passerelle.switchd.authorization import _expired
from tests.integration.auth_helpers import (
    CB2A,
    PAN,
    answer_of,
    auth_request,
    auth_stack,
    setup_directory,
)

pytestmark = pytest.mark.integration
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def _ask(port: int, *requests: bytes) -> list[Any]:
    async with await Terminal.dial_cbcom("127.0.0.1", port) as tpe:
        return [answer_of(await tpe.exchange(request)) for request in requests]


@pytest.mark.parametrize("profile", ["iso93-binary", "iso87-ascii", "cb2a"])
def test_approve_and_decline_through_each_acquirer_profile(tmp_path: Path, profile: str) -> None:
    async def scenario() -> None:
        rules = {"acq-a": Rules(decline_above=50_000), "acq-b": Rules()}
        async with auth_stack(tmp_path, rules=rules, profiles={"acq-a": profile}) as stack:
            approved, declined = await _ask(stack.port, auth_request(stan=1, amount=1500),
                                            auth_request(stan=2, amount=60_000))
            assert approved.mti == "0110"
            assert approved.get(39) == "00"
            assert approved.get(38) == "100001"
            assert approved.get(55) == (("0091", bytes.fromhex("07FAAFB2E41926243030")),)
            assert approved.get(11) == "000001" and approved.get(2) == PAN
            assert 59 in approved and all(tag != "0101" for tag, _ in approved.get(59))
            assert declined.get(39) == "51"
            assert 38 not in declined and 55 not in declined
            assert stack.sims["acq-a"].requests[
                "1100" if profile == "iso93-binary" else "0100"] == 2
            assert stack.sims["acq-b"].approved == 0
            counted = generate_latest(stack.daemon.metrics.registry).decode()
            assert 'switchd_messages_total{mti="0100",result="00"} 1.0' in counted
            assert 'switchd_messages_total{mti="0100",result="51"} 1.0' in counted

    run(scenario())


@pytest.mark.parametrize("profile", ["iso93-binary", "iso87-ascii", "cb2a"])
def test_a_financial_0200_is_authorized_like_a_0100_and_answered_0210(tmp_path: Path,
                                                                       profile: str) -> None:
    def financial(**values: Any) -> bytes:
        return encode(CB2A, "0200", Message.parse(auth_request(**values), CB2A).to_dict())

    async def scenario() -> None:
        rules = {"acq-a": Rules(decline_above=50_000), "acq-b": Rules()}
        async with auth_stack(tmp_path, rules=rules, profiles={"acq-a": profile}) as stack:
            approved, declined, expired = await _ask(
                stack.port, financial(stan=1), financial(stan=2, amount=60_000),
                financial(stan=3, expiry="2001"))
            assert (approved.mti, approved.get(39), approved.get(38)) == ("0210", "00", "100001")
            assert (declined.mti, declined.get(39)) == ("0210", "51")
            assert (expired.mti, expired.get(39)) == ("0210", "54")
            # Class 2 towards the acquirer: 1200 (ISO 93) or 0200.
            assert stack.sims["acq-a"].requests[
                "1200" if profile == "iso93-binary" else "0200"] == 2

    run(scenario())


def test_validation_codes(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with auth_stack(tmp_path) as stack:
            bad_luhn = PAN[:-1] + str((int(PAN[-1]) + 1) % 10)
            answers = await _ask(
                stack.port,
                auth_request(stan=1, expiry="2001"),  # expired
                auth_request(stan=2, pan=bad_luhn),
                auth_request(stan=3, terminal="NOBODY01"),  # unknown terminal
                auth_request(stan=4, contract="7654321"),  # not the terminal's contract
                auth_request(stan=5, amount=0),
                auth_request(stan=6, currency="840"),
            )
            assert [a.get(39) for a in answers] == ["54", "14", "03", "03", "13", "12"]
            assert sum(sim.requests["1100"] for sim in stack.sims.values()) == 0

    run(scenario())


def test_format_error_names_the_field(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with auth_stack(tmp_path) as stack:
            bad_expiry = auth_request(stan=9, expiry="2613")  # month 13
            truncated = auth_request(stan=10)[:-20]
            # Chip data whose first sub-element claims more bytes than field 55 holds.
            request = auth_request(stan=11)
            start = request.index(bytes(Message.parse(request, CB2A).raw(55)))
            broken_icc = bytearray(request)
            broken_icc[start + 3] = 0xFF  # after 55's length byte and the 2-byte tag
            answers = await _ask(stack.port, bad_expiry, truncated, bytes(broken_icc))
            assert answers[0].get(39) == "30"
            assert answers[0].get(44) == (("AA", "01400"),)
            assert answers[1].get(39) == "30"
            assert answers[1].get(44)[0][0] == "AA"
            assert answers[1].get(11) == "000010"
            assert answers[2].get(39) == "30"
            assert answers[2].get(44) == (("AA", "05500"),)
            assert sum(sim.requests["1100"] for sim in stack.sims.values()) == 0

    run(scenario())


def test_a_request_repeated_while_in_flight_is_answered_94_once(tmp_path: Path) -> None:
    """Two sessions of one terminal send the same request (terminal, STAN, date/time) while
    the acquirer holds the first: the repeat gets 94 at once, counted against the acquirer
    it would have gone to, and the first is still answered by the acquirer."""
    async def scenario() -> None:
        rules = {"acq-a": Rules(latency=0.3), "acq-b": Rules()}
        async with auth_stack(tmp_path, rules=rules) as stack:
            first = asyncio.create_task(_ask(stack.port, auth_request(stan=7)))
            while stack.services.links["acq-a"].mux.in_flight == 0:
                await asyncio.sleep(0.005)
            started = time.monotonic()
            (repeat,) = await _ask(stack.port, auth_request(stan=7))
            assert repeat.get(39) == "94" and time.monotonic() - started < 0.25
            (original,) = await first
            assert original.get(39) == "00" and original.get(38) == "100001"
            assert stack.sims["acq-a"].requests["1100"] == 1
            assert stack.sims["acq-b"].requests["1100"] == 0
            counted = generate_latest(stack.daemon.metrics.registry).decode()
            assert 'switchd_messages_total{mti="0100",result="94"} 1.0' in counted
            counted = generate_latest(stack.services.metrics.registry).decode()
            assert ('passerelle_authorizations_total{acquirer="acq-a",application="CBEMV",'
                    'result="94"} 1.0') in counted

    run(scenario())


def test_failover_to_the_next_acquirer_then_stand_in(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with auth_stack(tmp_path) as stack:
            await stack.sims["acq-a"].stop()
            (first,) = await _ask(stack.port, auth_request(stan=1))
            assert first.get(39) == "00"
            assert stack.sims["acq-b"].approved == 1
            await stack.sims["acq-b"].stop()
            # No database in this stack: no SAF, so no stand-in: 91.
            started = time.monotonic()
            (second,) = await _ask(stack.port, auth_request(stan=2))
            assert second.get(39) == "91"
            assert time.monotonic() - started < 2.0

    run(scenario())


def test_timeout_answers_before_the_deadline_and_reverses(tmp_path: Path, db_dsn: str) -> None:
    setup_directory(db_dsn)

    async def scenario() -> None:
        rules = {"acq-a": Rules(faults={1500: "delay"}, fault_delay=0.8),
                 "acq-b": Rules(faults={1500: "drop"})}
        async with auth_stack(tmp_path, rules=rules, dsn=db_dsn, deadline=1.5) as stack:
            started = time.monotonic()
            (answer,) = await _ask(stack.port, auth_request(stan=7, amount=1500))
            elapsed = time.monotonic() - started
            assert elapsed < 1.5
            # Both timed out: stand-in under the 30.00 EUR floor limit, advice queued.
            assert answer.get(39) == "00"
            assert answer.get(38).startswith("S")
            with psycopg.connect(db_dsn, autocommit=True) as conn:
                await _until(lambda: conn.execute(
                    "SELECT count(*) FROM saf WHERE delivered_at IS NOT NULL").fetchone()[0] == 3)
            for name in ("acq-a", "acq-b"):
                assert stack.sims[name].received["reversal"].total() == 1
            assert stack.sims["acq-a"].received["advice"].total() == 1
            # acq-a's late approval arrived after its timeout: a stray, not an answer.
            await _until(lambda: stack.services.links["acq-a"].mux.strays["late"] == 1)
            await stack.services.authlog.flush()
            metrics = generate_latest(stack.services.metrics.registry).decode()
            assert 'passerelle_stand_in_total{application="CBEMV"} 1.0' in metrics
            assert ('passerelle_authorizations_total{acquirer="acq-a",application="CBEMV",'
                    'result="00-standin"} 1.0') in metrics
            assert 'passerelle_acquirer_stray_answers_total{acquirer="acq-a",kind="late"} 1.0' \
                in metrics
            assert 'passerelle_saf_delivered_total{acquirer="acq-b",kind="reversal"} 1.0' \
                in metrics
        with psycopg.connect(db_dsn) as conn:
            rows = conn.execute("SELECT pan_masked, response_code, stand_in, amount, acquirer,"
                                " length(pan_hmac) FROM authorizations").fetchall()
            saf = conn.execute("SELECT kind, count(*) FROM saf WHERE delivered_at IS NOT NULL"
                               " GROUP BY kind ORDER BY kind").fetchall()
        assert rows == [(f"{PAN[:6]}******{PAN[-4:]}", "00", True, 1500, "acq-a", 32)]
        assert saf == [("advice", 1), ("reversal", 2)]

    run(scenario())


def test_stand_in_above_the_floor_limit_is_refused(tmp_path: Path, db_dsn: str) -> None:
    setup_directory(db_dsn)

    async def scenario() -> None:
        async with auth_stack(tmp_path, dsn=db_dsn) as stack:
            for sim in stack.sims.values():
                await sim.stop()
            await _until(lambda: not any(link.up for link in stack.services.links.values()))
            small, large = await _ask(stack.port, auth_request(stan=1, amount=2999),
                                      auth_request(stan=2, amount=3001))
            assert small.get(39) == "00" and small.get(38).startswith("S")
            assert large.get(39) == "91"

    run(scenario())


async def _until(condition: Any, timeout: float = 5.0) -> None:
    """Poll a condition driven by real sockets (bounded; the poll is not the sync point)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def test_the_whole_stack_runs_on_uvloop(tmp_path: Path) -> None:
    import uvloop

    async def scenario() -> list[Any]:
        async with auth_stack(tmp_path) as stack:
            return await _ask(stack.port, *(auth_request(stan=n) for n in range(1, 21)))

    answers = uvloop.run(asyncio.wait_for(scenario(), 60))
    assert [a.get(39) for a in answers] == ["00"] * 20
    assert len({a.get(38) for a in answers}) == 20


def test_a_terminal_reversal_reaches_the_acquirer_that_approved(tmp_path: Path,
                                                                 db_dsn: str) -> None:
    setup_directory(db_dsn)

    async def scenario() -> None:
        async with auth_stack(tmp_path, dsn=db_dsn) as stack:
            original = auth_request(stan=5)
            values = Message.parse(original, CB2A).to_dict()
            values[11] = "000006"
            values[90] = "0100" + "000005" + "0124163700" + "0" * 22
            for number in (35, 55, 59):
                values.pop(number, None)
            reversal = encode(CB2A, "0400", values)
            unknown = encode(CB2A, "0400", {**values, 11: "000007",
                                            90: "0100000099" + "0" * 32})
            approved, reversed_, unmatched = await _ask(stack.port, original, reversal,
                                                        unknown)
            assert approved.get(39) == "00"
            assert (reversed_.mti, reversed_.get(39)) == ("0410", "00")
            assert (unmatched.mti, unmatched.get(39)) == ("0410", "00")
            with psycopg.connect(db_dsn, autocommit=True) as conn:
                await _until(lambda: conn.execute(
                    "SELECT count(*) FROM saf WHERE delivered_at IS NOT NULL").fetchone()[0] == 1)
            ((kind, key),) = stack.sims["acq-a"].arrivals
            assert kind == "reversal" and key[1:3] == ("TPE00001", "000005")

    run(scenario())


@given(st.integers(0, 99), st.integers(1, 12),
       st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31), timezones=st.just(UTC)))
def test_a_card_is_expired_after_its_month_and_not_during_it(yy: int, mm: int,
                                                              now: datetime) -> None:
    # Cards expire at the end of their YYMM month (years within the century).
    assert _expired(f"{yy:02d}{mm:02d}", now) is ((yy, mm) < (now.year % 100, now.month))
