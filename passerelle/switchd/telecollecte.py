"""The télécollecte dialogue: a terminal hands over its stored transactions (its remise).

A télécollecte (batch collection) is one CBCOM session in transfer mode (protocol type
0x01). A remise is one terminal's batch for one acceptor contract and one application; a
session may carry several remises (one file each), one after the other::

    0804 (24=862 sign-on)                       -> 0814
    0306 file header                            -> 0316 (accepted window)
    0246 x n, stored transactions               -> 0256 after each window, and after the last
    0506 end of file, declared totals           -> 0516, only once the remise is durable
    ... more files (0306 ... 0516) ...
    0844 (24=851 turn offer, 24=860 close)      -> 0854

0516 is sent only after `RemiseSink.store` returned: the remise is committed in PostgreSQL
(one transaction, COPY) or fsynced to the spool journal. A terminal that lost our 0516 sends
the same file again; it is acknowledged again and stored once (the writer's remise key:
terminal, contract, application, remise number). Until the 0506, a file lives in this
session's memory only: a session that ends, or a file refused midway, stores nothing.

Field usage. No public CB2A télécollecte specification exists; these are our choices, made
the way CB2A uses ISO 8583:1987 elsewhere (ISO meaning wherever a field has one):

* every message: 41 terminal identification (the terminal's serial as registered in
  `terminals`, ans 8, space-padded), 42 acceptor contract number (ans 15, space-padded),
  11 STAN (echoed).
* 0804: 24 function code 862 sign-on (831 is still the echo test). 0844: 24 = 851 turn
  offer (we have nothing to send, so the turn comes back), 860 close.
* 0306 / 0506: 101 file name = the application (CBEMV, CBCLESS, AMEX, CONECS, ...): a CB
  terminal collects one file per application; 49 currency (ISO 4217 numeric); 72 "message
  number, last" = the number of 0246 in the file; 47 (CB TLV: 2-char tag, 2-digit length):
  RN remise number, FN file number, FW window (0246 per 0256, 1..max_window; 0316 answers
  with the window we accept). 12/13 (hhmmss/MMDD, Europe/Paris) on the 0506 date the remise
  when the terminal's clock is within `clock_tolerance` of ours (a terminal that collects
  a backlog); otherwise our clock dates it.
* 0246: 71 message number (1..n, in order), 2 PAN, 3 processing code (first two digits:
  00 purchase, 20 refund), 90 original data elements (present: the transaction cancels
  that original purchase, an annulation), 4 amount (minor units), 49 currency, 12/13 local
  time and date (the year is the latest one that does not put the date in the future),
  14 expiry YYMM, 37 RRN (the dossier number), 38 authorization number, 39 the response
  code the transaction got (00: approved; anything else: declined, "non autorisée"),
  55 tag 9F06 the AID, 47 tags IS issuer and PR product (titres-restaurant on CONECS
  name their issuer and product). 35, 36, 45, 52 (track and PIN data) are never read.
  The PAN is turned into `pan_masked` + `pan_hmac` as soon as it is read; the full PAN is
  never kept, logged or stored. With an HSM (`services.hsm`) the HMAC is `hsm.pan_hmac`
  (the newest key version, stored with the row) and a 0246 is handled asynchronously (the
  session still serialises messages); an HSM that cannot answer refuses the 0246 with 96
  (the file is dropped, the terminal sends it again later). Without one, the configured
  `pan_key` hashes synchronously, as on the hot path before.
* 0256: 71 = the last message number received, 39.
* 0506 totals, ISO 1987 reconciliation fields: 76/88 debits = approved purchases,
  74/86 credits = approved refunds, 77/89 debits reversal = approved cancellations,
  80 ("inquiries": looked at, no funds moved) / 84 = unauthorized (declined) count and
  amount. 75, 78, 79, 81-83, 85, 87 have no remise meaning: absent or zero.
  0516 carries our recomputed totals in the same fields.

Answers (39, CB response codes): 00 accepted; 95 "reconcile error": the remise is stored,
its status names the difference between declared and recomputed totals; 12 invalid
transaction: a message out of order or in the wrong phase, a file whose last window was
never acknowledged (0506 before the announced count); 30 format error, 44 AA naming the
field (3-digit field + "00"); 03 invalid merchant: unknown contract for the application;
58 not permitted to terminal: unknown terminal; 96 system malfunction: the remise could be
made durable neither in PostgreSQL nor in the spool (the terminal retries later). The
terminal and contract are checked at sign-on and header when PostgreSQL answers (a positive
answer is remembered for a minute: one query per terminal, not per file); while it is away
they are checked when the spool is replayed (refused remises go to rejected.log).

Repeats (0805, 0307, 0247, 0507, 0845) are handled as their originals, except that a
repeated sign-on or file header whose answer was lost is answered again, and a 0247 whose
message number was already received is ignored. A refusal in the middle of a file drops the file:
the terminal starts it again from its 0306. While a file is open the session is `busy`, so
that a SIGTERM drain waits for its 0516. Bounds: `max_messages` 0246 per file (one file in
memory per session), `max_window`, 64 files per session, CBCOM's TGR/TSI for time.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, NamedTuple
from zoneinfo import ZoneInfo

import psycopg
from prometheus_client import CollectorRegistry, Counter
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from passerelle.codecs.errors import CodecError
from passerelle.codecs.iso8583 import Message, encode
from passerelle.hsm.errors import HSMError
from passerelle.storage.db import StorageError
from passerelle.storage.pan import PanHmacKey, mask_pan, protect_pan
from passerelle.storage.remises import (
    STATUS_CORRECT,
    InvalidRemise,
    Remise,
    RemiseTotals,
    RemiseTransaction,
    UnknownReference,
    compute_totals,
    remise_status,
)
from passerelle.storage.spool import RemiseSink, outcome_name
from passerelle.switchd.dispatch import Answer, Registry, SessionContext, echo

__all__ = [
    "MTIS",
    "TOTAL_FIELDS",
    "TelecollecteServices",
    "register",
    "totals_fields",
]

PARIS = ZoneInfo("Europe/Paris")
MTIS = ("0804", "0805", "0306", "0307", "0246", "0247", "0506", "0507", "0844", "0845")
SIGN_ON, TURN, CLOSE, ECHO = "862", "851", "860", "831"
# RemiseTotals field -> (count field, amount field) of 0506/0516.
TOTAL_FIELDS = {
    "purchases": (76, 88),
    "refunds": (74, 86),
    "cancellations": (77, 89),
    "unauthorized": (80, 84),
}
_UNUSED_TOTALS = (75, 78, 79, 81, 82, 83, 85, 87)
_WIDTH = {74: 10, 75: 10, 76: 10, 77: 10, 78: 10, 79: 10, 80: 10, 81: 10,
          82: 12, 83: 12, 84: 12, 85: 12, 86: 16, 87: 16, 88: 16, 89: 16}
_OPERATIONS = {"00": "purchase", "20": "refund"}
_EXPIRIES = frozenset(f"{year:02d}{month:02d}" for year in range(100) for month in range(1, 13))
# What a 0246 is read for, in one `Message.pick`: 71 first (order), then the transaction.
# 47 (issuer, product) and 55 (AID) are read through `_Subfields`.
_TX_FIELDS = (71, 2, 3, 4, 11, 12, 13, 14, 37, 38, 39, 49)
_MAX_FILES_PER_SESSION = 64
_LOOKUP_TIMEOUT = 2.0
_KNOWN_FOR = 60.0
_MAX_KNOWN = 100_000
_LOOKUP = """
SELECT EXISTS (SELECT 1 FROM terminals WHERE serial = %(serial)s),
       EXISTS (SELECT 1 FROM contracts WHERE contract_number = %(contract)s
                                         AND application = %(application)s)
"""


class Refused(Exception):
    """A message this dialogue answers with a refusal: response code, log reason, field."""

    def __init__(self, code: str, reason: str, field: int | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.field = field


class TelecollecteMetrics:
    """Counters of the dialogue, registered on the daemon's Prometheus registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.remises = Counter(
            "telecollecte_remises", "Remises acknowledged (0516), by outcome",
            ["outcome"], registry=registry)
        self.transactions = Counter(
            "telecollecte_transactions", "Transactions of acknowledged remises, by outcome",
            ["outcome"], registry=registry)
        self.refused = Counter(
            "telecollecte_refused", "Télécollecte messages refused, by response code",
            ["code"], registry=registry)


@dataclass
class TelecollecteServices:
    """What the dialogue needs: where remises go, the PAN key, limits.

    `pool` (optional) is only read, to check terminal and contract before a file is sent.
    """

    sink: RemiseSink
    pan_key: PanHmacKey | None
    pool: AsyncConnectionPool | None = None
    hsm: Any = None  # passerelle.hsm.HSM: when set, it computes the PAN HMAC
    max_window: int = 32
    max_messages: int = 9999
    clock_tolerance: timedelta = timedelta(days=31)
    metrics: TelecollecteMetrics = field(default_factory=TelecollecteMetrics)
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    _lookups_down_until: float = 0.0
    # Positive answers only, for a minute: a terminal's next file needs no query, and a
    # terminal or contract removed meanwhile is still refused by the writer at 0506.
    # What an operator should know: this lookup and the writer check that the terminal and
    # the contract exist, not `active` nor which contract the terminal is on now, so within
    # the minute or after it a deactivated terminal, or one moved to another contract, still
    # hands over its remise under the contract its 0306 names (the merchant's last sales
    # are collected, not lost). Refusing a deactivated terminal at once would need that
    # check in `_LOOKUP` and in migration 0008's function, and this memory dropped by mpctl.
    _known: dict[tuple[str, str | None, str | None], float] = field(default_factory=dict)

    def remembered(self, serial: str, contract: str | None, application: str | None) -> bool:
        """True when terminal and contract were found in the last minute (`known` would
        answer (True, True) without a query): a 0306 is then answered without a task."""
        return self._known.get((serial, contract, application), 0.0) > time.monotonic()

    async def known(self, serial: str, contract: str | None, application: str | None,
                    log: Any) -> tuple[bool, bool] | None:
        """(terminal known, contract known) or None when PostgreSQL cannot tell now."""
        key = (serial, contract, application)
        now = time.monotonic()
        if self._known.get(key, 0.0) > now:
            return True, True
        if self.pool is None or now < self._lookups_down_until:
            return None
        try:
            async with asyncio.timeout(_LOOKUP_TIMEOUT):
                async with self.pool.connection(timeout=_LOOKUP_TIMEOUT) as conn:
                    cur = await conn.execute(_LOOKUP, {"serial": serial, "contract": contract,
                                                       "application": application})
                    row = await cur.fetchone()
        except (psycopg.Error, PoolTimeout, TimeoutError) as exc:
            self._lookups_down_until = time.monotonic() + 5.0
            log.warning("telecollecte.lookup_unavailable", error=str(exc).strip()[:200])
            return None
        assert row is not None
        found = bool(row[0]), bool(row[1]) or contract is None
        if all(found):
            if len(self._known) >= _MAX_KNOWN:
                self._known.clear()
            self._known[key] = now + _KNOWN_FOR
        return found



class Phase(enum.Enum):
    CONNECTED = "connected"  # CBCOM up, no sign-on yet
    SIGNED_ON = "signed_on"  # between files
    RECEIVING = "receiving"  # 0306 accepted, 0246 expected
    CLOSED = "closed"  # 0844 close answered


@dataclass
class _File:
    """One file (remise) being received."""

    application: str
    currency: int
    remise_number: int
    file_number: int
    count: int
    window: int
    transactions: list[RemiseTransaction] = field(default_factory=list)
    last_acknowledged: int = 0
    # `_local_clock` of the services' clock, read again at the first 0246 of each window:
    # a day's slack makes a clock some seconds old as good, at one read per window.
    clock: tuple[int, int | None] | None = None


class _Header(NamedTuple):
    """A 0306 read and checked, its file not open yet (the lookup may still refuse it)."""

    terminal: str
    contract: str
    tags: dict[str, str]
    file: _File


@dataclass
class _Dialogue:
    """A session's télécollecte state (kept in `SessionContext.state`)."""

    phase: Phase = Phase.CONNECTED
    terminal: str = ""
    contract: str = ""
    files_done: int = 0
    file: _File | None = None


# -- field helpers ---------------------------------------------------------------------------
def _text(message: Message, number: int, *, required: bool = True) -> str | None:
    value = message.get(number)
    if value is None:
        if required:
            raise Refused("30", f"field {number} is missing", number)
        return None
    text = str(value).strip()
    if required and not text:
        raise Refused("30", f"field {number} is empty", number)
    return text or None


def _int(message: Message, number: int) -> int:
    text = _text(message, number)
    assert text is not None
    if not text.isdigit():
        raise Refused("30", f"field {number} is not numeric", number)
    return int(text)


def _tags(message: Message, number: int) -> dict[str, str]:
    value = message.get(number)
    return {tag: str(item) for tag, item in value} if value else {}


def _tag_int(tags: dict[str, str], tag: str, low: int, high: int) -> int:
    text = tags.get(tag, "").strip()
    if not text.isdigit() or not low <= int(text) <= high:
        raise Refused("30", f"field 47 tag {tag} must be a number in {low}..{high}", 47)
    return int(text)


def _local_time(message: Message, now: datetime) -> datetime | None:
    """Fields 12 (hhmmss) and 13 (MMDD), Paris time, as UTC; the year that is not ahead."""
    return _local_time_of(message.get(12), message.get(13), now)


# Europe/Paris changes its UTC offset on whole hours (local time, and 01:00 UTC), so an
# offset looked up once per hour is exact: it spares a zoneinfo conversion per 0246.
_OFFSETS: dict[tuple[int, int, int, int], timedelta] = {}
_NOW_OFFSETS: dict[tuple[int, int, int, int], timedelta] = {}
_MAX_OFFSETS = 50_000
_DAY = timedelta(days=1)


def _paris_offset(year: int, month: int, day: int, hour: int) -> timedelta:
    """UTC offset of that local Paris hour; zoneinfo's fold=0 choice (the earlier offset)
    for the hour that is skipped or repeated when the clocks change, as `tzinfo=PARIS`."""
    key = (year, month, day, hour)
    offset = _OFFSETS.get(key)
    if offset is None:
        offset = datetime(year, month, day, hour, tzinfo=PARIS).utcoffset()
        assert offset is not None
        if len(_OFFSETS) >= _MAX_OFFSETS:  # bounded whatever dates terminals send
            _OFFSETS.clear()
        _OFFSETS[key] = offset
    return offset


# A file's 0246s fall in a few hours of a few days: MMDDhh -> (year, MMDDhh5959, that hour's
# start in UTC), for an hour of the clock's year wholly before its limit (so the same for
# every clock of that year whose limit is not earlier). A 0246 in a known hour then costs
# an addition instead of a datetime, a comparison and an offset lookup.
_HOURS: dict[int, tuple[int, int, datetime]] = {}
_SECONDS = tuple(timedelta(seconds=n) for n in range(3600))


def _paris_wall_clock(now: datetime) -> datetime:
    """`now` as the Paris wall-clock time, labelled UTC so that it compares with other
    wall-clock times (`datetime.replace` would cost more than this whole function)."""
    if now.tzinfo is not UTC:
        now = now.astimezone(UTC)
    key = (now.year, now.month, now.day, now.hour)
    offset = _NOW_OFFSETS.get(key)
    if offset is None:
        offset = now.astimezone(PARIS).utcoffset()
        assert offset is not None
        if len(_NOW_OFFSETS) >= _MAX_OFFSETS:
            _NOW_OFFSETS.clear()
        _NOW_OFFSETS[key] = offset
    return now + offset


def _local_clock(now: datetime) -> tuple[int, int | None]:
    """What dating a local time needs of `now`: the Paris year, and the latest wall-clock
    time accepted in that year (a day ahead: a terminal's clock may run a little fast) as
    the integer MMDDhhmmss, None when that day ahead is already next year."""
    local_now = _paris_wall_clock(now)
    limit = local_now + _DAY
    if limit.year != local_now.year:
        return local_now.year, None
    return local_now.year, (limit.month * 100_000_000 + limit.day * 1_000_000
                            + limit.hour * 10_000 + limit.minute * 100 + limit.second)


def _local_time_of(hms: str | None, mmdd: str | None, now: datetime) -> datetime | None:
    """`_local_time` from the two fields' values."""
    return _local_time_at(hms, mmdd, _local_clock(now))


def _local_time_at(hms: str | None, mmdd: str | None,
                   clock: tuple[int, int | None]) -> datetime | None:
    """`_local_time_of` with the clock of `_local_clock` (a file's 0246s share one)."""
    if hms is None or mmdd is None:
        return None
    this_year, limit = clock
    try:
        digits = mmdd + hms
        if len(mmdd) != 4 or len(hms) != 6 or not digits.isdigit():
            raise ValueError(digits)
        value = int(digits)  # MMDDhhmmss: one int() and arithmetic, not five slices
        hour_key, minute, second = value // 10_000, value // 100 % 100, value % 100
        known = _HOURS.get(hour_key)
        if known is not None and known[0] == this_year and (limit is None
                                                            or known[1] <= limit):
            if minute < 60 and second < 60:
                return known[2] + _SECONDS[minute * 60 + second]
            raise ValueError(digits)
        month, day, hour = hour_key // 10_000, hour_key // 100 % 100, hour_key % 100
        year = this_year
        if limit is not None and value > limit:  # later than a day ahead: last year's,
            datetime(year, month, day, hour, minute, second)  # if valid this year too
            year -= 1
        at = datetime(year, month, day, hour, minute, second, tzinfo=UTC)  # wall clock
        at -= _paris_offset(year, month, day, hour)
        if year == this_year and (limit is None or hour_key * 10_000 + 5959 <= limit):
            if len(_HOURS) >= _MAX_OFFSETS:
                _HOURS.clear()
            _HOURS[hour_key] = (year, hour_key * 10_000 + 5959,
                                at - _SECONDS[minute * 60 + second])
        return at
    except ValueError:
        pass  # 29 February of the wrong year, 25h61: refused below
    raise Refused("30", "fields 12/13 are not a valid local time and date", 13)


def _acknowledge(message: Message, file: _File, number: int) -> Answer:
    """The 0256 when this 0246 ends a window or the file, else nothing yet."""
    if number == file.count or number - file.last_acknowledged >= file.window:
        file.last_acknowledged = number
        return _window_ack(message, number)
    return None


def _window_ack(message: Message, number: int) -> bytes:
    """0256 for the window ending at `number`: identifiers only, never the 0246's card."""
    return encode(message.profile, "0256", {
        11: message.get(11), 39: "00", 41: message.get(41), 42: message.get(42),
        71: f"{number:04d}"})


def totals_fields(totals: RemiseTotals) -> dict[int, str]:
    """0506/0516 fields 74-89 carrying `totals` (see the module docstring)."""
    values = {number: "0" * _WIDTH[number] for number in _UNUSED_TOTALS}
    for kind, (count_field, amount_field) in TOTAL_FIELDS.items():
        values[count_field] = f"{getattr(totals, f'{kind}_count'):0{_WIDTH[count_field]}d}"
        values[amount_field] = f"{getattr(totals, f'{kind}_amount'):0{_WIDTH[amount_field]}d}"
    return values


def _declared_totals(message: Message) -> RemiseTotals:
    for number in _UNUSED_TOTALS:
        value = message.get(number)
        if value is not None and value.strip("0"):
            raise Refused("30", f"field {number} has no remise meaning and must be zero",
                          number)
    values = {}
    for kind, (count_field, amount_field) in TOTAL_FIELDS.items():
        for suffix, number in (("count", count_field), ("amount", amount_field)):
            raw = message.get(number)
            values[f"{kind}_{suffix}"] = int(raw) if raw is not None else 0
    return RemiseTotals(**values)


class _Subfields:
    """Fields 47 (issuer, product) and 55 (AID) of 0246s, read once per distinct value.

    A few issuers, products and AIDs come back in every file, so what a field's bytes
    (length prefix included) mean is kept, per profile, and a 0246 costs a slice and a
    dict lookup instead of a sub-element decoding. The same bytes decode to the same
    values: a field the codec refuses is never kept, and raises as it did the first time.
    Only fields made of the tags in `_KEPT_47` / `_KEPT_55` are kept: nothing of a card
    (an EMV 5A or 57 would carry its number) stays in memory past its 0246, and fields
    that vary with every card would only fill the cache. Bounded whatever terminals send
    (cleared when full)."""

    __slots__ = ("_aids", "_profile", "_tags")
    _MAX = 4096
    # By the profile's id (a profile's own hash walks its whole table), the profile kept
    # alongside so that the id cannot be reused while the entry lives.
    _BY_PROFILE: ClassVar[dict[int, _Subfields]] = {}

    def __init__(self, profile: object) -> None:
        self._profile = profile
        self._tags: dict[bytes, tuple[str | None, str | None]] = {}
        self._aids: dict[bytes, str | None] = {}

    @classmethod
    def of(cls, message: Message) -> _Subfields:
        profile = message.profile
        found = cls._BY_PROFILE.get(id(profile))
        if found is None or found._profile is not profile:
            found = cls._BY_PROFILE[id(profile)] = cls(profile)
        return found

    def read(self, message: Message) -> tuple[str | None, str | None, str | None]:
        """Issuer and product (field 47's first IS and PR tags, at most 64 characters) and
        AID (field 55's tag 9F06, in hexadecimal)."""
        issuer = product = aid = None
        if 47 in message:
            raw = bytes(message.raw(47))
            found = self._tags.get(raw)
            if found is None:
                found = self._tags_of(message, raw)
            issuer, product = found
        if 55 in message:
            raw = bytes(message.raw(55))
            aid = self._aids.get(raw, _UNSEEN)
            if aid is _UNSEEN:
                aid = self._aid_of(message, raw)
        return issuer, product, aid  # type: ignore[return-value]

    def _tags_of(self, message: Message, raw: bytes) -> tuple[str | None, str | None]:
        issuer = product = None
        elements = message.get(47) or ()
        for tag, value in elements:
            if tag == "IS" and issuer is None:
                issuer = value.strip()[:64] or None
            elif tag == "PR" and product is None:
                product = value.strip()[:64] or None
        if all(tag in _KEPT_47 for tag, _ in elements):
            if len(self._tags) >= self._MAX:
                self._tags.clear()
            self._tags[raw] = issuer, product
        return issuer, product

    def _aid_of(self, message: Message, raw: bytes) -> str | None:
        aid = None
        elements = message.get(55) or ()
        for tag, value in elements:
            if tag == "9F06":
                aid = value.hex().upper()
                break
        if all(tag in _KEPT_55 for tag, _ in elements):
            if len(self._aids) >= self._MAX:
                self._aids.clear()
            self._aids[raw] = aid
        return aid


_UNSEEN = object()
# Tags naming the issuer, product or application, never the card: what `_Subfields` keeps.
_KEPT_47 = frozenset({"IS", "PR"})
# AID, DF name, labels; a one-byte tag also as CB-TLV spells it (two bytes: "004F").
_KEPT_55 = frozenset({"9F06", "4F", "84", "50", "9F12", "004F", "0084", "0050"})


# -- the dialogue ----------------------------------------------------------------------------
class Telecollecte:
    """The handler registered for the télécollecte MTIs (one instance per daemon)."""

    def __init__(self, services: TelecollecteServices) -> None:
        self.services = services

    def __call__(self, message: Message, context: SessionContext) -> Answer | Awaitable[Answer]:
        dialogue = context.state.get("telecollecte")
        if dialogue is None:
            dialogue = context.state["telecollecte"] = _Dialogue()
        mti = message.mti
        try:
            if mti in ("0246", "0247"):  # the hot path stays synchronous
                return self._transaction(message, context, dialogue)
            if mti in ("0804", "0805"):
                function = message.get(24)
                if function is None or function == ECHO:
                    return echo(message, context)
                return self._guarded(self._sign_on(message, context, dialogue, function),
                                     message, context, dialogue)
            if mti in ("0306", "0307"):  # synchronous when the lookup is remembered
                return self._header(message, context, dialogue)
            if mti in ("0506", "0507"):
                return self._guarded(self._end(message, context, dialogue),
                                     message, context, dialogue)
            return self._turn(message, context, dialogue)
        except Exception as error:  # every failure gets its answer
            return self._failed(message, context, dialogue, error)

    async def _guarded(self, answer: Awaitable[Answer], message: Message,
                       context: SessionContext, dialogue: _Dialogue) -> Answer:
        try:
            return await answer
        except Exception as error:  # every failure gets its answer
            return self._failed(message, context, dialogue, error)

    def _failed(self, message: Message, context: SessionContext, dialogue: _Dialogue,
                error: Exception) -> Answer:
        """A refusal, a field the codec could not read, or our own bug: answer anyway, so
        that the terminal is not left waiting and the file is dropped, never half-kept."""
        if isinstance(error, Refused):
            return self._refuse(message, context, dialogue, error)
        if isinstance(error, CodecError):
            return self._refuse(message, context, dialogue, Refused(
                "30", f"field {error.field}: {error.reason}", error.field))
        context.log.error("telecollecte.internal_error", mti=message.mti,
                          exc_info=error)
        return self._refuse(message, context, dialogue, Refused(
            "96", f"internal error: {type(error).__name__}"))

    # -- refusals ----------------------------------------------------------------------------
    def _refuse(self, message: Message, context: SessionContext, dialogue: _Dialogue,
                refusal: Refused) -> Answer:
        """Answer with the response MTI and 39 (and 44 AA); drop the file being received."""
        file = dialogue.file
        if file is not None:
            dialogue.file = None
            dialogue.phase = Phase.SIGNED_ON
            context.busy = False
        self.services.metrics.refused.labels(refusal.code).inc()
        context.log.warning(
            "telecollecte.refused", mti=message.mti, code=refusal.code, reason=refusal.reason,
            field=refusal.field, terminal=dialogue.terminal or None,
            file_dropped=file is not None,
            transactions_dropped=len(file.transactions) if file is not None else 0)
        answer_mti = {"0804": "0814", "0805": "0814", "0306": "0316", "0307": "0316",
                      "0246": "0256", "0247": "0256", "0506": "0516", "0507": "0516",
                      "0844": "0854", "0845": "0854"}[message.mti]
        values: dict[int, Any] = {39: refusal.code}
        # Built afresh, never echoed: a 0246 carries the PAN. Only identifiers come back.
        for number in (11, 41, 42, 71, 101):
            try:
                value = message.get(number)
            except CodecError:  # the broken field itself: left out of the answer
                continue
            if value is not None:
                values[number] = value
        if refusal.code == "30":
            values[44] = (("AA", f"{refusal.field or 0:03d}00"),)
        try:
            return encode(message.profile, answer_mti, values)
        except CodecError:  # an identifier itself was the bad field
            return encode(message.profile, answer_mti, {39: refusal.code})

    # -- 0804 sign-on ------------------------------------------------------------------------
    async def _sign_on(self, message: Message, context: SessionContext, dialogue: _Dialogue,
                       function: str) -> Answer:
        if function != SIGN_ON:
            raise Refused("12", f"0804 function code {function} is not sign-on (862)", 24)
        terminal = _text(message, 41)
        contract = _text(message, 42, required=False) or ""
        assert terminal is not None
        if dialogue.phase is Phase.SIGNED_ON and terminal == dialogue.terminal:
            return message.respond("0814", {39: "00"})  # our 0814 was lost: say it again
        if dialogue.phase is not Phase.CONNECTED:
            raise Refused("12", f"sign-on in phase {dialogue.phase.value}")
        known = await self.services.known(terminal, None, None, context.log)
        if known is not None and not known[0]:
            raise Refused("58", f"unknown terminal {terminal!r}", 41)
        dialogue.terminal, dialogue.contract = terminal, contract
        dialogue.phase = Phase.SIGNED_ON
        context.log.info("telecollecte.signed_on", terminal=terminal, contract=contract,
                         checked=known is not None)
        return message.respond("0814", {39: "00"})

    # -- 0306 header -------------------------------------------------------------------------
    def _header(self, message: Message, context: SessionContext,
                dialogue: _Dialogue) -> Answer | Awaitable[Answer]:
        file = dialogue.file
        if (message.mti == "0307" and file is not None and not file.transactions
                and _tag_int(_tags(message, 47), "RN", 0, 999_999) == file.remise_number):
            return message.respond("0316", {39: "00", 47: (  # our 0316 was lost
                ("RN", f"{file.remise_number:06d}"), ("FN", f"{file.file_number:06d}"),
                ("FW", str(file.window)))})
        if dialogue.phase is Phase.RECEIVING:
            raise Refused("12", "0306 while a file is open: the previous file is dropped")
        if dialogue.phase is not Phase.SIGNED_ON:
            raise Refused("12", f"0306 in phase {dialogue.phase.value} (sign-on first)")
        if dialogue.files_done >= _MAX_FILES_PER_SESSION:
            raise Refused("12", f"more than {_MAX_FILES_PER_SESSION} files in one session")
        terminal, contract = _text(message, 41), _text(message, 42)
        assert terminal is not None and contract is not None
        if terminal != dialogue.terminal:
            raise Refused("12", f"terminal {terminal!r} differs from the sign-on's", 41)
        application = _text(message, 101)
        assert application is not None
        if len(application) > 16 or not application.isprintable():
            raise Refused("30", "field 101 (application) is not a short name", 101)
        currency = _int(message, 49)
        count = _int(message, 72)
        services = self.services
        if count > services.max_messages:
            raise Refused("30", f"{count} messages announced, at most "
                          f"{services.max_messages}", 72)
        tags = _tags(message, 47)
        header = _Header(terminal, contract, tags, _File(
            application, currency, _tag_int(tags, "RN", 0, 999_999),
            _tag_int(tags, "FN", 0, 999_999),
            count, min(_tag_int(tags, "FW", 1, 999), services.max_window)))
        if services.remembered(terminal, contract, application):
            return self._open_file(message, context, dialogue, header, (True, True))
        return self._guarded(self._looked_up(message, context, dialogue, header),
                             message, context, dialogue)

    async def _looked_up(self, message: Message, context: SessionContext,
                         dialogue: _Dialogue, header: _Header) -> Answer:
        """`_header`, once PostgreSQL said whether it knows the terminal and contract."""
        known = await self.services.known(header.terminal, header.contract,
                                          header.file.application, context.log)
        return self._open_file(message, context, dialogue, header, known)

    def _open_file(self, message: Message, context: SessionContext, dialogue: _Dialogue,
                   header: _Header, known: tuple[bool, bool] | None) -> Answer:
        terminal, contract, tags, file = header
        if known is not None:
            if not known[0]:
                raise Refused("58", f"unknown terminal {terminal!r}", 41)
            if not known[1]:
                raise Refused("03", f"unknown contract {contract!r} for application "
                              f"{file.application!r}", 42)
        dialogue.contract = contract
        dialogue.file = file
        dialogue.phase = Phase.RECEIVING
        context.busy = True  # the terminal owes us the file: a drain waits for it
        context.log.info("telecollecte.file_opened", terminal=terminal, contract=contract,
                         application=file.application, remise=file.remise_number,
                         file=file.file_number, messages=file.count, window=file.window)
        return message.respond("0316", {39: "00", 47: (*(
            (tag, value) for tag, value in tags.items() if tag != "FW"),
            ("FW", str(file.window)))})

    # -- 0246 stored transactions ------------------------------------------------------------
    def _transaction(self, message: Message, context: SessionContext,
                     dialogue: _Dialogue) -> Answer | Awaitable[Answer]:
        file = dialogue.file
        if file is None:
            raise Refused("12", f"0246 in phase {dialogue.phase.value} (no file open)")
        values = message.pick(_TX_FIELDS)  # the hot path of a file: one call, no dict
        number = values[0]
        if number is None or not number.isdigit():
            raise Refused("30", "field 71 is missing or not numeric", 71)
        number = int(number)
        received = len(file.transactions)
        if message.mti == "0247" and number <= received:
            if number == file.last_acknowledged:  # our 0256 was lost: say it again
                return _window_ack(message, number)
            return None  # a repeat of a message we have: already counted
        if number != received + 1:
            raise Refused("12", f"message number {number} out of order, expected "
                          f"{received + 1}", 71)
        if number > file.count:
            raise Refused("12", f"message {number} beyond the {file.count} announced", 71)
        if self.services.hsm is not None:
            return self._guarded(self._hashed_transaction(message, values, dialogue, file,
                                                          number),
                                 message, context, dialogue)
        file.transactions.append(self._read_transaction(message, file, number, None, values))
        return _acknowledge(message, file, number)

    async def _hashed_transaction(self, message: Message, values: list[Any],
                                  dialogue: _Dialogue, file: _File, number: int) -> Answer:
        """A 0246 whose PAN HMAC comes from the HSM."""
        pan = values[1]
        if not isinstance(pan, str) or not pan.isdigit() or not 12 <= len(pan) <= 19:
            raise Refused("30", "field 2 is not a 12-19 digit card number", 2)
        try:
            found = await self.services.hsm.pan_hmac(pan)
        except HSMError as error:
            raise Refused("96", f"PAN HMAC not available ({type(error).__name__})") from None
        del pan
        if dialogue.file is not file:  # refused meanwhile: nothing to add to
            return None
        file.transactions.append(self._read_transaction(message, file, number,
                                                        (found.digest, found.version), values))
        return _acknowledge(message, file, number)

    def _read_transaction(self, message: Message, file: _File, number: int,
                          hashed: tuple[bytes, int] | None = None,
                          values: list[Any] | None = None) -> RemiseTransaction:
        """The stored transaction a 0246 carries (`values`: its `_TX_FIELDS`, when the
        caller has them already). Every check names its field; see the module docstring."""
        if values is None:
            values = message.pick(_TX_FIELDS)
        (_, pan, processing, amount, stan, hms, mmdd, expiry, rrn, authorization, code,
         currency) = values
        values[1] = None  # the full PAN is kept nowhere: only its mask and keyed HMAC
        if not processing:
            raise Refused("30", "field 3 is missing or empty", 3)
        operation = _OPERATIONS.get(processing[:2])
        if operation is None:
            raise Refused("30", f"processing code {processing[:2]} is neither purchase (00) "
                          "nor refund (20)", 3)
        if 90 in message:
            if operation != "purchase":
                raise Refused("30", "only a purchase can be cancelled (field 90)", 90)
            operation = "cancellation"
        if not currency or not currency.isdigit():
            raise Refused("30", "field 49 is missing or not numeric", 49)
        if int(currency) != file.currency:
            raise Refused("30", f"currency {int(currency)} differs from the file's "
                          f"{file.currency}", 49)
        code = code.strip() if code is not None else ""
        if len(code) != 2 or not code.isalnum():
            raise Refused("30", "field 39 is not a 2-character response code", 39)
        clock = file.clock
        if clock is None or number == file.last_acknowledged + 1:  # a window starts
            clock = file.clock = _local_clock(self.services.now())
        at = _local_time_at(hms, mmdd, clock)
        if at is None:
            raise Refused("30", "fields 12/13 (local time and date) are missing", 12)
        if not pan or not pan.isdigit() or not 12 <= len(pan) <= 19:
            raise Refused("30", "field 2 is not a 12-19 digit card number", 2)
        if hashed is None:
            assert self.services.pan_key is not None  # gateway gives a key or an HSM
            masked, digest, version = protect_pan(self.services.pan_key, pan)
        else:
            masked = mask_pan(pan)
            digest, version = hashed
        del pan
        if expiry is not None and expiry not in _EXPIRIES:  # the usual YYMM: no work
            expiry = expiry.strip() or None
            if expiry is not None and not (expiry.isdigit() and 1 <= int(expiry[2:]) <= 12):
                raise Refused("30", "field 14 is not an expiry YYMM", 14)
        if not amount or not amount.isdigit():
            raise Refused("30", "field 4 is missing or not numeric", 4)
        issuer, product, aid = _Subfields.of(message).read(message)
        # Positional, in the struct's field order (msgspec takes 17 keywords at seven times
        # the cost); test_every_transaction_field_reads_back_as_sent checks each field.
        return RemiseTransaction(
            number, at, operation,  # type: ignore[arg-type]
            "approved" if code == "00" else "declined", int(amount), file.currency, masked,
            digest, version, expiry, code.upper(),
            authorization.strip() or None if authorization else None,  # authorization_number
            issuer, product,
            rrn.strip() or None if rrn else None, stan.strip() or None if stan else None, aid,
        )

    # -- 0506 end of file --------------------------------------------------------------------
    async def _end(self, message: Message, context: SessionContext,
                   dialogue: _Dialogue) -> Answer:
        file = dialogue.file
        if file is None:
            raise Refused("12", f"0506 in phase {dialogue.phase.value} (no file open)")
        count = _int(message, 72)
        received = len(file.transactions)
        if count != file.count or received != file.count:
            raise Refused("12", f"end of file after {received} of {file.count} messages "
                          f"(0506 says {count}): window from {file.last_acknowledged + 1} "
                          "never acknowledged", 72)
        if _text(message, 101) != file.application or _text(message, 42) != dialogue.contract:
            raise Refused("12", "0506 names another application or contract than its 0306",
                          101)
        tags = _tags(message, 47)
        if "RN" in tags and _tag_int(tags, "RN", 0, 999_999) != file.remise_number:
            raise Refused("12", "0506 names another remise number than its 0306", 47)
        declared = _declared_totals(message)
        services = self.services
        now = services.now()
        collected_at = now
        stated = _local_time(message, now)
        if stated is not None and abs(stated - now) <= services.clock_tolerance:
            collected_at = stated
        remise = Remise(
            terminal_serial=dialogue.terminal, contract_number=dialogue.contract,
            application=file.application, remise_number=file.remise_number,
            file_number=file.file_number, currency=file.currency, collected_at=collected_at,
            declared=declared, transactions=file.transactions, ack_window=file.window,
        )
        computed = compute_totals(file.transactions)
        status = remise_status(declared, computed, file.currency)
        try:
            result = await services.sink.store(remise)
        except UnknownReference as exc:
            code = "58" if str(exc).startswith("unknown terminal") else "03"
            raise Refused(code, str(exc)) from None
        except InvalidRemise as exc:
            raise Refused("30", str(exc)) from None
        except StorageError as exc:
            raise Refused("96", f"remise not durable, terminal must retry: {exc}") from None
        dialogue.file = None
        dialogue.phase = Phase.SIGNED_ON
        dialogue.files_done += 1
        context.busy = False
        outcome = outcome_name(result)
        if result is not None and not result.stored:  # answer for what is stored
            stored = result.status
            if stored != status:
                context.log.warning("telecollecte.repeat_differs", terminal=dialogue.terminal,
                                    remise=file.remise_number, stored_status=stored,
                                    repeat_status=status)
                status = stored
        code = "00" if status == STATUS_CORRECT else "95"
        services.metrics.remises.labels(outcome).inc()
        services.metrics.transactions.labels(outcome).inc(len(file.transactions))
        context.log.info(f"telecollecte.remise_{outcome}", terminal=dialogue.terminal,
                         contract=dialogue.contract, application=file.application,
                         remise=file.remise_number, file=file.file_number,
                         transactions=len(file.transactions), status=status, code=code)
        return message.respond("0516", {39: code, **totals_fields(computed)})

    # -- 0844 turn / close -------------------------------------------------------------------
    def _turn(self, message: Message, context: SessionContext, dialogue: _Dialogue) -> Answer:
        function = message.get(24)
        if dialogue.phase is Phase.RECEIVING:
            raise Refused("12", "0844 while a file is open: the file is dropped")
        if function == TURN:
            context.log.info("telecollecte.turn", terminal=dialogue.terminal)
            return message.respond("0854", {39: "00"})
        if function == CLOSE:
            dialogue.phase = Phase.CLOSED
            context.log.info("telecollecte.closed", terminal=dialogue.terminal,
                             files=dialogue.files_done)
            return message.respond("0854", {39: "00"})
        raise Refused("12", f"0844 function code {function} is neither 851 nor 860", 24)


def register(registry: Registry, services: TelecollecteServices) -> Telecollecte:
    """Serve the télécollecte MTIs on transfer-mode sessions (CBCOM protocol type 0x01)."""
    handler = Telecollecte(services)
    registry.register(MTIS, handler, mode="transfer")
    return handler
