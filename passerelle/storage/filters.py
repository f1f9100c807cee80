"""Search filters for remises and transactions (DESIGN.md §9), shared by mpctl and the portal.

Filters arrive as text — command-line options, form fields — and leave as typed, frozen
Structs: `parse_remise_filters` / `parse_transaction_filters` turn a mapping of field name to
text into a `RemiseFilters` / `TransactionFilters`, and every error is a `FilterError` that
names the field as the operator typed it (`--from: 2026-13-01 is not a date`). The portal
reads `FilterError.field` to put the message next to its form field.

Conventions: dates are calendar days in Europe/Paris, both ends included; amounts are
typed in euros ("12,50" or "12.50") and kept as integer minor units; text filters on
label and trade name match a case-insensitive substring, every other text filter is exact.
A card number is never kept: it is turned at once into its keyed HMAC under every key
version given (a card search must find rows written under older keys), or searched by its
last 4 digits.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import msgspec

from passerelle.storage.db import StorageError
from passerelle.storage.pan import PanHmacKey, luhn_valid, pan_hmac

PARIS = ZoneInfo("Europe/Paris")
MAX_TEXT = 64
MAX_AMOUNT = 10**15  # minor units; far above any real payment, far below bigint
MAX_EXPORT_DAYS = 31

# How a field is named where a person typed it (CLI option; the portal shows the same).
OPTION_NAMES = {
    "date_from": "--from",
    "date_to": "--to",
    "contract_number": "--contract",
    "terminal_serial": "--terminal",
    "remise_number": "--remise",
    "file_number": "--file",
    "transaction_count": "--count",
    "transaction_count_min": "--count-min",
    "transaction_count_max": "--count-max",
    "card_digests": "--card",
    "card_number": "--card",
    "authorization_number": "--auth",
    "rrn": "--dossier",
    "direction": "--type",
    "response_code": "--response-code",
    "remise_state": "--remise-state",
    "trade_name": "--trade-name",
    "bank_code": "--bank-code",
}


def option_name(field: str) -> str:
    """The CLI spelling of a filter field: `date_from` -> `--from`, `maker` -> `--maker`."""
    return OPTION_NAMES.get(field, "--" + field.replace("_", "-"))


class FilterError(StorageError):
    """A filter value that cannot be used; `field` is the Struct field, the message says why."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.reason = message
        super().__init__(f"{option_name(field)}: {message}")


State = Literal["correct", "difference"]
_DIGITS = re.compile(r"^[0-9]+$")
_BANK_CODE = re.compile(r"^[0-9]{5}$")
_SIRET = re.compile(r"^[0-9]{14}$")
_LAST4 = re.compile(r"^[0-9]{4}$")
_EXPIRY = re.compile(r"^[0-9]{2}(0[1-9]|1[0-2])$")
_RESPONSE_CODE = re.compile(r"^[0-9A-Z]{2}$")


class _Common(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Filters that remises and transactions share."""

    date_from: date | None = None
    date_to: date | None = None
    application: str | None = None
    contract_number: str | None = None
    label: str | None = None
    rang: str | None = None
    bank_code: str | None = None
    amount: int | None = None
    amount_min: int | None = None
    amount_max: int | None = None
    currency: int | None = None
    remise_number: int | None = None
    file_number: int | None = None
    terminal_serial: str | None = None
    maker: str | None = None
    trade_name: str | None = None
    siret: str | None = None

    def __post_init__(self) -> None:
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise FilterError(
                "date_from",
                f"{self.date_from.isoformat()} is after --to {self.date_to.isoformat()}",
            )
        for name in ("amount", "amount_min", "amount_max"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_AMOUNT:
                raise FilterError(name, f"{value} is out of range")
        if (
            self.amount_min is not None
            and self.amount_max is not None
            and self.amount_min > self.amount_max
        ):
            raise FilterError("amount_min", "is greater than --amount-max")
        if self.currency is not None and not 1 <= self.currency <= 999:
            raise FilterError("currency", f"{self.currency} is not an ISO 4217 numeric code")
        for name in ("remise_number", "file_number"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 2**31:
                raise FilterError(name, f"{value} is out of range")
        if self.bank_code is not None and not _BANK_CODE.match(self.bank_code):
            raise FilterError("bank_code", f"{self.bank_code!r} is not 5 digits")
        if self.siret is not None and not _SIRET.match(self.siret):
            raise FilterError("siret", f"{self.siret!r} is not 14 digits")

    def utc_bounds(self) -> tuple[datetime | None, datetime | None]:
        """[start, end) in UTC of the Paris days asked for; None where open."""
        start = end = None
        if self.date_from:
            start = datetime.combine(self.date_from, time(), PARIS).astimezone(UTC)
        if self.date_to:
            end = datetime.combine(self.date_to + timedelta(days=1), time(), PARIS)
            end = end.astimezone(UTC)
        return start, end


class RemiseFilters(_Common, frozen=True, kw_only=True):
    """Remise search: amount is the net amount (debits minus credits) of the remise."""

    status: State | None = None
    transaction_count: int | None = None
    transaction_count_min: int | None = None
    transaction_count_max: int | None = None


class TransactionFilters(_Common, frozen=True, kw_only=True):
    """Transaction search. `card_digests` holds (key version, HMAC) pairs, never a PAN."""

    remise_id: int | None = None
    remise_state: State | None = None
    direction: Literal["debit", "credit"] | None = None
    operation: Literal["purchase", "refund", "cancellation"] | None = None
    result: Literal["approved", "declined"] | None = None
    response_code: str | None = None
    card_digests: tuple[tuple[int, bytes], ...] | None = None
    last4: str | None = None
    expiry: str | None = None
    authorization_number: str | None = None
    issuer: str | None = None
    product: str | None = None
    rrn: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.last4 is not None and not _LAST4.match(self.last4):
            raise FilterError("last4", f"{self.last4!r} is not 4 digits")
        if self.expiry is not None and not _EXPIRY.match(self.expiry):
            raise FilterError("expiry", f"{self.expiry!r} is not YYMM")
        if self.response_code is not None and not _RESPONSE_CODE.match(self.response_code):
            raise FilterError("response_code", f"{self.response_code!r} is not 2 characters")
        if self.card_digests is not None and not self.card_digests:
            raise FilterError("card_digests", "no PAN HMAC key to search with")

    def __repr__(self) -> str:  # digests are keyed, but still have no business in logs
        fields = {f: getattr(self, f) for f in self.__struct_fields__ if getattr(self, f)}
        if "card_digests" in fields:
            fields["card_digests"] = f"<{len(self.card_digests or ())} digests>"
        return f"TransactionFilters({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


# --- parsing text ---------------------------------------------------------------------------


def parse_date(field: str, text: str) -> date:
    """YYYY-MM-DD or DD/MM/YYYY (what a French operator types)."""
    for fmt in ("%Y-%m-%d", "%d/%m/%Y"):
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise FilterError(field, f"{text} is not a date (YYYY-MM-DD or DD/MM/YYYY)")


def parse_amount(field: str, text: str) -> int:
    """Euros with at most 2 decimals, comma or point: "12,50" -> 1250 (minor units)."""
    match = re.fullmatch(r"([0-9]{1,13})(?:[.,]([0-9]{1,2}))?", text.replace(" ", ""))
    if match is None:
        raise FilterError(field, f"{text} is not an amount (e.g. 12,50)")
    whole, frac = match.groups()
    return int(whole) * 100 + int((frac or "0").ljust(2, "0"))


def _parse_int(field: str, text: str) -> int:
    if not _DIGITS.match(text) or len(text) > 10:
        raise FilterError(field, f"{text} is not a whole number")
    return int(text)


def _parse_text(field: str, text: str) -> str:
    if len(text) > MAX_TEXT or not text.isprintable():
        raise FilterError(field, f"{text[:20]!r} is too long or not printable")
    return text


def _parse_upper(field: str, text: str) -> str:
    return _parse_text(field, text).upper()


def parse_expiry(field: str, text: str) -> str:
    """MM/YY as the card shows it (or YYYY-MM) -> YYMM as storage keeps it."""
    match = re.fullmatch(r"(0[1-9]|1[0-2])/?([0-9]{2})", text) or None
    if match:
        return match.group(2) + match.group(1)
    match = re.fullmatch(r"20([0-9]{2})-(0[1-9]|1[0-2])", text)
    if match:
        return match.group(1) + match.group(2)
    raise FilterError(field, f"{text} is not an expiry date (MM/YY)")


def card_digests(
    pan: str, keys: Sequence[PanHmacKey], field: str = "card_number"
) -> tuple[tuple[int, bytes], ...]:
    """The HMAC of `pan` under every key version: rows keep the version they were written
    with, so a card search must try each version still inside retention."""
    digits = pan.replace(" ", "")
    if not digits.isascii() or not digits.isdigit() or not 12 <= len(digits) <= 19:
        raise FilterError(field, "malformed card number (12 to 19 digits)")
    if not luhn_valid(digits):
        raise FilterError(field, "malformed card number (fails the Luhn check)")
    if not keys:
        raise FilterError(field, "no PAN HMAC key configured to search by card number")
    return tuple((version, digest) for digest, version in (pan_hmac(k, digits) for k in keys))


def _choice(*values: str) -> Callable[[str, str], str]:
    def parse(field: str, text: str) -> str:
        if text.lower() not in values:
            raise FilterError(field, f"{text} is not one of {', '.join(values)}")
        return text.lower()

    return parse


def _pattern(regex: re.Pattern[str], what: str) -> Callable[[str, str], str]:
    def parse(field: str, text: str) -> str:
        if not regex.match(text):
            raise FilterError(field, f"{text} is not {what}")
        return text

    return parse


_COMMON_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "date_from": parse_date,
    "date_to": parse_date,
    "application": _parse_upper,
    "contract_number": _parse_text,
    "label": _parse_text,
    "rang": _parse_text,
    "bank_code": _pattern(_BANK_CODE, "a bank code (5 digits)"),
    "amount": parse_amount,
    "amount_min": parse_amount,
    "amount_max": parse_amount,
    "currency": _parse_int,
    "remise_number": _parse_int,
    "file_number": _parse_int,
    "terminal_serial": _parse_text,
    "maker": _parse_text,
    "trade_name": _parse_text,
    "siret": _pattern(_SIRET, "a SIRET (14 digits)"),
}
_REMISE_PARSERS = {
    **_COMMON_PARSERS,
    "status": _choice("correct", "difference"),
    "transaction_count": _parse_int,
    "transaction_count_min": _parse_int,
    "transaction_count_max": _parse_int,
}
_TRANSACTION_PARSERS = {
    **_COMMON_PARSERS,
    "remise_id": _parse_int,
    "remise_state": _choice("correct", "difference"),
    "direction": _choice("debit", "credit"),
    "operation": _choice("purchase", "refund", "cancellation"),
    "result": _choice("approved", "declined"),
    "response_code": _pattern(_RESPONSE_CODE, "a response code (2 characters)"),
    "last4": _pattern(_LAST4, "the last 4 digits of a card"),
    "expiry": parse_expiry,
    "authorization_number": _parse_text,
    "issuer": _parse_text,
    "product": _parse_text,
    "rrn": _parse_text,
}


def _parse(
    params: Mapping[str, str | None], parsers: Mapping[str, Callable[[str, str], Any]]
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for field, raw in params.items():
        if raw is None or not str(raw).strip():
            continue
        parser = parsers.get(field)
        if parser is None:
            raise FilterError(field, "is not a filter here")
        values[field] = parser(field, str(raw).strip())
    return values


def parse_remise_filters(params: Mapping[str, str | None]) -> RemiseFilters:
    """Remise filters from text; empty values are absent filters."""
    return RemiseFilters(**_parse(params, _REMISE_PARSERS))


def parse_transaction_filters(
    params: Mapping[str, str | None], pan_keys: Sequence[PanHmacKey] = ()
) -> TransactionFilters:
    """Transaction filters from text; `card_number` is hashed under `pan_keys` and dropped."""
    params = dict(params)
    card = params.pop("card_number", None)
    values = _parse(params, _TRANSACTION_PARSERS)
    if card is not None and card.strip():
        values["card_digests"] = card_digests(card.strip(), pan_keys)
    return TransactionFilters(**values)


def check_export_window(filters: _Common, max_days: int = MAX_EXPORT_DAYS) -> None:
    """An export needs both dates and at most `max_days` days (both ends included)."""
    if filters.date_from is None:
        raise FilterError("date_from", "an export needs --from and --to")
    if filters.date_to is None:
        raise FilterError("date_to", "an export needs --from and --to")
    days = (filters.date_to - filters.date_from).days + 1
    if days > max_days:
        raise FilterError(
            "date_to", f"the export covers {days} days; at most {max_days} are allowed"
        )
