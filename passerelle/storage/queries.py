"""The one query layer for remises and transactions, shared by mpctl and the portal.

Every search goes through `build_where`: each filter of `filters.py` becomes one
parameterised predicate on the remises or transactions table (both carry their contract,
terminal and merchant context, so no join is needed and each predicate can use an index);
identifiers come only from the whitelists below, composed with `psycopg.sql`.

- Scope: with a `user_id`, only the contracts in that user's scope are visible (an active
  operator sees everything; a disabled or unknown user sees nothing). The scope is read
  first (`resolve_scope`, one indexed lookup) and the search carries it as a constant
  `contract_id = ANY(...)`: the planner then sees which contracts, and how many rows they
  hold, and walks the (contract_id, time) indexes of migration 0007 for a merchant instead
  of filtering a whole month of the fleet (a subquery OR'ed with the operator case hid
  both from it).
- Paging: keyset (`cursor`, stable under inserts, cheap on deep pages) or `offset`; the page
  size is capped at `MAX_PAGE_SIZE` whatever the caller asks.
- Sorting: only whitelisted, NOT NULL columns, the row id breaking ties.
- Totals: count and amount by currency, optionally grouped by contract, application or
  issuer. Debits are approved purchases; credits approved refunds and cancellations;
  declined transactions count apart (the "non autorisées" of the remise ticket).
- Plans: searches, totals and counts are never prepared (`prepare=False`). psycopg
  prepares a statement run 5 times on a connection, and PostgreSQL then moves to a generic
  plan that ignores the values; for a search, whose best plan depends on them (the scope's
  size, the period), that plan was measured 10 to 20 times slower (2 ms -> 40-90 ms). A
  custom plan costs about a millisecond of planning.
- Export: `iter_remises` / `iter_transactions` stream through a server-side cursor, so a
  month of transactions costs constant memory.

The same builders serve the synchronous functions (mpctl) and the `a`-prefixed asyncio
ones (portal).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

import msgspec
import psycopg
from psycopg import sql

from passerelle.storage.db import translate_errors
from passerelle.storage.filters import FilterError, RemiseFilters, TransactionFilters, _Common
from passerelle.storage.pan import luhn_valid
from passerelle.storage.retention import add_months

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
Kind = Literal["remises", "transactions"]
GroupBy = Literal["contract", "application", "issuer"]
# What a user may see: None every contract (an active operator, or no user given), else
# these contract ids only (empty for a disabled or unknown user: nothing).
Scope = tuple[int, ...] | None


class RemiseRow(msgspec.Struct, frozen=True):
    """A remise as searches, tickets and exports see it (fields in SELECT order)."""

    id: int
    collected_at: datetime
    terminal_serial: str
    maker: str | None
    contract_id: int
    contract_number: str
    rang: str
    bank_code: str
    application: str
    label: str | None
    trade_name: str | None
    siret: str | None
    remise_number: int
    file_number: int
    currency: int
    purchases_count: int
    purchases_amount: int
    refunds_count: int
    refunds_amount: int
    cancellations_count: int
    cancellations_amount: int
    unauthorized_count: int
    unauthorized_amount: int
    declared_purchases_count: int
    declared_purchases_amount: int
    declared_refunds_count: int
    declared_refunds_amount: int
    declared_cancellations_count: int
    declared_cancellations_amount: int
    declared_unauthorized_count: int
    declared_unauthorized_amount: int
    transaction_count: int
    net_amount: int
    is_correct: bool
    status: str


class TransactionRow(msgspec.Struct, frozen=True):
    """A stored transaction; the card only as its mask (never the HMAC, never a PAN)."""

    id: int
    tx_at: datetime
    remise_id: int
    seq: int
    collected_at: datetime
    remise_state: str
    remise_number: int
    file_number: int
    terminal_serial: str
    maker: str | None
    contract_id: int
    contract_number: str
    rang: str
    bank_code: str
    application: str
    label: str | None
    trade_name: str | None
    siret: str | None
    operation: str
    direction: str
    result: str
    response_code: str | None
    amount: int
    currency: int
    pan_masked: str
    expiry: str | None
    authorization_number: str | None
    issuer: str | None
    product: str | None
    rrn: str | None
    stan: str | None
    aid: str | None


T = TypeVar("T")


class Page(msgspec.Struct, Generic[T], frozen=True):
    """One page of rows; `next_cursor` continues a keyset walk, None on the last page."""

    rows: list[T]
    next_cursor: str | None = None


class Totals(msgspec.Struct, frozen=True, kw_only=True):
    """Counts and amounts (minor units) for one currency and, if grouped, one group.

    For remises `count` is the number of remises; for transactions the number of rows.
    net_amount = debit_amount - credit_amount.
    """

    group: str | None
    currency: int
    count: int
    transaction_count: int
    debit_count: int
    debit_amount: int
    credit_count: int
    credit_amount: int
    declined_count: int
    declined_amount: int
    net_amount: int


# --- whitelists -----------------------------------------------------------------------------


class _Table(msgspec.Struct, frozen=True):
    name: str
    time_column: str
    amount_column: str
    row_type: type[Any]
    sorts: dict[str, str]  # sort key -> column


_REMISES = _Table(
    "remises",
    "collected_at",
    "net_amount",
    RemiseRow,
    {
        "collected_at": "collected_at",
        "date": "collected_at",
        "amount": "net_amount",
        "transaction_count": "transaction_count",
        "remise_number": "remise_number",
        "file_number": "file_number",
        "contract_number": "contract_number",
        "terminal_serial": "terminal_serial",
        "application": "application",
    },
)
_TRANSACTIONS = _Table(
    "transactions",
    "tx_at",
    "amount",
    TransactionRow,
    {
        "tx_at": "tx_at",
        "date": "tx_at",
        "amount": "amount",
        "remise_number": "remise_number",
        "contract_number": "contract_number",
        "terminal_serial": "terminal_serial",
        "application": "application",
        "response_code": "response_code",
    },
)
REMISE_SORTS = tuple(_REMISES.sorts)
TRANSACTION_SORTS = tuple(_TRANSACTIONS.sorts)
_NULLABLE_SORTS = {"response_code"}

# filter field -> column, for plain equality.
_EQUAL = {
    "application": "application",
    "contract_number": "contract_number",
    "rang": "rang",
    "bank_code": "bank_code",
    "currency": "currency",
    "remise_number": "remise_number",
    "file_number": "file_number",
    "terminal_serial": "terminal_serial",
    "siret": "siret",
    # remises
    "transaction_count": "transaction_count",
    # transactions
    "remise_id": "remise_id",
    "remise_state": "remise_state",
    "direction": "direction",
    "operation": "operation",
    "result": "result",
    "response_code": "response_code",
    "expiry": "expiry",
    "authorization_number": "authorization_number",
    "rrn": "rrn",
}
_CASE_INSENSITIVE = {"maker": "maker", "issuer": "issuer", "product": "product"}
_SUBSTRING = {"label": "label", "trade_name": "trade_name"}  # lower(col) LIKE %term%


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# A filter on application or contract number also narrows the scope to the contracts that
# have them. An equivalence, not a new filter: a stored row's contract_id is the contract
# found by its (contract_number, application), which never change (storage/remises.py), and
# the row's own predicate stays in the WHERE clause. It lets a meal-voucher search read
# only the merchant's CONECS contracts' rows instead of filtering all of theirs.
_SCOPE = """SELECT u.role = 'operator',
       COALESCE(array_agg(c.id) FILTER (WHERE c.id IS NOT NULL), '{}')
  FROM users u
  LEFT JOIN user_scopes s ON s.user_id = u.id
  LEFT JOIN contracts c ON c.id = s.contract_id
        AND (%(application)s::text IS NULL OR c.application = %(application)s)
        AND (%(number)s::text IS NULL OR c.contract_number = %(number)s)
 WHERE u.id = %(user)s AND u.active GROUP BY u.id, u.role"""


def _scope_params(user_id: int, filters: _Common | None) -> dict[str, Any]:
    return {"user": user_id, "application": filters and filters.application,
            "number": filters and filters.contract_number}


def _scope_of(row: tuple[bool, list[int]] | None) -> Scope:
    if row is None:
        return ()  # disabled or unknown: nothing
    is_operator, contracts = row
    return None if is_operator else tuple(sorted(contracts))


def resolve_scope(conn: psycopg.Connection, user_id: int | None,
                  filters: _Common | None = None) -> Scope:
    """The contracts `user_id` may see (None: all of them), narrowed to those `filters`
    can match; see `Scope`."""
    if user_id is None:
        return None
    with translate_errors("reading the user's scope"):
        return _scope_of(conn.execute(_SCOPE, _scope_params(user_id, filters)).fetchone())


async def aresolve_scope(conn: psycopg.AsyncConnection, user_id: int | None,
                         filters: _Common | None = None) -> Scope:
    """`resolve_scope` for asyncio connections."""
    if user_id is None:
        return None
    with translate_errors("reading the user's scope"):
        cur = await conn.execute(_SCOPE, _scope_params(user_id, filters))
        return _scope_of(await cur.fetchone())


def build_where(
    table: _Table, filters: _Common, scope: Scope
) -> tuple[sql.Composed, dict[str, Any]]:
    """The WHERE clause (without the keyword) and its parameters for `filters`."""
    preds: list[sql.Composable] = []
    params: dict[str, Any] = {}

    def add(template: str, value: Any, **idents: str) -> None:
        name = f"p{len(params)}"
        params[name] = value
        formatted = {k: sql.Identifier(v) for k, v in idents.items()}
        preds.append(sql.SQL(template).format(p=sql.Placeholder(name), **formatted))

    start, end = filters.utc_bounds()
    if start is not None:
        add("{col} >= {p}", start, col=table.time_column)
    if end is not None:
        add("{col} < {p}", end, col=table.time_column)
    for field in filters.__struct_fields__:
        value = getattr(filters, field)
        if value is None or field in ("date_from", "date_to"):
            continue
        if field in _EQUAL:
            add("{col} = {p}", value, col=_EQUAL[field])
        elif field in _CASE_INSENSITIVE:
            add("lower({col}) = lower({p})", value, col=_CASE_INSENSITIVE[field])
        elif field in _SUBSTRING:
            add("lower({col}) LIKE {p}", f"%{_like_escape(value.lower())}%",
                col=_SUBSTRING[field])
        elif field == "amount":
            add("{col} = {p}", value, col=table.amount_column)
        elif field == "amount_min":
            add("{col} >= {p}", value, col=table.amount_column)
        elif field == "amount_max":
            add("{col} <= {p}", value, col=table.amount_column)
        elif field == "status":
            add("is_correct = {p}", value == "correct")
        elif field == "transaction_count_min":
            add("transaction_count >= {p}", value)
        elif field == "transaction_count_max":
            add("transaction_count <= {p}", value)
        elif field == "last4":
            add("right(pan_masked, 4) = {p}", value)
        elif field == "card_digests":
            # (version, digest) pairs: each row is compared under the key it was written with.
            versions, digests = f"p{len(params)}", f"p{len(params) + 1}"
            params[versions] = [version for version, _digest in value]
            params[digests] = [digest for _version, digest in value]
            preds.append(sql.SQL(
                "(pan_hmac_key_version, pan_hmac) IN (SELECT v, d FROM"
                " unnest({}::int2[], {}::bytea[]) AS k (v, d))"
            ).format(sql.Placeholder(versions), sql.Placeholder(digests)))
        else:  # a field added to filters.py but not here must fail loudly, not be ignored
            raise FilterError(field, f"is not a filter of {table.name}")
    if scope is not None:
        add("contract_id = ANY({p}::bigint[])", list(scope))
    if not preds:
        return sql.Composed([sql.SQL("true")]), params
    return sql.SQL(" AND ").join(preds), params


def _row_factory(table: _Table) -> Any:
    """Rows straight into the Struct, positionally: the SELECT lists its fields in order
    (a third faster than building keyword arguments, which exports notice)."""
    make = table.row_type

    def factory(_cursor: Any) -> Any:
        return lambda values: make(*values)

    return factory


def _columns(table: _Table) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(f) for f in table.row_type.__struct_fields__)


def _table_for(filters: _Common) -> _Table:
    return _REMISES if isinstance(filters, RemiseFilters) else _TRANSACTIONS


# --- cursors --------------------------------------------------------------------------------


def _encode_cursor(sort: str, value: Any, row_id: int) -> str:
    if isinstance(value, datetime):
        value = {"t": value.isoformat()}
    raw = json.dumps([sort, value, row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, sort: str) -> tuple[Any, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key, value, row_id = json.loads(raw)
        if isinstance(value, dict):
            value = datetime.fromisoformat(value["t"])
        if not isinstance(row_id, int):
            raise TypeError
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise FilterError("cursor", "is not a cursor this search produced") from None
    if key != sort:
        raise FilterError("cursor", f"was made for sort {key!r}, not {sort!r}")
    return value, row_id


def build_search(
    filters: RemiseFilters | TransactionFilters,
    *,
    scope: Scope = None,
    sort: str = "date",
    descending: bool = True,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
    offset: int | None = None,
) -> tuple[sql.Composed, dict[str, Any], str, int]:
    """SQL, parameters, sort column and page size of one page of a search."""
    table = _table_for(filters)
    if sort not in table.sorts:
        raise FilterError("sort", f"{sort!r} is not one of {', '.join(sorted(table.sorts))}")
    if limit < 1:
        raise FilterError("limit", f"{limit} is not a page size (1..{MAX_PAGE_SIZE})")
    if cursor is not None and offset:
        raise FilterError("cursor", "cannot be combined with --offset")
    if offset is not None and offset < 0:
        raise FilterError("offset", f"{offset} is negative")
    limit = min(limit, MAX_PAGE_SIZE)
    column = table.sorts[sort]
    where, params = build_where(table, filters, scope)
    if cursor is not None:
        value, row_id = _decode_cursor(cursor, sort)
        params["cursor_value"], params["cursor_id"] = value, row_id
        where = sql.SQL("{} AND ({}, id) {} ({}, {})").format(
            where, sql.Identifier(column), sql.SQL("<" if descending else ">"),
            sql.Placeholder("cursor_value"), sql.Placeholder("cursor_id"),
        )
    direction = sql.SQL("DESC" if descending else "ASC")
    order_column: sql.Composable = sql.Identifier(column)
    if column in _NULLABLE_SORTS:
        order_column = sql.SQL("COALESCE({}, '')").format(order_column)
    query = sql.SQL("SELECT {cols} FROM {table} WHERE {where} ORDER BY {order} {dir}, id {dir}"
                    " LIMIT {limit}").format(
        cols=_columns(table), table=sql.Identifier(table.name), where=where,
        order=order_column, dir=direction, limit=sql.Literal(limit + 1),
    )
    if offset:
        query = sql.SQL("{} OFFSET {}").format(query, sql.Literal(offset))
    return query, params, column, limit


def _page(rows: list[Any], sort: str, column: str, limit: int) -> Page[Any]:
    if len(rows) <= limit:
        return Page(rows)
    rows = rows[:limit]
    last = rows[-1]
    return Page(rows, _encode_cursor(sort, getattr(last, column), last.id))


def search(conn: psycopg.Connection, filters: RemiseFilters | TransactionFilters,
           *, user_id: int | None = None, **options: Any) -> Page[Any]:
    """One page of remises or transactions (by the type of `filters`)."""
    scope = resolve_scope(conn, user_id, filters)
    query, params, column, limit = build_search(filters, scope=scope, **options)
    sort = options.get("sort", "date")
    with translate_errors("searching"), conn.cursor(
        row_factory=_row_factory(_table_for(filters))
    ) as cur:
        rows = cur.execute(query, params, prepare=False).fetchall()
    return _page(rows, sort, column, limit)


async def asearch(conn: psycopg.AsyncConnection, filters: RemiseFilters | TransactionFilters,
                  *, user_id: int | None = None, **options: Any) -> Page[Any]:
    """`search` for asyncio connections."""
    scope = await aresolve_scope(conn, user_id, filters)
    query, params, column, limit = build_search(filters, scope=scope, **options)
    sort = options.get("sort", "date")
    with translate_errors("searching"):
        async with conn.cursor(row_factory=_row_factory(_table_for(filters))) as cur:
            await cur.execute(query, params, prepare=False)
            rows = await cur.fetchall()
    return _page(rows, sort, column, limit)


# --- totals ---------------------------------------------------------------------------------

_GROUP_COLUMNS = {
    ("remises", "contract"): "contract_number",
    ("remises", "application"): "application",
    ("transactions", "contract"): "contract_number",
    ("transactions", "application"): "application",
    ("transactions", "issuer"): "issuer",
}
_REMISE_SUMS = """count(*), COALESCE(sum(transaction_count), 0),
  COALESCE(sum(purchases_count), 0), COALESCE(sum(purchases_amount), 0),
  COALESCE(sum(refunds_count + cancellations_count), 0),
  COALESCE(sum(refunds_amount + cancellations_amount), 0),
  COALESCE(sum(unauthorized_count), 0), COALESCE(sum(unauthorized_amount), 0)"""
_TRANSACTION_SUMS = """count(*), count(*),
  count(*) FILTER (WHERE result = 'approved' AND direction = 'debit'),
  COALESCE(sum(amount) FILTER (WHERE result = 'approved' AND direction = 'debit'), 0),
  count(*) FILTER (WHERE result = 'approved' AND direction = 'credit'),
  COALESCE(sum(amount) FILTER (WHERE result = 'approved' AND direction = 'credit'), 0),
  count(*) FILTER (WHERE result = 'declined'),
  COALESCE(sum(amount) FILTER (WHERE result = 'declined'), 0)"""


def build_totals(
    filters: RemiseFilters | TransactionFilters,
    *,
    scope: Scope = None,
    group_by: GroupBy | None = None,
) -> tuple[sql.Composed, dict[str, Any]]:
    """SQL and parameters of the totals of a search, by currency (and group)."""
    table = _table_for(filters)
    where, params = build_where(table, filters, scope)
    if group_by is None:
        group: sql.Composable = sql.SQL("NULL::text")
    elif (table.name, group_by) in _GROUP_COLUMNS:
        group = sql.Identifier(_GROUP_COLUMNS[table.name, group_by])
    else:
        choices = sorted(g for t, g in _GROUP_COLUMNS if t == table.name)
        raise FilterError("group_by", f"{group_by!r} is not one of {', '.join(choices)}")
    sums = sql.SQL(_REMISE_SUMS if table is _REMISES else _TRANSACTION_SUMS)
    query = sql.SQL(
        "SELECT {group} AS g, currency, {sums} FROM {table} WHERE {where}"
        " GROUP BY 1, 2 ORDER BY 1 NULLS LAST, 2"
    ).format(group=group, sums=sums, table=sql.Identifier(table.name), where=where)
    return query, params


def _totals(rows: list[tuple[Any, ...]]) -> list[Totals]:
    out = []
    for group, currency, count, tx_count, dc, da, cc, ca, nc, na in rows:
        out.append(Totals(
            group=group, currency=currency, count=count, transaction_count=int(tx_count),
            debit_count=int(dc), debit_amount=int(da), credit_count=int(cc),
            credit_amount=int(ca), declined_count=int(nc), declined_amount=int(na),
            net_amount=int(da) - int(ca),
        ))
    return out


def totals(conn: psycopg.Connection, filters: RemiseFilters | TransactionFilters,
           *, user_id: int | None = None, **options: Any) -> list[Totals]:
    """Totals of a search, one row per currency (and group): count and amounts."""
    query, params = build_totals(filters, scope=resolve_scope(conn, user_id, filters),
                                 **options)
    with translate_errors("computing totals"):
        return _totals(conn.execute(query, params, prepare=False).fetchall())


async def atotals(conn: psycopg.AsyncConnection, filters: RemiseFilters | TransactionFilters,
                  *, user_id: int | None = None, **options: Any) -> list[Totals]:
    """`totals` for asyncio connections."""
    scope = await aresolve_scope(conn, user_id, filters)
    query, params = build_totals(filters, scope=scope, **options)
    with translate_errors("computing totals"):
        cur = await conn.execute(query, params, prepare=False)
        return _totals(await cur.fetchall())


# --- single rows and streams ----------------------------------------------------------------


def get_remise(conn: psycopg.Connection, remise_id: int,
               user_id: int | None = None) -> RemiseRow | None:
    """One remise by id, None when unknown or outside the user's scope."""
    return _get(conn, _REMISES, remise_id, user_id)


def get_transaction(conn: psycopg.Connection, transaction_id: int,
                    user_id: int | None = None) -> TransactionRow | None:
    """One transaction by id, None when unknown or outside the user's scope."""
    return _get(conn, _TRANSACTIONS, transaction_id, user_id)


def _get(conn: psycopg.Connection, table: _Table, row_id: int, user_id: int | None) -> Any:
    empty = RemiseFilters() if table is _REMISES else TransactionFilters()
    where, params = build_where(table, empty, resolve_scope(conn, user_id))
    params["row_id"] = row_id
    query = sql.SQL("SELECT {cols} FROM {table} WHERE id = {id} AND {where}").format(
        cols=_columns(table), table=sql.Identifier(table.name),
        id=sql.Placeholder("row_id"), where=where,
    )
    with translate_errors(f"reading {table.name} {row_id}"), conn.cursor(
        row_factory=_row_factory(table)
    ) as cur:
        return cur.execute(query, params).fetchone()


_CURSOR_NUMBERS = itertools.count(1)  # unique names: two streams may share a connection


def _iterate(conn: psycopg.Connection, filters: RemiseFilters | TransactionFilters,
             user_id: int | None, batch: int) -> Iterator[Any]:
    table = _table_for(filters)
    where, params = build_where(table, filters, resolve_scope(conn, user_id, filters))
    query = sql.SQL("SELECT {cols} FROM {table} WHERE {where} ORDER BY {time}, id").format(
        cols=_columns(table), table=sql.Identifier(table.name), where=where,
        time=sql.Identifier(table.time_column),
    )
    # A named (server-side) cursor: rows come `batch` at a time, whatever the total.
    with translate_errors(f"exporting {table.name}"), conn.transaction(), conn.cursor(
        name=f"export_{table.name}_{next(_CURSOR_NUMBERS)}",
        row_factory=_row_factory(table),
    ) as cur:
        cur.itersize = batch
        cur.execute(query, params)
        yield from cur


def iter_remises(conn: psycopg.Connection, filters: RemiseFilters,
                 user_id: int | None = None, batch: int = 2000) -> Iterator[RemiseRow]:
    """Every matching remise, oldest first, streamed from a server-side cursor."""
    return _iterate(conn, filters, user_id, batch)


def iter_transactions(conn: psycopg.Connection, filters: TransactionFilters,
                      user_id: int | None = None,
                      batch: int = 2000) -> Iterator[TransactionRow]:
    """Every matching transaction, oldest first, streamed from a server-side cursor."""
    return _iterate(conn, filters, user_id, batch)


def count(conn: psycopg.Connection, filters: RemiseFilters | TransactionFilters,
          user_id: int | None = None) -> int:
    """How many rows match (for a progress bar)."""
    table = _table_for(filters)
    where, params = build_where(table, filters, resolve_scope(conn, user_id, filters))
    query = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
        sql.Identifier(table.name), where
    )
    with translate_errors(f"counting {table.name}"):
        row = conn.execute(query, params, prepare=False).fetchone()
    return int(row[0]) if row else 0


def contract_city(conn: psycopg.Connection, contract_id: int) -> str | None:
    """The city a ticket prints under the trade name (contracts.city)."""
    with translate_errors("reading a contract"):
        row = conn.execute("SELECT city FROM contracts WHERE id = %s", (contract_id,)).fetchone()
    return row[0] if row else None


# -- PAN HMAC key versions -------------------------------------------------------------------
async def hsm_card_digests(hsm: Any, pan: str,
                           field: str = "card_number") -> tuple[tuple[int, bytes], ...]:
    """The HMAC of `pan` under every PAN HMAC key version the HSM still holds (a version is
    retired only once no row in retention uses it, so these are the versions a stored row
    can carry). Use as `TransactionFilters.card_digests`, in place of `pan_keys`. FilterError
    for a malformed card number; the HSM's own errors (HSMError) pass through."""
    digits = pan.replace(" ", "")
    if not digits.isascii() or not digits.isdigit() or not 12 <= len(digits) <= 19:
        raise FilterError(field, "malformed card number (12 to 19 digits)")
    if not luhn_valid(digits):
        raise FilterError(field, "malformed card number (fails the Luhn check)")
    digests = []
    for version in await hsm.pan_hmac_versions():
        found = await hsm.pan_hmac(digits, version)
        digests.append((found.version, found.digest))
    if not digests:
        raise FilterError(field, "the HSM holds no PAN HMAC key to search with")
    return tuple(digests)


def with_card_digests(filters: TransactionFilters,
                      digests: tuple[tuple[int, bytes], ...]) -> TransactionFilters:
    """`filters` searching for the card whose digests are given (see `hsm_card_digests`)."""
    return msgspec.structs.replace(filters, card_digests=digests)


def key_version_in_use(conn: psycopg.Connection, kind: Literal["pan-hmac", "data"],
                       version: int, keep_months: int = 15) -> dict[str, int]:
    """Rows inside retention that need key version `version`, by table ({} when none).

    A PAN HMAC version is needed by transactions and authorizations still kept (a card
    search must find them); a data key version by SAF messages not yet delivered."""
    cutoff = add_months(datetime.now(UTC).date(), -keep_months)  # as retention drops
    if kind == "pan-hmac":
        statements = {
            "transactions": ("SELECT count(*) FROM transactions"
                             " WHERE pan_hmac_key_version = %s AND tx_at >= %s"),
            "authorizations": ("SELECT count(*) FROM authorizations"
                               " WHERE pan_hmac_key_version = %s AND at >= %s"),
        }
        params: tuple[Any, ...] = (version, cutoff)
    else:
        statements = {"saf": ("SELECT count(*) FROM saf WHERE data_key_version = %s"
                              " AND delivered_at IS NULL")}
        params = (version,)
    found = {}
    with translate_errors("checking key use"):
        for table, statement in statements.items():
            row = conn.execute(statement, params).fetchone()
            if row and row[0]:
                found[table] = int(row[0])
    return found
