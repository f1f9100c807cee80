"""The search forms: which filter of DESIGN.md §9 is shown where, and how its errors read.

Form fields carry the query layer's own field names (`date_from`, `contract_number`, ...),
so the text typed goes straight to `passerelle.storage.filters`, whose `FilterError.field`
tells which field to put the message next to. One portal-only field: `card`, which takes
either the last 4 digits or a whole card number (hashed at once, never kept).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import msgspec

from passerelle.storage.filters import (
    OPTION_NAMES,
    FilterError,
    check_export_window,
    parse_remise_filters,
    parse_transaction_filters,
)
from passerelle.storage.pan import PanHmacKey
from passerelle.storage.queries import DEFAULT_PAGE_SIZE, REMISE_SORTS, TRANSACTION_SORTS
from passerelle.tickets import PARIS

APPLICATIONS = ("CBEMV", "CBCLESS", "CBVAD", "PLBS", "AMEX", "JCB", "CONECS")
MEAL_VOUCHER = "CONECS"
PAGE_SIZES = (25, 50, 100, 200)


class Field(msgspec.Struct, frozen=True):
    name: str
    label: str
    kind: str = "text"  # text, date, amount, number, select
    choices: tuple[tuple[str, str], ...] = ()
    hint: str = ""


_APP_CHOICES = tuple((a, a) for a in APPLICATIONS)
_STATE = (("correct", "Correcte"), ("difference", "Avec écart"))
_COMMON_MORE = (
    Field("label", "Libellé"),
    Field("trade_name", "Enseigne"),
    Field("siret", "SIRET", "number", hint="14 chiffres"),
    Field("rang", "Rang"),
    Field("bank_code", "Code banque", "number", hint="5 chiffres"),
    Field("amount_min", "Montant minimum", "amount", hint="en euros"),
    Field("amount_max", "Montant maximum", "amount", hint="en euros"),
    Field("terminal_serial", "Terminal", hint="n° de série"),
    Field("maker", "Fabricant"),
    Field("remise_number", "N° de remise", "number"),
    Field("file_number", "N° de fichier", "number"),
)

REMISE_MAIN = (
    Field("date_from", "Du", "date"),
    Field("date_to", "Au", "date"),
    Field("contract_number", "Contrat"),
    Field("application", "Application", "select", _APP_CHOICES),
    Field("status", "Statut", "select", _STATE),
)
REMISE_MORE = (
    Field("amount", "Montant net", "amount", hint="en euros, ex. 12,50"),
    Field("transaction_count", "Nb de transactions", "number"),
    Field("transaction_count_min", "Nb de transactions minimum", "number"),
    Field("transaction_count_max", "Nb de transactions maximum", "number"),
    *_COMMON_MORE,
)
TRANSACTION_MAIN = (
    Field("date_from", "Du", "date"),
    Field("date_to", "Au", "date"),
    Field("contract_number", "Contrat"),
    Field("application", "Application", "select", _APP_CHOICES),
    Field("amount", "Montant", "amount", hint="en euros, ex. 12,50"),
    Field("card", "Carte", hint="4 derniers chiffres ou numéro complet"),
)
TRANSACTION_MORE = (
    Field("direction", "Type", "select", (("debit", "Débit"), ("credit", "Crédit"))),
    Field("operation", "Opération", "select", (("purchase", "Achat"), ("refund", "Remboursement"),
                                               ("cancellation", "Annulation"))),
    Field("result", "Résultat", "select", (("approved", "Acceptée"), ("declined", "Refusée"))),
    Field("response_code", "Code réponse", hint="2 caractères"),
    Field("authorization_number", "N° d'autorisation"),
    Field("issuer", "Émetteur", hint="ex. SWILE, EDENRED"),
    Field("product", "Produit"),
    Field("expiry", "Expiration", hint="MM/AA"),
    Field("rrn", "N° de dossier"),
    Field("remise_state", "État de la remise", "select", _STATE),
    *_COMMON_MORE,
)
_ALL = {f.name: f for f in (*REMISE_MAIN, *REMISE_MORE, *TRANSACTION_MAIN, *TRANSACTION_MORE)}
# Struct fields that the form shows under another name.
_FORM_FIELD = {"last4": "card", "card_digests": "card", "card_number": "card"}
_OPTION_LABELS = {option: _ALL[field].label for field, option in OPTION_NAMES.items()
                  if field in _ALL}


def _label_of_option(match: re.Match[str]) -> str:
    option = match.group(0)
    if option in _OPTION_LABELS:
        return f"« {_OPTION_LABELS[option]} »"
    field = option[2:].replace("-", "_")
    return f"« {_ALL[field].label} »" if field in _ALL else option


def reason(exc: FilterError) -> str:
    """The error as the form shows it, CLI option names replaced by the form's labels."""
    return re.sub(r"--[a-z][a-z-]*", _label_of_option, exc.reason)


class SearchForm(msgspec.Struct, kw_only=True):
    """A submitted search: what to show back in the form, what to ask the query layer."""

    values: dict[str, str]
    errors: dict[str, str]
    filters: Any = None
    sort: str = "date"
    descending: bool = True
    limit: int = DEFAULT_PAGE_SIZE
    cursor: str | None = None

    @property
    def more_open(self) -> bool:
        """Keep "more filters" unfolded when one of them is used or wrong."""
        main = {f.name for f in (*REMISE_MAIN, *TRANSACTION_MAIN)}
        used = {k for k, v in self.values.items() if v} | set(self.errors)
        return bool(used - main - {"sort", "dir", "limit", "cursor"})


def today() -> date:
    return datetime.now(PARIS).date()


def _text(params: Mapping[str, str], name: str) -> str:
    return (params.get(name) or "").strip()[:200]


def parse_search(params: Mapping[str, str], kind: str, pan_keys: Sequence[PanHmacKey] = (),
                 *, default_days: int = 7, extra: Mapping[str, str] | None = None) -> SearchForm:
    """A search form from query parameters; filter errors keyed by form field."""
    fields = (REMISE_MAIN + REMISE_MORE) if kind == "remises" else (
        TRANSACTION_MAIN + TRANSACTION_MORE)
    values = {f.name: _text(params, f.name) for f in fields}
    if not values["date_from"] and not values["date_to"] and "date_from" not in params:
        values["date_to"] = today().isoformat()
        values["date_from"] = (today() - timedelta(days=default_days - 1)).isoformat()
    form = SearchForm(values=values, errors={})
    sorts = REMISE_SORTS if kind == "remises" else TRANSACTION_SORTS
    sort = _text(params, "sort") or "date"
    if sort in sorts:
        form.sort = sort
    else:
        form.errors["sort"] = f"« {sort[:20]} » n'est pas un tri proposé"
    form.descending = _text(params, "dir") != "asc"
    limit = _text(params, "limit")
    if limit:
        if limit.isdigit() and int(limit) in PAGE_SIZES:
            form.limit = int(limit)
        else:
            form.errors["limit"] = f"choisissez {', '.join(map(str, PAGE_SIZES))}"
    form.cursor = _text(params, "cursor") or None
    values.update(sort=form.sort, dir="desc" if form.descending else "asc", limit=str(form.limit))
    raw = {f.name: values[f.name] for f in fields if f.name != "card"}
    card = values.get("card", "").replace(" ", "")
    if card:
        if card.isdigit() and len(card) == 4:
            raw["last4"] = card
        else:
            raw["card_number"] = card
    raw.update(extra or {})
    try:
        if kind == "remises":
            form.filters = parse_remise_filters(raw)
        else:
            form.filters = parse_transaction_filters(raw, pan_keys)
    except FilterError as exc:
        form.errors[_FORM_FIELD.get(exc.field, exc.field)] = reason(exc)
    return form


def check_export(form: SearchForm) -> None:
    """At most 31 days per export; the error goes next to the date it concerns."""
    if form.filters is None:
        return
    try:
        check_export_window(form.filters)
    except FilterError as exc:
        form.errors[exc.field] = reason(exc)


def query_string(values: Mapping[str, str], **changes: str | None) -> str:
    """The current search as a query string, with some parameters changed or dropped."""
    merged = {k: v for k, v in values.items() if v}
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return urlencode(merged)
