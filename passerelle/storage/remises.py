"""The télécollecte writer: one remise (a terminal's daily batch) into PostgreSQL, once.

A remise is stored in ONE transaction: its key row (terminal, contract, application, remise
number) in `remise_keys`, its row in `remises`, its transactions by COPY. The key row's unique
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
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal, NamedTuple

import msgspec
import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from passerelle.storage.db import StorageError, translate_errors

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
    for name in RemiseTotals.__struct_fields__:
        _check_int(where, f"declared {name}", getattr(remise.declared, name), 0, _MAX_AMOUNT)
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
    """The terminal and contract a remise names, as the database knows them."""

    terminal_id: int
    maker: str | None
    itp: str | None
    contract_id: int
    rang: str
    bank_code: str
    acquirer: str | None
    label: str | None
    trade_name: str | None
    siret: str | None


_EXISTING = """
SELECT k.id, r.status, r.is_correct, r.transaction_count
  FROM remise_keys k
  JOIN remises r ON r.id = k.id AND r.collected_at = k.collected_at
 WHERE k.terminal_serial = %s AND k.contract_number = %s AND k.application = %s
   AND k.remise_number = %s
"""

_CONTEXT_COLUMNS = _Context._fields
_REMISE_COLUMNS = (
    "id", "collected_at", "terminal_id", "terminal_serial", "maker", "itp", "contract_id",
    "contract_number", "rang", "bank_code", "application", "acquirer", "label", "trade_name",
    "siret", "remise_number", "file_number", "ack_window", "currency",
    *(f"declared_{name}" for name in RemiseTotals.__struct_fields__),
    *RemiseTotals.__struct_fields__,
    "transaction_count", "net_amount", "is_correct", "status", "spooled",
)


def _remise_source(column: str) -> str:
    if column == "id":
        return "claim.id"
    if column in _CONTEXT_COLUMNS:
        return f"ctx.{column}"
    return f"%({column})s"


# One round trip claims the remise: look up its terminal and contract, insert its key unless
# it exists (waiting for a concurrent claimer to commit or roll back), insert its row if the
# key was ours, and return the context plus the new id (NULL: unknown reference or repeat).
# Built from the constant column lists above, no outside input.
_CLAIM = f"""
WITH ctx AS (
  SELECT t.id AS terminal_id, t.maker, t.itp, c.id AS contract_id, c.rang, c.bank_code,
         c.acquirer, c.label, COALESCE(c.trade_name, m.trade_name) AS trade_name,
         COALESCE(c.siret, m.siret) AS siret
    FROM (SELECT 1) AS one
    LEFT JOIN terminals t ON t.serial = %(terminal_serial)s
    LEFT JOIN contracts c ON c.contract_number = %(contract_number)s
                         AND c.application = %(application)s
    LEFT JOIN merchants m ON m.id = c.merchant_id
), claim AS (
  INSERT INTO remise_keys (terminal_serial, contract_number, application, remise_number,
                           collected_at)
  SELECT %(terminal_serial)s, %(contract_number)s, %(application)s, %(remise_number)s,
         %(collected_at)s
    FROM ctx WHERE ctx.terminal_id IS NOT NULL AND ctx.contract_id IS NOT NULL
  ON CONFLICT (terminal_serial, contract_number, application, remise_number) DO NOTHING
  RETURNING id
), header AS (
  INSERT INTO remises ({", ".join(_REMISE_COLUMNS)})
  SELECT {", ".join(_remise_source(c) for c in _REMISE_COLUMNS)} FROM claim CROSS JOIN ctx
)
SELECT ctx.*, (SELECT id FROM claim) FROM ctx
"""  # noqa: S608

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
        *(_text(v) for v in (remise.contract_number, rang, bank_code,  # type: ignore[misc]
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
        collected_at = remise.collected_at.astimezone(UTC)
        async with self.pool.connection() as conn, conn.transaction():
            params = {
                **{f"declared_{k}": v
                   for k, v in msgspec.structs.asdict(remise.declared).items()},
                **msgspec.structs.asdict(computed),
                "collected_at": collected_at,
                "terminal_serial": remise.terminal_serial,
                "contract_number": remise.contract_number,
                "application": remise.application,
                "remise_number": remise.remise_number,
                "file_number": remise.file_number,
                "ack_window": remise.ack_window,
                "currency": remise.currency,
                "transaction_count": len(remise.transactions),
                # net: what the merchant is credited (cancellations undo purchases)
                "net_amount": computed.purchases_amount - computed.refunds_amount
                - computed.cancellations_amount,
                "is_correct": is_correct,
                "status": status,
                "spooled": spooled,
            }
            row = await (await conn.execute(_CLAIM, params)).fetchone()
            assert row is not None  # FROM ctx always yields one row
            context, remise_id = _Context(*row[:-1]), row[-1]
            if context.terminal_id is None:
                raise UnknownReference(f"unknown terminal {remise.terminal_serial!r}")
            if context.contract_id is None:
                raise UnknownReference(
                    f"unknown contract {remise.contract_number!r} for application "
                    f"{remise.application!r} (terminal {remise.terminal_serial!r})"
                )
            if remise_id is None:
                existing = await self._existing(conn, remise)
                log.info("storage.remise_repeated", terminal=key[0], contract=key[1],
                         application=key[2], remise=key[3], remise_id=existing.remise_id)
                return existing
            if remise.transactions:
                payload = copy_transactions(
                    remise, remise_id, "correct" if is_correct else "difference", context
                )
                async with conn.cursor().copy(COPY_TRANSACTIONS) as copy:
                    await copy.write(payload)  # one buffer: the remise's rows, encoded
        # One line per remise on the hot path: the caller that logs the outcome (the
        # dialogue, through RemiseSink) says so with `logged`, and this one is debug.
        (log.debug if logged else log.info)(
            "storage.remise_stored", terminal=key[0], contract=key[1], application=key[2],
            remise=key[3], remise_id=remise_id, transactions=len(remise.transactions),
            status=status, spooled=spooled)
        return StoreOutcome(remise_id, True, status, is_correct, len(remise.transactions))

    @staticmethod
    async def _existing(conn: psycopg.AsyncConnection, remise: Remise) -> StoreOutcome:
        row = await (await conn.execute(_EXISTING, remise.key)).fetchone()
        if row is None:  # the key exists but its remise row was dropped by retention
            raise StorageError(
                f"remise {remise.remise_number} of {remise.terminal_serial!r} was stored "
                "before and has since been removed by retention"
            )
        return StoreOutcome(row[0], False, row[1], row[2], row[3])
