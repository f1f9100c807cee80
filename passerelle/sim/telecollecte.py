"""A terminal (TPE) performing a télécollecte, as switchd's dialogue expects it.

Builds on `sim.terminal.Terminal` (real XOT/X.25 or CBCOM over TCP/TLS, transfer mode) and
speaks the field usage written down in `passerelle.switchd.telecollecte`. Like a real
terminal it keeps a batch until it holds our 0516, and starts the whole session again when
the connection breaks (lost 0516, switchd restarted, network gone), a bounded number of
times. Faults can be switched on to exercise the gateway: lose the 0516, hang up in the
middle of a file, declare wrong totals, end a file early.

    batches = generate_batches(random.Random(1), "TPE00001", "1234567", "CBEMV", days=3)
    results = await telecollecte(lambda: dial("cbcom", host, port), batches)
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from passerelle.codecs.cbcom import PROTOCOL_TRANSFER, ProtocolId
from passerelle.codecs.errors import CodecError
from passerelle.codecs.iso8583 import Message, encode
from passerelle.codecs.profiles import get_profile
from passerelle.sim.history import luhn_complete
from passerelle.sim.terminal import SessionEnded, Terminal

__all__ = [
    "Batch",
    "Faults",
    "FileResult",
    "SimTransaction",
    "dial",
    "generate_batches",
    "telecollecte",
]

PARIS = ZoneInfo("Europe/Paris")
CB2A = get_profile("cb2a")
TRANSFER = ProtocolId(protocol_type=PROTOCOL_TRANSFER)
Operation = Literal["purchase", "refund", "cancellation"]

# Made-up but well-formed card ranges per application (the PANs are Luhn-valid).
_BINS = {
    "CBEMV": ("497010", "513100", "453978"),
    "CBCLESS": ("497010", "535110", "456735"),
    "AMEX": ("374245", "371449"),
    "CONECS": ("589310", "501807"),
}
_ISSUERS = {
    "CONECS": (("EDENRED", "TICKET RESTAURANT"), ("SWILE", "SWILE MEAL"),
               ("UP", "CHEQUE DEJEUNER"), ("PLUXEE", "PASS RESTAURANT")),
    "AMEX": (("AMERICAN EXPRESS", "GREEN"), ("AMERICAN EXPRESS", "GOLD")),
}
_CB_ISSUERS = (("BNP PARIBAS", "VISA CLASSIC"), ("CREDIT AGRICOLE", "MASTERCARD GOLD"),
               ("SOCIETE GENERALE", "CB VISA PREMIER"), ("LA BANQUE POSTALE", "CB VISA"))
_AIDS = {"CBEMV": "A0000000421010", "CBCLESS": "A0000000421010", "AMEX": "A000000025010801",
         "CONECS": "A0000005691010"}


@dataclass(frozen=True)
class SimTransaction:
    """A transaction as the terminal stored it (the full PAN stays in the terminal)."""

    pan: str
    operation: Operation
    amount: int
    at: datetime
    response_code: str = "00"
    expiry: str | None = None
    rrn: str | None = None
    authorization_number: str | None = None
    stan: int = 1
    aid: str | None = None
    issuer: str | None = None
    product: str | None = None

    @property
    def approved(self) -> bool:
        return self.response_code == "00"


@dataclass
class Batch:
    """One remise: one file of one terminal, contract and application."""

    terminal: str
    contract: str
    application: str
    remise_number: int
    file_number: int
    transactions: list[SimTransaction] = field(default_factory=list)
    currency: int = 978
    closed_at: datetime | None = None  # the terminal's clock at 0506 (None: now)

    def totals(self) -> dict[str, int]:
        """The terminal's own totals: approved purchases, refunds, cancellations, declined."""
        sums = {f"{k}_{s}": 0 for k in ("purchases", "refunds", "cancellations",
                                        "unauthorized") for s in ("count", "amount")}
        for tx in self.transactions:
            kind = ("unauthorized" if not tx.approved else
                    {"purchase": "purchases", "refund": "refunds"}.get(tx.operation,
                                                                        "cancellations"))
            sums[f"{kind}_count"] += 1
            sums[f"{kind}_amount"] += tx.amount
        return sums


@dataclass
class Faults:
    """What goes wrong, on the first attempt only unless said otherwise."""

    lose_0516: int = 0  # hang up right after the first N 0506 of the run, then retry
    disconnect_after: int | None = None  # hang up after this many 0246 (first attempt)
    wrong_totals: bool = False  # declare purchases 1 cent more than the transactions hold
    end_early: int = 0  # send 0506 this many 0246 before the announced count (no retry)


@dataclass
class FileResult:
    """What became of a batch: the 0516's (or refusal's) response code and totals."""

    batch: Batch
    code: str | None = None  # 39 of the 0516, or of the refusal (0814/0316/0256/0516)
    refused_by: str | None = None  # MTI of the answer that refused the batch
    totals: dict[int, str] = field(default_factory=dict)  # 0516 fields 74-89
    attempts: int = 0

    @property
    def acknowledged(self) -> bool:
        return self.refused_by is None and self.code in ("00", "95")


class Refusal(Exception):
    """switchd refused a message of a batch: response code and answering MTI."""

    def __init__(self, mti: str, code: str | None) -> None:
        super().__init__(f"{mti} 39={code}")
        self.mti, self.code = mti, code


# -- generation ------------------------------------------------------------------------------
def generate_batches(rng: random.Random, terminal: str, contract: str, application: str, *,
                     days: int = 3, per_day: tuple[int, int] = (5, 40),
                     first_remise: int = 1, now: datetime | None = None) -> list[Batch]:
    """One batch per day for the last `days` days (the oldest first), realistic content."""
    now = now or datetime.now(UTC)
    batches = []
    bins = _BINS.get(application, _BINS["CBEMV"])
    for offset, day in enumerate(range(days - 1, -1, -1)):
        closed_at = (now - timedelta(days=day)).replace(microsecond=0)
        if day:
            closed_at = closed_at.astimezone(PARIS).replace(hour=22, minute=30,
                                                            second=0).astimezone(UTC)
        batch = Batch(terminal, contract, application, first_remise + offset,
                      first_remise + offset, closed_at=closed_at)
        for seq in range(1, rng.randint(*per_day) + 1):
            bin_ = rng.choice(bins)
            length = 15 if bin_.startswith("37") else 16
            pan = luhn_complete(bin_ + "".join(rng.choice("0123456789")
                                               for _ in range(length - 7)))
            roll = rng.random()
            operation: Operation = ("refund" if roll < 0.08 else
                                    "cancellation" if roll < 0.12 else "purchase")
            code = "05" if rng.random() < 0.04 else "00"
            issuer, product = rng.choice(_ISSUERS.get(application, _CB_ISSUERS))
            batch.transactions.append(SimTransaction(
                pan=pan, operation=operation, amount=rng.randint(150, 25_000),
                at=closed_at - timedelta(minutes=rng.randint(1, 720)), response_code=code,
                expiry=f"{rng.randint(27, 31)}{rng.randint(1, 12):02d}",
                rrn=f"{rng.randint(0, 10**12 - 1):012d}",
                authorization_number=f"{rng.randint(0, 999_999):06d}" if code == "00" else None,
                stan=seq, aid=_AIDS.get(application), issuer=issuer, product=product))
        batches.append(batch)
    return batches


# -- messages --------------------------------------------------------------------------------
def _ids(batch: Batch) -> dict[int, Any]:
    return {41: batch.terminal.ljust(8)[:8], 42: batch.contract.ljust(15)[:15]}


def _local(at: datetime) -> dict[int, str]:
    local = at.astimezone(PARIS)
    return {12: local.strftime("%H%M%S"), 13: local.strftime("%m%d")}


def sign_on_message(terminal: str, contract: str = "", stan: int = 1) -> bytes:
    values: dict[int, Any] = {11: f"{stan:06d}", 24: "862", 41: terminal.ljust(8)[:8]}
    if contract:
        values[42] = contract.ljust(15)[:15]
    return encode(CB2A, "0804", values)


def header_message(batch: Batch, window: int, count: int | None = None) -> bytes:
    return encode(CB2A, "0306", {
        **_ids(batch), **_local(batch.closed_at or datetime.now(UTC)),
        11: f"{batch.file_number % 1_000_000:06d}", 49: f"{batch.currency:03d}",
        72: f"{len(batch.transactions) if count is None else count:04d}",
        101: batch.application,
        47: (("RN", f"{batch.remise_number:06d}"), ("FN", f"{batch.file_number:06d}"),
             ("FW", str(window))),
    })


def transaction_message(batch: Batch, number: int, tx: SimTransaction) -> bytes:
    values: dict[int, Any] = {
        **_ids(batch), **_local(tx.at), 2: tx.pan,
        3: "200000" if tx.operation == "refund" else "000000", 4: f"{tx.amount:012d}",
        11: f"{tx.stan % 1_000_000:06d}", 39: tx.response_code, 49: f"{batch.currency:03d}",
        71: f"{number:04d}",
    }
    if tx.operation == "cancellation":
        original = tx.at.astimezone(PARIS).strftime("%m%d%H%M%S")
        values[90] = f"0246{tx.stan % 1_000_000:06d}{original}" + "0" * 22
    for number_, value in ((14, tx.expiry), (37, tx.rrn), (38, tx.authorization_number)):
        if value is not None:
            values[number_] = value
    if tx.aid is not None:
        values[55] = (("9F06", bytes.fromhex(tx.aid)),)
    tags = tuple((tag, value) for tag, value in (("IS", tx.issuer), ("PR", tx.product))
                 if value)
    if tags:
        values[47] = tags
    return encode(CB2A, "0246", values)


def end_message(batch: Batch, *, wrong_totals: bool = False, count: int | None = None) -> bytes:
    sums = batch.totals()
    if wrong_totals:
        sums["purchases_amount"] += 1
    widths = {"count": 10}
    fields = {"purchases": (76, 88), "refunds": (74, 86), "cancellations": (77, 89),
              "unauthorized": (80, 84)}
    values: dict[int, Any] = {
        **_ids(batch), **_local(batch.closed_at or datetime.now(UTC)),
        11: f"{batch.file_number % 1_000_000:06d}", 49: f"{batch.currency:03d}",
        72: f"{len(batch.transactions) if count is None else count:04d}",
        101: batch.application, 47: (("RN", f"{batch.remise_number:06d}"),),
    }
    for kind, (count_field, amount_field) in fields.items():
        values[count_field] = f"{sums[f'{kind}_count']:0{widths['count']}d}"
        values[amount_field] = f"{sums[f'{kind}_amount']:0{12 if amount_field == 84 else 16}d}"
    return encode(CB2A, "0506", values)


def close_message(terminal: str, function: str = "860") -> bytes:
    return encode(CB2A, "0844", {24: function, 41: terminal.ljust(8)[:8]})


def answer_code(answer: bytes) -> tuple[str, str | None, Message]:
    """(MTI, field 39, message) of an answer from switchd."""
    message = Message.parse(answer, CB2A)
    return message.mti, message.get(39), message


# -- the session -----------------------------------------------------------------------------
async def dial(listener: str, host: str, port: int, *, tls: ssl.SSLContext | None = None,
               timeout: float = 10.0, tnr: int | None = None) -> Terminal:
    """Connect over `xot`, `cbcom` or `cbcom-tls` and open a transfer-mode CBCOM session."""
    if listener == "xot":
        return await Terminal.dial_xot(host, port, protocol=TRANSFER, timeout=timeout, tnr=tnr)
    return await Terminal.dial_cbcom(host, port, tls=tls if listener == "cbcom-tls" else None,
                                     protocol=TRANSFER, timeout=timeout, tnr=tnr)


async def _expect(terminal: Terminal, request: bytes, mti: str, timeout: float) -> Message:
    answer_mti, code, message = answer_code(await terminal.exchange(request, timeout))
    if answer_mti != mti or code not in ("00", "95"):
        raise Refusal(answer_mti, code)
    return message


async def _send_file(terminal: Terminal, result: FileResult, *, faults: Faults,
                     first: bool, window: int, timeout: float) -> None:
    batch = result.batch
    header = await _expect(terminal, header_message(batch, window), "0316", timeout)
    accepted = int(dict(header.get(47) or ()).get("FW", window))
    count = len(batch.transactions)
    last = count - faults.end_early
    for number, tx in enumerate(batch.transactions[:last], 1):
        if first and faults.disconnect_after is not None and number > faults.disconnect_after:
            terminal.abort()
            raise SessionEnded("hung up mid-file (fault)")
        terminal.send(transaction_message(batch, number, tx))
        if number % accepted == 0 or number == count:
            answer_mti, code, ack = answer_code(await terminal.receive(timeout))
            if answer_mti != "0256" or code != "00" or int(ack.get(71)) != number:
                raise Refusal(answer_mti, code)
    end = end_message(batch, wrong_totals=faults.wrong_totals)
    if faults.lose_0516 > 0:
        faults.lose_0516 -= 1  # `faults` is the run's own copy
        terminal.send(end)
        terminal.abort()  # the 0516 will be "lost": we never read it
        raise SessionEnded("0516 lost (fault)")
    message = await _expect(terminal, end, "0516", timeout)
    result.code = message.get(39)
    result.totals = {n: message.get(n) for n in range(74, 90) if n in message}


async def _session(terminal: Terminal, results: list[FileResult], *, faults: Faults,
                   first: bool, window: int, timeout: float) -> None:
    pending = [r for r in results if r.code is None and r.refused_by is None]
    head = pending[0].batch
    await _expect(terminal, sign_on_message(head.terminal, head.contract), "0814", timeout)
    for result in pending:
        result.attempts += 1
        try:
            await _send_file(terminal, result, faults=faults, first=first, window=window,
                             timeout=timeout)
        except Refusal as refusal:
            result.code, result.refused_by = refusal.code, refusal.mti
            if refusal.code == "96":  # not durable on the gateway's side: try again later
                result.code = result.refused_by = None
                raise SessionEnded("gateway could not store: retry") from None
    await _expect(terminal, close_message(head.terminal), "0854", timeout)


async def telecollecte(connect: Callable[[], Awaitable[Terminal]], batches: Sequence[Batch], *,
                       window: int = 8, faults: Faults | None = None, attempts: int = 6,
                       timeout: float = 30.0, retry_delay: float = 0.2) -> list[FileResult]:
    """Collect `batches` (one terminal's) in one session, starting over on a broken session.

    Returns one result per batch; a batch that was never acknowledged after `attempts`
    sessions has `code` None.
    """
    faults = dataclasses.replace(faults or Faults())  # counted down as faults happen
    results = [FileResult(batch) for batch in batches]
    for attempt in range(attempts):
        if all(r.code is not None or r.refused_by is not None for r in results):
            break
        if attempt:
            # A real terminal redials after a pause; bounded, growing, jittered.
            await asyncio.sleep(min(retry_delay * 2 ** (attempt - 1), 2.0)
                                * (0.5 + random.random()))  # noqa: S311 - not crypto
        terminal: Terminal | None = None
        try:
            terminal = await connect()
            await _session(terminal, results, faults=faults, first=attempt == 0,
                           window=window, timeout=timeout)
        except Refusal as refusal:  # the sign-on or close itself was refused
            for result in results:
                if result.code is None and result.refused_by is None:
                    result.code, result.refused_by = refusal.code, refusal.mti
        except (SessionEnded, TimeoutError, OSError, CodecError):
            continue
        finally:
            if terminal is not None:
                await terminal.close()
    return results
