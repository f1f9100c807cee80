"""A generator of realistic fleet history: merchants, contracts, terminals, remises.

Used by the tests, the demo and the portal benchmark (`mpctl seed`). Everything comes from
one `random.Random(seed)`, so the same spec always yields the same rows. Data is synthetic:
names, SIRETs (Luhn-valid), card numbers (Luhn-valid, on a small pool of BINs) and AMEX/
CONECS bank codes are made up.

What the history always contains, because searches, tickets and `mpctl status` must be
shown working on each case:

- merchants with CBEMV and CBCLESS contracts; every second one AMEX, every third one
  CONECS (titres-restaurant, issuers SWILE/EDENRED/UP/PLUXEE, 25 € cap);
- makers Ingenico, Verifone and PAX; contract numbers with leading zeros;
- remises of purchases (débits), refunds and cancellations (crédits) and declined
  (non autorisées) transactions with their response codes;
- an empty remise (terminal 0, day 3, CBCLESS): a call with nothing to collect;
- a remise whose declared totals differ from the transactions (terminal 0, day 4);
- a terminal replaced mid-period (terminal 1): a new terminal takes over its contracts and
  the old one is moved to merchant 0's contract, its earlier remises staying under the
  contract they were collected on;
- the PAN HMAC key rotated mid-period (versions 1 then 2, `HISTORY_KEYS`), and one card
  (`KNOWN_PAN`) used before and after the rotation;
- the last terminal stops calling two days before the end (`mpctl status` must list it).

Two ways to write: `bulk=True` COPYs keys, remises and transactions directly (fast, for
millions of rows, one transaction per day); `bulk=False` goes through `RemiseWriter`, the
path switchd uses. Both store the same rows.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import msgspec
import psycopg

from passerelle.storage.db import StorageError, connect, open_pool, translate_errors
from passerelle.storage.pan import PanHmacKey, mask_pan, pan_hmac
from passerelle.storage.remises import (
    COPY_TRANSACTIONS,
    COPY_TYPES,
    STATUS_CORRECT,
    Operation,
    Remise,
    RemiseTotals,
    RemiseTransaction,
    RemiseWriter,
    compute_totals,
    remise_status,
    transaction_rows,
)

PARIS = ZoneInfo("Europe/Paris")
EUR = 978
HISTORY_KEYS = (
    PanHmacKey(1, hashlib.sha256(b"passerelle history pan key 1").digest()),
    PanHmacKey(2, hashlib.sha256(b"passerelle history pan key 2").digest()),
)
KNOWN_PAN = "4970101234567893"  # a CB/Visa test-style number, Luhn-valid
MAKERS = ("Ingenico", "Verifone", "PAX")
CITIES = ("PARIS", "MARSEILLE", "LYON", "TOULOUSE", "NANTES", "LILLE", "RENNES", "NICE")
TRADES = ("AU BON PAIN", "BRASSERIE DU PORT", "PHARMACIE CENTRALE", "LIBRAIRIE DES ARTS",
          "GARAGE MODERNE", "FLEURS ET JARDINS", "LE PETIT BISTROT", "BOUCHERIE MARTIN",
          "CAVE SAINT JEAN", "OPTIQUE LUMIERE")
CB_BANKS = (("30004", "BNP PARIBAS"), ("30003", "SOCIETE GENERALE"),
            ("30002", "LCL"), ("20041", "LA BANQUE POSTALE"))
CB_CARDS = (("497010", "CB VISA", "A0000000421010"), ("513100", "CB MASTERCARD",
            "A0000000421010"), ("455673", "VISA", "A0000000031010"),
            ("535110", "MASTERCARD", "A0000000041010"))
AMEX_CARD = ("374245", "AMERICAN EXPRESS", "A000000025010801")
CONECS_ISSUERS = (("SWILE", "534210"), ("EDENRED", "532509"), ("UP", "511772"),
                  ("PLUXEE", "533817"))
DECLINE_CODES = ("05", "51", "55", "54")


def luhn_complete(prefix: str) -> str:
    """`prefix` followed by the digit that makes it pass the Luhn check."""
    total = 0
    for index, char in enumerate(reversed(prefix)):
        value = int(char) * (1 if index % 2 else 2)
        total += value - 9 if value > 9 else value
    return prefix + str((10 - total % 10) % 10)


class HistorySpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What to generate. `end` is the last day (Paris), yesterday by default."""

    terminals: int = 6
    days: int = 30
    end: date | None = None
    seed: int = 1
    transactions_per_day: tuple[int, int] = (4, 30)

    def __post_init__(self) -> None:
        if self.terminals < 1:
            raise StorageError(f"--terminals must be at least 1, got {self.terminals}")
        if not 1 <= self.days <= 500:
            raise StorageError(f"--days must be 1..500, got {self.days}")
        low, high = self.transactions_per_day
        if not 0 <= low <= high:
            raise StorageError("transactions per day must be a range low <= high")

    def last_day(self) -> date:
        return self.end or (datetime.now(PARIS).date() - timedelta(days=1))

    def first_day(self) -> date:
        return self.last_day() - timedelta(days=self.days - 1)


class FleetContract(msgspec.Struct, frozen=True):
    merchant: int
    contract_number: str
    application: str
    bank_code: str
    rang: str
    acquirer: str
    label: str
    trade_name: str
    siret: str
    city: str


class FleetTerminal(msgspec.Struct, frozen=True):
    serial: str
    maker: str
    itp: str
    merchant: int  # whose contracts it collects for (until `moved_on`)
    first_day: int = 0  # day index of its first call
    last_day: int | None = None  # day index of its last call (None: till the end)
    moved_on: int | None = None  # day index from which it works for `moved_to`
    moved_to: int | None = None


class Fleet(msgspec.Struct, frozen=True):
    merchants: list[tuple[str, str, str, str]]  # name, trade name, SIRET, city
    contracts: list[FleetContract]
    terminals: list[FleetTerminal]

    def contracts_of(self, merchant: int) -> list[FleetContract]:
        return [c for c in self.contracts if c.merchant == merchant]


class HistoryReport(msgspec.Struct):
    merchants: int = 0
    contracts: int = 0
    terminals: int = 0
    remises: int = 0
    transactions: int = 0
    first_day: date | None = None
    last_day: date | None = None


def build_fleet(spec: HistorySpec) -> Fleet:
    """Merchants, contracts and terminals of the spec (no database)."""
    rng = random.Random(spec.seed)  # noqa: S311 - reproducible synthetic data
    n_merchants = max(1, (spec.terminals + 1) // 2)
    merchants: list[tuple[str, str, str, str]] = []
    contracts: list[FleetContract] = []
    for m in range(n_merchants):
        trade = TRADES[m % len(TRADES)] + ("" if m < len(TRADES) else f" {m // len(TRADES)}")
        city = CITIES[m % len(CITIES)]
        siret = luhn_complete(f"{rng.randint(10**12, 10**13 - 1):013d}")
        merchants.append((f"{trade} SARL", trade, siret, city))
        bank_code, acquirer = CB_BANKS[m % len(CB_BANKS)]
        number = f"{(m * 104729 + 12345) % 10**7:07d}"  # some start with 0
        if m == 0:
            number = "0012345"
        rang = f"{1 + m % 3:03d}"
        offers = [(number, "CBEMV", bank_code, acquirer, f"{trade} CBEMV"),
                  (number, "CBCLESS", bank_code, acquirer, f"{trade} CBCLESS")]
        if m % 2 == 1:
            offers.append((f"9{m:09d}", "AMEX", "99001", "AMEX", f"{trade} AMEX"))
        if m % 3 == 1:
            offers.append((f"C{m:07d}", "CONECS", "99002", "CONECS",
                           f"{trade} TITRES RESTAURANT"))
        contracts.extend(
            FleetContract(merchant=m, contract_number=num, application=app, bank_code=bank,
                          rang=rang, acquirer=acq, label=label, trade_name=trade,
                          siret=siret, city=city)
            for num, app, bank, acq, label in offers)
    terminals = []
    for t in range(spec.terminals):
        maker = MAKERS[t % len(MAKERS)]
        terminals.append(FleetTerminal(
            serial=f"{maker[:3].upper()}{spec.seed % 100:02d}{t:05d}", maker=maker,
            itp=f"ITP{t % 7:02d}", merchant=t % n_merchants,
        ))
    mid = spec.days // 2
    if spec.terminals >= 2 and spec.days >= 4:
        old = terminals[1]
        terminals[1] = msgspec.structs.replace(old, last_day=None, moved_on=mid, moved_to=0)
        terminals.append(FleetTerminal(serial=f"PAX{spec.seed % 100:02d}R{1:04d}", maker="PAX",
                                       itp="ITP99", merchant=old.merchant, first_day=mid))
    if spec.terminals >= 3 and spec.days >= 4:
        last = spec.terminals - 1
        terminals[last] = msgspec.structs.replace(terminals[last], last_day=spec.days - 3)
    return Fleet(merchants, contracts, terminals)


def write_fleet(conn: psycopg.Connection, fleet: Fleet, spec: HistorySpec) -> dict[str, int]:
    """Insert merchants, contracts (with city) and terminals with their move history.

    Returns terminal serial -> terminal id. The moves are backdated to the day they happen
    in the history, which `fleet.upsert_terminal` (a live move, "now") cannot do.
    """
    merchant_ids = []
    for name, trade, siret, _city in fleet.merchants:
        row = conn.execute(
            "INSERT INTO merchants (name, trade_name, siret) VALUES (%s, %s, %s) RETURNING id",
            (name, trade, siret),
        ).fetchone()
        assert row is not None
        merchant_ids.append(row[0])
    contract_ids: dict[tuple[int, str], int] = {}
    for c in fleet.contracts:
        row = conn.execute(
            """INSERT INTO contracts (merchant_id, contract_number, rang, bank_code, application,
                                      acquirer, label, trade_name, siret, city)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            (merchant_ids[c.merchant], c.contract_number, c.rang, c.bank_code, c.application,
             c.acquirer, c.label, c.trade_name, c.siret, c.city),
        ).fetchone()
        assert row is not None
        contract_ids[c.merchant, c.application] = row[0]
    start = datetime.combine(spec.first_day(), time(6), PARIS)
    serials = {}
    for t in fleet.terminals:
        home = contract_ids[t.merchant, "CBEMV"]
        current = home if t.moved_to is None else contract_ids[t.moved_to, "CBEMV"]
        created = start + timedelta(days=t.first_day)
        row = conn.execute(
            "INSERT INTO terminals (serial, maker, itp, contract_id, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            (t.serial, t.maker, t.itp, current, created, created),
        ).fetchone()
        assert row is not None
        serials[t.serial] = row[0]
        if t.moved_on is None:
            conn.execute("INSERT INTO terminal_contracts (terminal_id, contract_id, valid_from)"
                         " VALUES (%s, %s, %s)", (row[0], home, created))
        else:
            moved = start + timedelta(days=t.moved_on)
            conn.execute(
                "INSERT INTO terminal_contracts (terminal_id, contract_id, valid_from, valid_to)"
                " VALUES (%s, %s, %s, %s), (%s, %s, %s, NULL)",
                (row[0], home, created, moved, row[0], current, moved),
            )
    return serials


def _pan(rng: random.Random, bin_: str) -> str:
    length = 15 if bin_.startswith("37") else 16
    body = "".join(rng.choices("0123456789", k=length - len(bin_) - 1))
    return luhn_complete(bin_ + body)


Card = tuple[str, str, str, str | None, str]  # PAN, mask, product, AID, issuer
EXPIRIES = tuple(f"{year}{month:02d}" for year in range(27, 32) for month in range(1, 13))


def _between(rng: random.Random, low: int, high: int) -> int:
    """rng.randint without its overhead (this is the hot loop of millions of rows)."""
    return low + int(rng.random() * (high - low + 1))


class _Cards:
    """A pool of cards per family: customers come back, which card searches rely on."""

    def __init__(self, rng: random.Random) -> None:
        def card(pan: str, product: str, aid: str | None, issuer: str) -> Card:
            return (pan, mask_pan(pan), product, aid, issuer)

        self.cb = [card(KNOWN_PAN, "CB VISA", "A0000000421010", "BNP PARIBAS")]
        for _ in range(400):
            bin_, product, aid = rng.choice(CB_CARDS)
            self.cb.append(card(_pan(rng, bin_), product, aid, rng.choice(CB_BANKS)[1]))
        self.amex = [card(_pan(rng, AMEX_CARD[0]), AMEX_CARD[1], AMEX_CARD[2],
                          "AMERICAN EXPRESS") for _ in range(60)]
        self.conecs = []
        for _ in range(120):
            issuer, bin_ = rng.choice(CONECS_ISSUERS)
            self.conecs.append(card(_pan(rng, bin_), "TITRE-RESTAURANT", None, issuer))
        self.digests: dict[tuple[str, int], tuple[bytes, int]] = {}

    def digest(self, pan: str, key: PanHmacKey) -> tuple[bytes, int]:
        found = self.digests.get((pan, key.version))
        if found is None:
            found = self.digests[pan, key.version] = pan_hmac(key, pan)
        return found


class _Day(msgspec.Struct, frozen=True):
    opens: datetime  # 08:00 Paris, in UTC: the shops' day starts here
    tag: str  # YYDDD, the start of the day's RRNs
    key: PanHmacKey


def generate_remises(spec: HistorySpec, fleet: Fleet) -> Iterator[tuple[int, list[Remise]]]:
    """(day index, that day's remises), in day order; deterministic for a spec."""
    rng = random.Random(spec.seed * 7919 + 1)  # noqa: S311 - reproducible synthetic data
    cards = _Cards(random.Random(spec.seed * 31 + 5))  # noqa: S311
    first = spec.first_day()
    remise_numbers: dict[tuple[str, str], int] = {}
    stans: dict[str, int] = {}
    low, high = spec.transactions_per_day
    by_merchant = {m: fleet.contracts_of(m) for m in range(len(fleet.merchants))}
    for day in range(spec.days):
        today = first + timedelta(days=day)
        day_info = _Day(datetime.combine(today, time(8), PARIS).astimezone(UTC),
                        f"{today:%y%j}",
                        HISTORY_KEYS[0] if day < spec.days // 2 else HISTORY_KEYS[1])
        remises = []
        for t_index, terminal in enumerate(fleet.terminals):
            if day < terminal.first_day or (terminal.last_day is not None
                                             and day > terminal.last_day):
                continue
            merchant = terminal.merchant
            if terminal.moved_on is not None and day >= terminal.moved_on:
                merchant = terminal.moved_to if terminal.moved_to is not None else merchant
            file_number = day + 1
            collected = datetime.combine(today, time(21, 30), PARIS) + timedelta(
                minutes=t_index % 90)
            for contract in by_merchant[merchant]:
                app = contract.application
                slot = (terminal.serial, app)
                remise_numbers[slot] = remise_numbers.get(slot, 0) + 1
                count = _between(rng, low, high)
                if app in ("AMEX", "CONECS"):
                    count //= 3
                if t_index == 0 and day == 2 and app == "CBCLESS":
                    count = 0  # the empty remise
                txs = []
                for seq in range(1, count + 1):
                    stans[terminal.serial] = stans.get(terminal.serial, 0) % 999_999 + 1
                    txs.append(_transaction(
                        rng, cards, app, day_info, seq=seq, stan=stans[terminal.serial],
                        first_use=t_index == 0 and seq == 1 and day in (0, spec.days - 1)))
                declared = compute_totals(txs)
                if t_index == 0 and day == 3 and app == "CBEMV":
                    declared = msgspec.structs.replace(
                        declared, purchases_count=declared.purchases_count + 1,
                        purchases_amount=declared.purchases_amount + 1250)
                remises.append(Remise(
                    terminal_serial=terminal.serial, contract_number=contract.contract_number,
                    application=app, remise_number=remise_numbers[slot],
                    file_number=file_number, currency=EUR, collected_at=collected,
                    declared=declared, transactions=txs, ack_window=8,
                ))
        yield day, remises


def _transaction(rng: random.Random, cards: _Cards, app: str, day: _Day, *, seq: int,
                 stan: int, first_use: bool) -> RemiseTransaction:
    if app == "AMEX":
        pan, masked, product, aid, issuer = cards.amex[int(rng.random() * len(cards.amex))]
        amount = _between(rng, 2000, 90000)
    elif app == "CONECS":
        pan, masked, product, aid, issuer = cards.conecs[
            int(rng.random() * len(cards.conecs))]
        amount = _between(rng, 450, 2500)  # a titre-restaurant day is capped at 25 €
    else:
        pan, masked, product, aid, issuer = (
            cards.cb[0] if first_use else cards.cb[int(rng.random() * len(cards.cb))])
        amount = _between(rng, 100, 15000 if app == "CBEMV" else 5000)
    roll = rng.random()
    operation: Operation = ("refund" if roll < 0.03 else "cancellation" if roll < 0.05
                            else "purchase")
    declined = not first_use and rng.random() < 0.04
    digest, version = cards.digest(pan, day.key)
    return RemiseTransaction(
        seq=seq, at=day.opens + timedelta(seconds=_between(rng, 0, 12 * 3600)),
        operation=operation, result="declined" if declined else "approved", amount=amount,
        currency=EUR, pan_masked=masked, pan_hmac=digest, pan_hmac_key_version=version,
        expiry=EXPIRIES[int(rng.random() * len(EXPIRIES))],
        response_code=DECLINE_CODES[int(rng.random() * 4)] if declined else "00",
        authorization_number=None if declined else f"{_between(rng, 0, 999_999):06d}",
        issuer=issuer, product=product,
        rrn=f"{day.tag}{stan:06d}{seq % 10}", stan=f"{stan:06d}", aid=aid,
    )


_REMISE_COPY_COLUMNS = (
    "id", "collected_at", "terminal_id", "terminal_serial", "maker", "itp", "contract_id",
    "contract_number", "rang", "bank_code", "application", "acquirer", "label", "trade_name",
    "siret", "remise_number", "file_number", "ack_window", "currency",
    *(f"declared_{name}" for name in RemiseTotals.__struct_fields__),
    *RemiseTotals.__struct_fields__,
    "transaction_count", "net_amount", "is_correct", "status", "spooled",
)
_COPY_REMISES = f"COPY remises ({', '.join(_REMISE_COPY_COLUMNS)}) FROM STDIN"
_COPY_KEYS = ("COPY remise_keys (id, terminal_serial, contract_number, application,"
              " remise_number, collected_at) FROM STDIN")


class _Context:
    """What `transaction_rows` copies into each row, looked up once per terminal/contract."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.terminals = {r[0]: r[1:] for r in conn.execute(
            "SELECT serial, id, maker, itp FROM terminals").fetchall()}
        self.contracts = {(r[0], r[1]): r[2:] for r in conn.execute(
            "SELECT contract_number, application, id, rang, bank_code, acquirer, label,"
            " trade_name, siret FROM contracts").fetchall()}

    def __getitem__(self, key: tuple[str, str, str]) -> tuple[object, ...]:
        """(terminal id, maker, itp, contract id, rang, bank code, acquirer, label, trade
        name, SIRET), the order of the writer's lookup."""
        return (*self.terminals[key[0]], *self.contracts[key[1], key[2]])


def _copy_day(conn: psycopg.Connection, remises: list[Remise], context: _Context) -> int:
    ids = [r[0] for r in conn.execute(
        "SELECT nextval(pg_get_serial_sequence('remise_keys', 'id'))"
        " FROM generate_series(1, %s)", (len(remises),)).fetchall()]
    written = 0
    with conn.cursor() as cur:
        with cur.copy(_COPY_KEYS) as copy:
            for remise_id, r in zip(ids, remises, strict=True):
                copy.write_row((remise_id, *r.key, r.collected_at))
        with cur.copy(_COPY_REMISES) as copy:
            for remise_id, r in zip(ids, remises, strict=True):
                ctx = context[r.key[:3]]
                computed = compute_totals(r.transactions)
                status = remise_status(r.declared, computed, r.currency)
                copy.write_row((
                    remise_id, r.collected_at, ctx[0], r.terminal_serial, ctx[1], ctx[2],
                    ctx[3], r.contract_number, ctx[4], ctx[5], r.application, ctx[6], ctx[7],
                    ctx[8], ctx[9], r.remise_number, r.file_number, r.ack_window, r.currency,
                    *msgspec.structs.astuple(r.declared), *msgspec.structs.astuple(computed),
                    len(r.transactions),
                    computed.purchases_amount - computed.refunds_amount
                    - computed.cancellations_amount,
                    status == STATUS_CORRECT, status, False,
                ))
        with cur.copy(COPY_TRANSACTIONS) as copy:
            copy.set_types(COPY_TYPES)
            for remise_id, r in zip(ids, remises, strict=True):
                if not r.transactions:
                    continue
                computed = compute_totals(r.transactions)
                state = ("correct" if remise_status(r.declared, computed, r.currency)
                         == STATUS_CORRECT else "difference")
                for row in transaction_rows(r, remise_id, state, context[r.key[:3]]):
                    copy.write_row(row)
                    written += 1
    return written


def _ensure_partitions(conn: psycopg.Connection, spec: HistorySpec) -> None:
    month = spec.first_day().replace(day=1)
    while month <= spec.last_day():
        for parent in ("remises", "transactions"):
            conn.execute("SELECT passerelle_ensure_month_partition(%s, %s)", (parent, month))
        month = (month + timedelta(days=32)).replace(day=1)


def write_history(
    dsn: str,
    spec: HistorySpec,
    *,
    bulk: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> HistoryReport:
    """Generate the spec's history into the (migrated, empty of it) database at `dsn`.

    `progress(day_done, days)` is called after each day.
    """
    fleet = build_fleet(spec)
    report = HistoryReport(merchants=len(fleet.merchants), contracts=len(fleet.contracts),
                           terminals=len(fleet.terminals), first_day=spec.first_day(),
                           last_day=spec.last_day())
    with connect(dsn) as conn, translate_errors("writing the history"):
        _check_target(conn, fleet)
        write_fleet(conn, fleet, spec)
        _ensure_partitions(conn, spec)
        conn.commit()
        if bulk:
            context = _Context(conn)
            for day, remises in generate_remises(spec, fleet):
                if remises:
                    report.transactions += _copy_day(conn, remises, context)
                    report.remises += len(remises)
                conn.commit()
                if progress:
                    progress(day + 1, spec.days)
            return report
    asyncio.run(_write_with_writer(dsn, spec, fleet, report, progress))
    return report


def _check_target(conn: psycopg.Connection, fleet: Fleet) -> None:
    """Refuse, with the fix, a database without the schema or already holding this fleet."""
    row = conn.execute("SELECT to_regclass('remises') IS NOT NULL").fetchone()
    if not row or not row[0]:
        raise StorageError("the database has no passerelle schema: run `mpctl db migrate`")
    taken = conn.execute(
        "SELECT contract_number, application FROM contracts"
        " WHERE (contract_number, application) IN (SELECT * FROM unnest(%s::text[],"
        " %s::text[])) LIMIT 1",
        ([c.contract_number for c in fleet.contracts],
         [c.application for c in fleet.contracts])).fetchone()
    if taken:
        raise StorageError(f"contract {taken[0]}/{taken[1]} already exists: the history "
                           "goes into a database without a fleet")


async def _write_with_writer(dsn: str, spec: HistorySpec, fleet: Fleet, report: HistoryReport,
                             progress: Callable[[int, int], None] | None) -> None:
    async with open_pool(dsn) as pool:
        writer = RemiseWriter(pool)
        for day, remises in generate_remises(spec, fleet):
            for remise in remises:
                outcome = await writer.store(remise)
                report.remises += 1
                report.transactions += outcome.transaction_count
            if progress:
                progress(day + 1, spec.days)
