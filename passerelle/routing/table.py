"""The route table: (application, BIN, contract, currency) -> ordered chain of acquirers.

A routes file is TOML, one `[[route]]` per entry::

    [[route]]
    name = "cb"                      # for messages and metrics
    applications = ["CBEMV", "CBCLESS"]   # omitted or [] = any application
    bins = ["4970", "5"]             # PAN prefixes, 1-11 digits; omitted = any card
    contracts = ["1234567"]          # omitted = any contract
    currencies = [978]               # omitted = any currency
    acquirers = ["acq-a", "acq-b"]   # tried in this order

Which route wins: the longest matching BIN prefix; among routes at that length, the one that
names more of (contract, application, currency), in that order of weight; then the first in
the file. `check_routes` reports the two ways a file can lie about that: two routes at the
same rank that can match the same request (overlap: only the first is ever used for it) and
a route that never wins anything (unreachable), plus unknown applications and acquirers.

A `RouteTable` is immutable; `Router.reload` swaps in a new one atomically, so a request
routed before a SIGHUP keeps the chain it was given and nothing in flight is dropped.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from passerelle.routing.application import APPLICATIONS
from passerelle.routing.errors import RoutingError

_MAX_ROUTES = 10_000
_MAX_BIN = 11
_ROUTE_KEYS = {"name", "applications", "bins", "contracts", "currencies", "acquirers"}


@dataclass(frozen=True, slots=True)
class Route:
    """One entry; empty frozensets mean "any"."""

    name: str
    position: int
    applications: frozenset[str]
    bins: tuple[str, ...]
    contracts: frozenset[str]
    currencies: frozenset[int]
    acquirers: tuple[str, ...]

    def specificity(self) -> tuple[bool, bool, bool]:
        return (bool(self.contracts), bool(self.applications), bool(self.currencies))

    def accepts(self, application: str, contract: str, currency: int) -> bool:
        return ((not self.applications or application in self.applications)
                and (not self.contracts or contract in self.contracts)
                and (not self.currencies or currency in self.currencies))


def _strings(raw: dict[str, Any], key: str, where: str) -> list[str]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RoutingError(f"{where}.{key}: expected a list of strings, got {value!r}")
    return value


def parse_routes(data: dict[str, Any]) -> list[Route]:
    """Routes from the decoded TOML document; RoutingError names the entry and the key."""
    unknown = set(data) - {"route"}
    if unknown:
        raise RoutingError(f"unknown top-level key {sorted(unknown)[0]!r}: expected [[route]]")
    entries = data.get("route", [])
    if not isinstance(entries, list):
        raise RoutingError("route: expected an array of tables ([[route]])")
    if len(entries) > _MAX_ROUTES:
        raise RoutingError(f"route: {len(entries)} routes, at most {_MAX_ROUTES}")
    routes: list[Route] = []
    for index, raw in enumerate(entries):
        where = f"route[{index}]"
        if not isinstance(raw, dict):
            raise RoutingError(f"{where}: expected a table")
        extra = set(raw) - _ROUTE_KEYS
        if extra:
            raise RoutingError(f"{where}: unknown key {sorted(extra)[0]!r}")
        name = raw.get("name", f"route-{index + 1}")
        if not isinstance(name, str) or not name:
            raise RoutingError(f"{where}.name: expected a non-empty string")
        where = f"{where} ({name})"
        applications = _strings(raw, "applications", where)
        for app in applications:
            if app not in APPLICATIONS:
                raise RoutingError(f"{where}.applications: unknown application {app!r}")
        bins = _strings(raw, "bins", where)
        for prefix in bins:
            if not (prefix.isascii() and prefix.isdigit() and 1 <= len(prefix) <= _MAX_BIN):
                raise RoutingError(f"{where}.bins: {prefix!r} is not a 1-{_MAX_BIN} digit prefix")
        currencies = raw.get("currencies", [])
        if not isinstance(currencies, list) or not all(
                type(c) is int and 1 <= c <= 999 for c in currencies):
            raise RoutingError(f"{where}.currencies: expected ISO 4217 numeric codes (1-999)")
        acquirers = _strings(raw, "acquirers", where)
        if not acquirers:
            raise RoutingError(f"{where}.acquirers: a route needs at least one acquirer")
        routes.append(Route(
            name=name, position=index, applications=frozenset(applications),
            bins=tuple(dict.fromkeys(bins)), contracts=frozenset(c.strip() for c in
                                                                 _strings(raw, "contracts", where)),
            currencies=frozenset(currencies), acquirers=tuple(acquirers)))
    return routes


def load_routes(path: str | Path) -> list[Route]:
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise RoutingError(f"{path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise RoutingError(f"{path}: {error}") from None
    try:
        return parse_routes(data)
    except RoutingError as error:
        raise RoutingError(f"{path}: {error}") from None


class RouteTable:
    """Routes indexed by BIN prefix; `match` reads at most 12 dict slots per request."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)
        by_prefix: dict[str, list[Route]] = {}
        for route in self.routes:
            for prefix in route.bins or ("",):
                by_prefix.setdefault(prefix, []).append(route)
        for candidates in by_prefix.values():  # best rank first, then file order
            candidates.sort(key=lambda r: (tuple(not s for s in r.specificity()), r.position))
        self._by_prefix = by_prefix
        self._lengths = sorted({len(p) for p in by_prefix}, reverse=True)

    def match(self, application: str, pan: str, contract: str, currency: int) -> Route | None:
        """The winning route for this request, or None."""
        for length in self._lengths:
            candidates = self._by_prefix.get(pan[:length]) if length <= len(pan) else None
            if candidates:
                for route in candidates:
                    if route.accepts(application, contract, currency):
                        return route
        return None


def _overlaps(a: frozenset[Any], b: frozenset[Any]) -> bool:
    return not a or not b or bool(a & b)


def _covers(a: frozenset[Any], b: frozenset[Any]) -> bool:
    """Every value `b` accepts, `a` accepts too."""
    return not a or (bool(b) and b <= a)


def check_table(routes: Sequence[Route], acquirers: Iterable[str] | None = None) -> list[str]:
    """Problems of a route list: overlapping routes, unreachable routes, unknown acquirers."""
    problems: list[str] = []
    known = set(acquirers) if acquirers is not None else None
    names = [r.name for r in routes]
    for route in routes:
        if names.count(route.name) > 1 and names.index(route.name) != route.position:
            problems.append(f"route {route.name!r}: the name is used by an earlier route")
        if known is not None:
            for acquirer in route.acquirers:
                if acquirer not in known:
                    problems.append(f"route {route.name!r}: unknown acquirer {acquirer!r}")
        if len(set(route.acquirers)) != len(route.acquirers):
            problems.append(f"route {route.name!r}: an acquirer appears twice in the chain")
    for later in routes:
        live = list(later.bins or ("",))
        for earlier in routes[: later.position]:
            if earlier.specificity() != later.specificity():
                continue
            same_rank = [p for p in later.bins or ("",) if p in (earlier.bins or ("",))]
            if not same_rank:
                continue
            if not (_overlaps(earlier.applications, later.applications)
                    and _overlaps(earlier.contracts, later.contracts)
                    and _overlaps(earlier.currencies, later.currencies)):
                continue
            shadowed = (_covers(earlier.applications, later.applications)
                        and _covers(earlier.contracts, later.contracts)
                        and _covers(earlier.currencies, later.currencies))
            shown = ", ".join(p or "any BIN" for p in same_rank)
            if shadowed:
                live = [p for p in live if p not in same_rank]
                if live:
                    problems.append(f"route {later.name!r} is unreachable for {shown}: "
                                    f"route {earlier.name!r} comes first and matches all of it")
            else:
                problems.append(f"routes {earlier.name!r} and {later.name!r} overlap on {shown}: "
                                f"requests matching both go to {earlier.name!r}")
        if not live:
            problems.append(f"route {later.name!r} is unreachable: earlier routes match "
                            "everything it matches")
    return problems


def check_routes(path: str | Path, acquirers: Iterable[str] | None = None) -> list[str]:
    """What `switchd --check-config` prints for a routes file; [] when it is sound."""
    try:
        routes = load_routes(path)
    except RoutingError as error:
        return [str(error)]
    return check_table(routes, acquirers)


class Router:
    """The live route table; `reload` replaces it whole or not at all."""

    def __init__(self, path: str | Path, acquirers: Iterable[str] | None = None) -> None:
        self.path = Path(path)
        self.acquirers = set(acquirers) if acquirers is not None else None
        self.table = self._load()

    def _load(self) -> RouteTable:
        routes = load_routes(self.path)
        if self.acquirers is not None:
            for route in routes:
                unknown = [a for a in route.acquirers if a not in self.acquirers]
                if unknown:
                    raise RoutingError(f"{self.path}: route {route.name!r}: "
                                       f"unknown acquirer {unknown[0]!r}")
        return RouteTable(routes)

    def reload(self) -> RouteTable:
        """Load the file again; on error the old table stays and RoutingError says why."""
        self.table = self._load()
        return self.table

    def match(self, application: str, pan: str, contract: str, currency: int) -> Route | None:
        return self.table.match(application, pan, contract, currency)
