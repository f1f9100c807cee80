"""The télécollecte writer: one remise (a terminal's daily batch) into PostgreSQL, once.

A remise is stored in ONE transaction: its key row (terminal, contract, application, remise
number) in `remise_keys`, its row in `remises`, its transactions by COPY — sent as one
message, two round trips in all (see `_claim_and_copy`). The key row's unique
index makes a repeated batch — a terminal that lost our 0516 sends the same remise again —
report "already stored" and write nothing, even when the two copies race on two nodes: the
second insert waits for the first transaction and then sees the conflict. `store` returns
only after COMMIT, which is what allows the dialogue to answer 0516.

Totals are recomputed from the transactions and compared with the terminal's declared
totals (0506 fields 74-89); the status is "REMISE CORRECTE" or names each difference.
Counting rules: an approved purchase is a debit, an approved refund a credit, an approved
cancellation (annulation) a credit reversing a purchase; a declined transaction counts only
as unauthorized (non autorisée), whatever its operation.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal, NamedTuple

import msgspec
import psycopg
import structlog
from psycopg.abc import PQGen
from psycopg.errors import error_from_result
from psycopg.generators import execute, fetch_many, send
from psycopg.pq import Escaping, ExecStatus, TransactionStatus
from psycopg.pq.abc import PGconn, PGresult
from psycopg.waiting import Wait
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from passerelle.storage.db import DatabaseUnavailable, StorageError, translate_errors


def require_psycopg_3_3(version: str) -> None:
    """Refuse to load with a psycopg other than 3.3.x (pyproject.toml pins it): `RemiseWriter`
    drives libpq through psycopg's generators, `conn.wait` and `conn.pgconn`, which are not
    public API, and a change in, say, where `fetch_many` stops would not fail: it would
    store remises wrongly. An install that ignored the pin stops here, named."""
    if not version.startswith("3.3."):
        raise ImportError(
            f"passerelle.storage.remises needs psycopg 3.3.x (internal API: "
            f"psycopg.generators, AsyncConnection.wait, pgconn), found {version}: install "
            f"'psycopg[binary]>=3.3,<3.4' as pyproject.toml pins it"
        )


require_psycopg_3_3(psycopg.__version__)

Operation = Literal["purchase", "refund", "cancellation"]
Result = Literal["approved", "declined"]

log = structlog.get_logger("passerelle.storage")
STATUS_CORRECT = "REMISE CORRECTE"
_PAN_MASKED = re.compile(r"^[0-9]{6}\*{2,9}[0-9]{4}$")
_EXPIRY = re.compile(r"^[0-9]{2}(0[1-9]|1[0-2])$")
_RESPONSE_CODE = re.compile(r"^[0-9A-Z]{2}$")
_MAX_TEXT = 64
# ISO 4217 minor-unit exponents that are not 2, for the status text only.
_EXPONENTS = {392: 0, 410: 0, 952: 0, 953: 0, 48: 3, 368: 3, 414: 3, 512: 3, 788: 3}


class InvalidRemise(StorageError):
    """The remise itself is wrong (bad field); storing it again will not help."""


class UnknownReference(StorageError):
    """The remise names a terminal or contract this gateway does not know."""


class RemiseTransaction(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """One stored transaction (0246) of a remise. Cards only as mask + keyed HMAC.

    `gc=False`: its fields are scalars, so it can be in no reference cycle, and the cyclic
    collector need not scan the thousands of them that open files hold."""

    seq: int
    at: datetime
    operation: Operation
    result: Result
    amount: int
    currency: int
    pan_masked: str
    pan_hmac: bytes
    pan_hmac_key_version: int
    expiry: str | None = None
    response_code: str | None = None
    authorization_number: str | None = None
    issuer: str | None = None
    product: str | None = None
    rrn: str | None = None
    stan: str | None = None
    aid: str | None = None


class RemiseTotals(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """Counts and amounts (minor units) by kind, as a remise ticket prints them."""

    purchases_count: int = 0
    purchases_amount: int = 0
    refunds_count: int = 0
    refunds_amount: int = 0
    cancellations_count: int = 0
    cancellations_amount: int = 0
    unauthorized_count: int = 0
    unauthorized_amount: int = 0


class Remise(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One télécollecte batch as the dialogue received it, ready to store."""

    terminal_serial: str
    contract_number: str
    application: str
    remise_number: int
    file_number: int
    currency: int
    collected_at: datetime
    declared: RemiseTotals
    transactions: list[RemiseTransaction] = msgspec.field(default_factory=list)
    ack_window: int = 0

    @property
    def key(self) -> tuple[str, str, str, int]:
        """What makes two batches the same remise."""
        return (self.terminal_serial, self.contract_number, self.application, self.remise_number)


class StoreOutcome(msgspec.Struct, frozen=True):
    """What `RemiseWriter.store` did; `stored` is False when the remise was already there."""

    remise_id: int
    stored: bool
    status: str
    is_correct: bool
    transaction_count: int


_KINDS = (
    ("purchases", "ACHATS"),
    ("refunds", "REMBOURSEMENTS"),
    ("cancellations", "ANNULATIONS"),
    ("unauthorized", "NON AUTORISEES"),
)


def compute_totals(transactions: Sequence[RemiseTransaction]) -> RemiseTotals:
    """Our own totals, from the transactions as stored."""
    purchases = purchases_amount = refunds = refunds_amount = 0
    cancellations = cancellations_amount = unauthorized = unauthorized_amount = 0
    for tx in transactions:
        if tx.result == "declined":
            unauthorized += 1
            unauthorized_amount += tx.amount
        elif tx.operation == "purchase":
            purchases += 1
            purchases_amount += tx.amount
        elif tx.operation == "refund":
            refunds += 1
            refunds_amount += tx.amount
        else:
            cancellations += 1
            cancellations_amount += tx.amount
    return RemiseTotals(purchases, purchases_amount, refunds, refunds_amount, cancellations,
                        cancellations_amount, unauthorized, unauthorized_amount)


def _money(amount: int, currency: int) -> str:
    exponent = _EXPONENTS.get(currency, 2)
    if exponent == 0:
        return str(amount)
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**exponent)
    return f"{sign}{whole},{frac:0{exponent}d}"


def remise_status(declared: RemiseTotals, computed: RemiseTotals, currency: int) -> str:
    """"REMISE CORRECTE", or "ECART" followed by each kind whose count or amount differs."""
    differences = []
    for kind, label in _KINDS:
        parts = []
        d_count, c_count = getattr(declared, f"{kind}_count"), getattr(computed, f"{kind}_count")
        d_amount = getattr(declared, f"{kind}_amount")
        c_amount = getattr(computed, f"{kind}_amount")
        if d_count != c_count:
            parts.append(f"NB DECLARE {d_count} CALCULE {c_count}")
        if d_amount != c_amount:
            parts.append(
                f"MONTANT DECLARE {_money(d_amount, currency)} "
                f"CALCULE {_money(c_amount, currency)}"
            )
        if parts:
            differences.append(f"{label} " + " ".join(parts))
    if not differences:
        return STATUS_CORRECT
    return "ECART " + "; ".join(differences)


def _check_text(where: str, name: str, value: str | None, *, required: bool = False) -> None:
    if value is None:
        if required:
            raise InvalidRemise(f"{where}: {name} is missing")
        return
    if (required and not value.strip()) or len(value) > _MAX_TEXT or not value.isprintable():
        raise InvalidRemise(f"{where}: {name} {value!r} is empty, too long or not printable")


def _check_int(where: str, name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not low <= value <= high:
        raise InvalidRemise(f"{where}: {name} must be an integer in {low}..{high}, got {value!r}")


def _check_time(where: str, name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRemise(f"{where}: {name} {value.isoformat()} has no time zone")


_MAX_INT4, _MAX_AMOUNT = 2**31 - 1, 2**62
_TEXT_FIELDS = ("authorization_number", "issuer", "product", "rrn", "stan", "aid")


def validate(remise: Remise) -> None:
    """Reject, with the field named, anything the schema would refuse less clearly."""
    where = f"remise {remise.remise_number} of terminal {remise.terminal_serial!r}"
    _check_text(where, "terminal_serial", remise.terminal_serial, required=True)
    _check_text(where, "contract_number", remise.contract_number, required=True)
    _check_text(where, "application", remise.application, required=True)
    _check_int(where, "remise_number", remise.remise_number, 0, _MAX_INT4)
    _check_int(where, "file_number", remise.file_number, 0, _MAX_INT4)
    _check_int(where, "ack_window", remise.ack_window, 0, 32767)
    _check_int(where, "currency", remise.currency, 1, 999)
    _check_time(where, "collected_at", remise.collected_at)
    if not all(value.__class__ is int and 0 <= value <= _MAX_AMOUNT
               for value in msgspec.structs.astuple(remise.declared)):  # which one?
        for name in RemiseTotals.__struct_fields__:
            _check_int(where, f"declared {name}", getattr(remise.declared, name), 0,
                       _MAX_AMOUNT)
    seen: set[int] = set()
    currency, pan_masked, few = remise.currency, _PAN_MASKED.match, _GOOD_FEW
    for tx in remise.transactions:
        # The checks of `_check_transaction`, in one expression: a good transaction (all
        # of them, but for a bug) costs no call per field. Any doubt: the careful path.
        seq, amount, version = tx.seq, tx.amount, tx.pan_hmac_key_version
        authorization, rrn, stan = tx.authorization_number, tx.rrn, tx.stan
        if (seq.__class__ is int and 0 <= seq <= _MAX_INT4 and seq not in seen
                and amount.__class__ is int and 0 <= amount <= _MAX_AMOUNT
                and tx.currency == currency
                and (tx.at.tzinfo is UTC or tx.at.utcoffset() is not None)
                and pan_masked(tx.pan_masked) and len(tx.pan_hmac) == 32
                and version.__class__ is int and 1 <= version <= 32767
                and tx.expiry in _GOOD_EXPIRY and tx.response_code in _GOOD_CODES
                and tx.issuer in few and tx.product in few and tx.aid in few
                and (authorization is None
                     or (len(authorization) <= _MAX_TEXT and authorization.isprintable()))
                and (rrn is None or (len(rrn) <= _MAX_TEXT and rrn.isprintable()))
                and (stan is None or (len(stan) <= _MAX_TEXT and stan.isprintable()))):
            seen.add(seq)
            continue
        _check_transaction(where, remise, tx, seen)
        seen.add(seq)
        for value in (tx.issuer, tx.product, tx.aid):  # checked: good from now on
            if len(_GOOD_FEW) < _MAX_GOOD_FEW:
                _GOOD_FEW.add(value)


# What the fast path of `validate` accepts by set membership: every expiry and response
# code the careful checks accept (but for a trailing newline, which `$` lets through), and
# issuers, products and AIDs (a few values each) once the careful path has checked them.
_GOOD_EXPIRY = frozenset({None, *(f"{y:02d}{m:02d}" for y in range(100) for m in range(1, 13))})
_CODE_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_GOOD_CODES = frozenset({None, *(a + b for a in _CODE_CHARS for b in _CODE_CHARS)})
_GOOD_FEW: set[str | None] = {None}
_MAX_GOOD_FEW = 4096


def _check_transaction(where: str, remise: Remise, tx: RemiseTransaction,
                       seen: set[int]) -> None:
    """Each check of a transaction in turn; raises `InvalidRemise` naming the first that
    fails (a transaction `validate`'s one expression doubted may still be good)."""
    at = f"{where}, transaction {tx.seq}"
    _check_int(at, "seq", tx.seq, 0, _MAX_INT4)
    if tx.seq in seen:
        raise InvalidRemise(f"{at}: sequence number repeated")
    _check_time(at, "at", tx.at)
    _check_int(at, "amount", tx.amount, 0, _MAX_AMOUNT)
    if tx.currency != remise.currency:
        raise InvalidRemise(
            f"{at}: currency {tx.currency} differs from the remise's {remise.currency}"
        )
    if not isinstance(tx.pan_masked, str) or not _PAN_MASKED.match(tx.pan_masked):
        raise InvalidRemise(f"{at}: pan_masked must be 6 digits, 2-9 '*', 4 digits")
    if len(tx.pan_hmac) != 32:
        raise InvalidRemise(f"{at}: pan_hmac must be 32 bytes, got {len(tx.pan_hmac)}")
    _check_int(at, "pan_hmac_key_version", tx.pan_hmac_key_version, 1, 32767)
    if tx.expiry is not None and not _EXPIRY.match(tx.expiry):
        raise InvalidRemise(f"{at}: expiry {tx.expiry!r} is not YYMM")
    if tx.response_code is not None and not _RESPONSE_CODE.match(tx.response_code):
        raise InvalidRemise(f"{at}: response code {tx.response_code!r} is not 2 characters")
    for name in _TEXT_FIELDS:
        _check_text(at, name, getattr(tx, name))


class _Context(NamedTuple):
    """The terminal and contract a remise names, as the database knows them (an id is None
    when the database does not know that terminal or contract)."""

    terminal_id: int | None
    maker: str | None
    itp: str | None
    contract_id: int | None
    rang: str
    bank_code: str
    acquirer: str | None
    label: str | None
    trade_name: str | None
    siret: str | None


# The claim and the COPY of a remise go as ONE simple-protocol message (see `_store_once`):
# "SELECT * FROM passerelle_claim_remise(...); COPY transactions ... FROM STDIN". Its result
# columns, in order (migration 0008): remise_id, stored, stored_status, stored_correct,
# stored_count, then the context every transaction row copies.
_CLAIM = b"SELECT * FROM passerelle_claim_remise("
_TOTALS_ARRAY = b"'{" + b",".join([b"%d"] * len(RemiseTotals.__struct_fields__)) + b"}'"

# (column, PostgreSQL type for binary COPY). Per transaction first the fixed-size values,
# then what is the same for the whole remise, then the text values: `copy_transactions`
# writes each row as one packed head, one block shared by the remise, and the texts.
_TX_FIXED = (
    ("tx_at", "timestamptz"), ("seq", "int4"), ("amount", "int8"), ("currency", "int2"),
    ("pan_hmac", "bytea"), ("pan_hmac_key_version", "int2"),
)
_TX_REMISE = (
    ("remise_id", "int8"), ("collected_at", "timestamptz"), ("remise_state", "text"),
    ("remise_number", "int4"), ("file_number", "int4"), ("terminal_serial", "text"),
    ("maker", "text"), ("contract_id", "int8"), ("contract_number", "text"),
    ("rang", "text"), ("bank_code", "text"), ("application", "text"), ("label", "text"),
    ("trade_name", "text"), ("siret", "text"),
)
_TX_TEXT = (
    ("operation", "text"), ("direction", "text"), ("result", "text"),
    ("response_code", "text"), ("pan_masked", "text"), ("expiry", "text"),
    ("authorization_number", "text"), ("issuer", "text"), ("product", "text"),
    ("rrn", "text"), ("stan", "text"), ("aid", "text"),
)
_TX_COLUMNS = (*_TX_FIXED, *_TX_REMISE, *_TX_TEXT)
COPY_TRANSACTIONS = (
    f"COPY transactions ({', '.join(c for c, _ in _TX_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
)
COPY_TYPES = [t for _, t in _TX_COLUMNS]
_COPY_STATEMENT = COPY_TRANSACTIONS.encode()
_DIRECTION = {"purchase": "debit", "refund": "credit", "cancellation": "credit"}


def transaction_rows(
    remise: Remise, remise_id: int, remise_state: str, context: Sequence[object]
) -> list[tuple[object, ...]]:
    """The COPY rows of a remise's transactions (context: a `_Context`-shaped sequence),
    as tuples in `COPY_TRANSACTIONS` order (for `write_row`)."""
    (_tid, maker, _itp, contract_id, rang, bank_code, _acq, label, trade_name, siret) = context
    collected_at = remise.collected_at.astimezone(UTC)
    return [
        (
            tx.at, tx.seq, tx.amount, tx.currency, tx.pan_hmac, tx.pan_hmac_key_version,
            remise_id, collected_at, remise_state, remise.remise_number, remise.file_number,
            remise.terminal_serial, maker, contract_id, remise.contract_number, rang,
            bank_code, remise.application, label, trade_name, siret,
            tx.operation, _DIRECTION[tx.operation], tx.result, tx.response_code,
            tx.pan_masked, tx.expiry, tx.authorization_number, tx.issuer, tx.product, tx.rrn,
            tx.stan, tx.aid,
        )
        for tx in remise.transactions
    ]


# -- binary COPY, written here rather than value by value through psycopg's adapters -----
# PostgreSQL's binary COPY format: a signature, then per row a 16-bit column count and per
# column a 32-bit length (-1: NULL) and the value in its binary form (integers big-endian,
# timestamptz as microseconds since 2000-01-01 UTC, text as UTF-8, bytea as is), then -1.
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # no flags, no header extension
_TRAILER = b"\xff\xff"
_NULL = b"\xff\xff\xff\xff"
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_LENGTH = struct.Struct(">i").pack
# column count, then tx_at, seq, amount, currency, pan_hmac (32 bytes), key version
_HEAD = struct.Struct(">hiqiiiqihi32sih")
_COLUMNS = len(_TX_COLUMNS)
_MAX_CACHED_TEXT = 4096


def _text(value: str | None) -> bytes:
    if value is None:
        return _NULL
    raw = value.encode()
    return _LENGTH(len(raw)) + raw


class _TextCache(dict[str | None, bytes]):
    """Encoded values of a column with few distinct values (response codes, issuers...):
    a dict lookup instead of an encode per row. Bounded whatever the terminals send."""

    def __missing__(self, value: str | None) -> bytes:
        encoded = _text(value)
        if len(self) < _MAX_CACHED_TEXT:
            self[value] = encoded
        return encoded


_FEW = {name: _TextCache() for name in ("response_code", "expiry", "issuer", "product", "aid")}
_OUTCOMES = {
    (operation, result): _text(operation) + _text(direction) + _text(result)
    for operation, direction in _DIRECTION.items() for result in ("approved", "declined")
}


def _int8(value: int) -> bytes:
    return b"\x00\x00\x00\x08" + value.to_bytes(8, "big", signed=True)


def _int4(value: int) -> bytes:
    return b"\x00\x00\x00\x04" + value.to_bytes(4, "big", signed=True)


def _timestamptz(value: datetime) -> int:
    return (value - _PG_EPOCH) // _MICROSECOND


def copy_transactions(
    remise: Remise, remise_id: int, remise_state: str, context: Sequence[object]
) -> bytes:
    """The whole binary COPY payload of a remise's transactions (`COPY_TRANSACTIONS`): the
    rows `transaction_rows` gives, encoded in one pass. The remise must be validated
    (`validate`): a PAN HMAC is 32 bytes, every integer within its column's range."""
    (_tid, maker, _itp, contract_id, rang, bank_code, _acq, label, trade_name, siret) = context
    shared = b"".join((
        _int8(remise_id), b"\x00\x00\x00\x08",
        _timestamptz(remise.collected_at).to_bytes(8, "big", signed=True),
        _text(remise_state), _int4(remise.remise_number), _int4(remise.file_number),
        _text(remise.terminal_serial), _text(maker),  # type: ignore[arg-type]
        _int8(contract_id),  # type: ignore[arg-type]
        *(_text(v) for v in (remise.contract_number, rang, bank_code,  # type: ignore[misc,arg-type]
                             remise.application, label, trade_name, siret)),
    ))
    head, outcomes = _HEAD.pack, _OUTCOMES
    codes, expiries, issuers, products, aids = (
        _FEW["response_code"], _FEW["expiry"], _FEW["issuer"], _FEW["product"], _FEW["aid"])
    parts = [_SIGNATURE]
    extend = parts.extend
    for tx in remise.transactions:
        masked = tx.pan_masked.encode()  # validated: 6 digits, '*'s, 4 digits
        extend((
            head(_COLUMNS, 8, (tx.at - _PG_EPOCH) // _MICROSECOND, 4, tx.seq, 8, tx.amount,
                 2, tx.currency, 32, tx.pan_hmac, 2, tx.pan_hmac_key_version),
            shared, outcomes[tx.operation, tx.result], codes[tx.response_code],
            _LENGTH(len(masked)), masked, expiries[tx.expiry],
            _text(tx.authorization_number), issuers[tx.issuer], products[tx.product],
            _text(tx.rrn), _text(tx.stan), aids[tx.aid],
        ))
    parts.append(_TRAILER)
    return b"".join(parts)


class RemiseWriter:
    """Stores remises through an asyncio connection pool; safe from many tasks and nodes."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def store(self, remise: Remise, *, spooled: bool = False,
                    validated: bool = False, logged: bool = False) -> StoreOutcome:
        """Store `remise` once; return after COMMIT. `spooled` marks a replayed remise;
        `validated`: the caller has just run `validate(remise)` (RemiseSink), so it is not
        run twice; `logged`: the caller logs the outcome at info level, so a stored remise
        is logged here at debug level only.

        Raises `InvalidRemise` or `UnknownReference` for a remise that can never be stored,
        `DatabaseUnavailable` when PostgreSQL is away (the caller spools and retries).
        """
        if not validated:
            validate(remise)
        what = f"storing remise {remise.remise_number} of {remise.terminal_serial!r}"
        with translate_errors(what):
            try:
                return await self._store_twice(remise, spooled, logged)
            except psycopg.errors.UndefinedFunction as exc:
                # Migration 0008's function is missing: the database came back from a
                # restore (as its missing tables would say): retry once it is migrated
                # (storage.runtime migrates again), not a bad remise.
                raise DatabaseUnavailable(f"{what}: schema not migrated: {exc}") from exc

    async def _store_twice(self, remise: Remise, spooled: bool,
                           logged: bool) -> StoreOutcome:
        """`_store_once`, again on a connection error (see below); any other error as is."""
        try:
            return await self._store_once(remise, spooled, logged)
        except PoolTimeout:
            raise  # no connection at all: the database is away
        except (psycopg.OperationalError, psycopg.InterfaceError):
            # Pooled connections the server dropped (restart, failover) fail on first
            # use: sort out the idle ones at once and, storing being idempotent, try
            # once more. (No check on every checkout: it costs a round trip per remise.)
            await self.pool.check()
            return await self._store_once(remise, spooled, logged)

    async def _store_once(self, remise: Remise, spooled: bool, logged: bool) -> StoreOutcome:
        computed = compute_totals(remise.transactions)
        status = remise_status(remise.declared, computed, remise.currency)
        is_correct = status == STATUS_CORRECT
        key = remise.key
        async with self.pool.connection() as conn:
            pgconn = conn.pgconn
            if pgconn.transaction_status != TransactionStatus.IDLE:
                raise StorageError("a pooled connection was handed over inside a transaction")
            if conn.info.encoding != "utf-8":
                await _use_utf8(conn)
            encoding = conn.info.encoding
            pgconn.send_query(_claim_and_copy(
                Escaping(pgconn).escape_literal, encoding, remise, computed, status=status,
                is_correct=is_correct, spooled=spooled))
            # Round trip 1: the claim's row, then the server waits for the COPY data.
            claim = _Claim.read(await conn.wait(execute(pgconn)), encoding)
            payload = _EMPTY_COPY  # a repeat or an unknown reference: nothing to copy
            if claim.stored and remise.transactions:
                payload = copy_transactions(remise, claim.remise_id,
                                            "correct" if is_correct else "difference",
                                            claim.context)
            # Round trip 2: the rows, then the implicit transaction's COMMIT, which
            # PostgreSQL runs before it reports the COPY complete: COMMAND_OK here means
            # the remise is committed (with the claim's rows, or nothing at all).
            for result in await conn.wait(_finish_copy(pgconn, payload)):
                if result.status != ExecStatus.COMMAND_OK:
                    raise error_from_result(result, encoding=encoding)
        if claim.context.terminal_id is None:
            raise UnknownReference(f"unknown terminal {remise.terminal_serial!r}")
        if claim.context.contract_id is None:
            raise UnknownReference(
                f"unknown contract {remise.contract_number!r} for application "
                f"{remise.application!r} (terminal {remise.terminal_serial!r})"
            )
        if not claim.stored:
            if claim.stored_status is None:  # the key exists but its remise row was dropped
                raise StorageError(
                    f"remise {remise.remise_number} of {remise.terminal_serial!r} was stored "
                    "before and has since been removed by retention"
                )
            log.info("storage.remise_repeated", terminal=key[0], contract=key[1],
                     application=key[2], remise=key[3], remise_id=claim.remise_id)
            return StoreOutcome(claim.remise_id, False, claim.stored_status,
                                claim.stored_correct, claim.stored_count)
        # One line per remise on the hot path: the caller that logs the outcome (the
        # dialogue, through RemiseSink) says so with `logged`, and this one is debug.
        (log.debug if logged else log.info)(
            "storage.remise_stored", terminal=key[0], contract=key[1], application=key[2],
            remise=key[3], remise_id=claim.remise_id, transactions=len(remise.transactions),
            status=status, spooled=spooled)
        return StoreOutcome(claim.remise_id, True, status, is_correct,
                            len(remise.transactions))


# -- the claim and the COPY in one message -----------------------------------------------------
# Round trips per remise: 2 (claim + COPY start; rows + COMMIT). A simple-protocol message
# with several statements runs them as one implicit transaction: an error anywhere (the claim,
# a row) rolls all of it back and the rest is not run, a success commits before the last
# statement's completion is reported. The claim's values are therefore literals (escaped by
# libpq for this connection), not parameters: the extended protocol takes one statement per
# message, and psycopg's copy() one statement, so the message is driven through libpq here.
# psycopg's own non-blocking steps (`execute`, `send`, `fetch_many`) drive it, and
# `conn.wait` runs them on the event loop as psycopg does for its own queries.
_EMPTY_COPY = _SIGNATURE + _TRAILER


def _claim_and_copy(literal: Callable[[bytes], bytes], encoding: str, remise: Remise,
                    computed: RemiseTotals, *, status: str, is_correct: bool,
                    spooled: bool) -> bytes:
    """The one message: `passerelle_claim_remise(...)` (migration 0008), then the COPY.
    Integers are validated (`validate`) and formatted by Python; texts go through `literal`."""
    declared, totals = remise.declared, computed
    values = (
        literal(remise.terminal_serial.encode(encoding)),
        literal(remise.contract_number.encode(encoding)),
        literal(remise.application.encode(encoding)),
        b"%d" % remise.remise_number,
        b"'%s'" % remise.collected_at.astimezone(UTC).isoformat().encode(),
        b"%d" % remise.file_number, b"%d" % remise.ack_window, b"%d" % remise.currency,
        _TOTALS_ARRAY % msgspec.structs.astuple(declared),
        _TOTALS_ARRAY % msgspec.structs.astuple(totals),
        b"%d" % len(remise.transactions),
        # net: what the merchant is credited (cancellations undo purchases)
        b"%d" % (totals.purchases_amount - totals.refunds_amount
                 - totals.cancellations_amount),
        b"true" if is_correct else b"false",
        literal(status.encode(encoding)),
        b"true" if spooled else b"false",
    )
    return b"".join((_CLAIM, b",".join(values), b"); ", _COPY_STATEMENT))


class _Claim(NamedTuple):
    """The claim's row (text format, as the simple protocol returns it)."""

    remise_id: int
    stored: bool
    stored_status: str | None
    stored_correct: bool
    stored_count: int
    context: _Context

    @classmethod
    def read(cls, results: list[PGresult], encoding: str) -> _Claim:
        """From the results of round trip 1: the claim's row, then COPY_IN."""
        for result in results:  # the claim's error, or the COPY's as it starts (a lock
            if result.status == ExecStatus.FATAL_ERROR:  # wait cancelled): its own class
                raise error_from_result(result, encoding=encoding)
        claim = results[0]
        if (len(results) != 2 or claim.status != ExecStatus.TUPLES_OK
                or results[1].status != ExecStatus.COPY_IN):
            raise StorageError("the server did not wait for the COPY after the claim")
        (remise_id, stored, stored_status, stored_correct, stored_count, terminal_id, maker,
         contract_id, rang, bank_code, label, trade_name, siret) = (
            None if value is None else value.decode(encoding)
            for value in (claim.get_value(0, column) for column in range(claim.nfields)))
        return cls(
            int(remise_id) if remise_id is not None else 0, stored == "t", stored_status,
            stored_correct == "t", int(stored_count) if stored_count is not None else 0,
            _Context(int(terminal_id) if terminal_id is not None else None, maker, None,
                     int(contract_id) if contract_id is not None else None,
                     rang, bank_code, None, label, trade_name, siret),  # type: ignore[arg-type]
        )


async def _use_utf8(conn: psycopg.AsyncConnection) -> None:
    """Set the session's client encoding to UTF-8, once per connection that has another
    (a PGCLIENTENCODING, a LATIN1 database): the binary COPY's texts are UTF-8 (see
    `_text`) and the server reads them in the client encoding, so any other one would
    store every accented label garbled, without an error. psycopg's adapters follow."""
    await conn.execute("SET client_encoding TO 'UTF8'")
    await conn.commit()


def _finish_copy(pgconn: PGconn, payload: bytes) -> PQGen[list[PGresult]]:
    """Round trip 2 (a psycopg generator, for `conn.wait`): the COPY data and its end in
    one flush, then every result to the end of the message."""
    while pgconn.put_copy_data(payload) == 0:  # libpq's buffer full: as psycopg's copy
        yield Wait.W
    while pgconn.put_copy_end(None) == 0:
        yield Wait.W
    yield from send(pgconn)
    return (yield from fetch_many(pgconn))
