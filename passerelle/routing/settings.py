"""Typed settings of routing: acquirers, the authorization dialogue, SAF and the auth log.

They live in the `[routes]` table of switchd.toml (the route table itself is its own file,
`routes.path`, so that SIGHUP can reload it alone). Every value has a default except what
only the operator can know (an acquirer's address). Errors name the key, as config.py does.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from passerelle.routing.errors import RoutingError

Seconds = Annotated[float, msgspec.Meta(gt=0, le=1_000_000)]
Count = Annotated[int, msgspec.Meta(ge=1)]
Minor = Annotated[int, msgspec.Meta(ge=0)]  # money: integer minor units
Currency = Annotated[int, msgspec.Meta(ge=1, le=999)]
PinFormat = Literal[0, 1, 3, 4]  # ISO 9564 PIN block formats

# ISO 8583:1993 action codes (field 39 of a 1110) -> CB response codes. An acquirer's own
# `response_codes` table overrides entries; a code in neither table becomes "05".
DEFAULT_ACTION_CODES: dict[str, str] = {
    "000": "00", "001": "00", "002": "00", "003": "00", "100": "05", "101": "54",
    "102": "34", "104": "04", "106": "38", "107": "01", "108": "02", "109": "03",
    "110": "13", "111": "14", "114": "25", "116": "51", "117": "55", "118": "56",
    "119": "57", "120": "58", "121": "61", "123": "65", "125": "62", "129": "63",
    "200": "04", "201": "33", "202": "34", "204": "07", "206": "75", "208": "41",
    "209": "43", "902": "12", "904": "30", "907": "91", "909": "96", "911": "91",
    "912": "91", "913": "94",
}


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A TOML table: unknown keys are typos."""


class FloorLimit(_Section):
    """Largest amount approved in stand-in for a contract/application/currency ("*" = any)."""

    amount: Minor
    contract: str = "*"
    application: str = "*"
    currency: Currency = 978


class AcquirerSettings(_Section):
    """One acquirer host and how to talk to it."""

    name: str
    host: str
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)]
    profile: Literal["iso93-binary", "iso87-ascii", "cb2a"] = "iso93-binary"
    framing: Literal[2, 4] = 2  # bytes of the big-endian length prefix
    tls: bool = False
    tls_ca: str | None = None  # PEM bundle to verify the host; None = system store
    tls_cert: str | None = None  # client certificate (mutual TLS)
    tls_key: str | None = None
    tls_server_name: str | None = None
    connect_timeout: Seconds = 3.0
    response_timeout: Seconds = 5.0  # one attempt; the terminal's deadline caps it
    echo_interval: Seconds = 30.0  # keep-alive on an idle link
    sign_on: bool = True
    window: Count = 64  # requests in flight on the link
    max_frame: Count = 8192
    reconnect_min: Seconds = 0.2
    reconnect_max: Seconds = 30.0
    acquirer_id: str = "00000000000"  # field 32 towards this acquirer
    response_codes: dict[str, str] = msgspec.field(default_factory=dict)
    floor_limits: list[FloorLimit] = msgspec.field(default_factory=list)
    # HSM key names (they need an [hsm] table). `pin_key`: this acquirer's ZPK; a terminal's
    # PIN block (52) is re-enciphered under it, in `pin_format`, before it is sent. Without
    # it a PIN block is not sent on (an acquirer cannot read a block under our TPK).
    pin_key: str | None = None
    pin_format: PinFormat = 0
    # `mac_key`: requests to this acquirer carry a MAC (64, or 128 with a secondary
    # bitmap) and its answers must carry a valid one; a bad MAC counts as no answer.
    mac_key: str | None = None
    mac_algorithm: Literal["iso9797-1-alg3", "aes-cmac"] = "iso9797-1-alg3"

    def cb_code(self, code: str) -> str:
        """The CB response code for this acquirer's field 39."""
        if self.profile != "iso93-binary":
            return self.response_codes.get(code, code)
        return self.response_codes.get(code) or DEFAULT_ACTION_CODES.get(code, "05")

    def floor_limit(self, contract: str, application: str, currency: int) -> int:
        """Largest stand-in amount for this sale; 0 (no stand-in) when nothing matches.

        The most specific entry wins: a named contract beats "*", then a named application.
        """
        best: tuple[int, int] | None = None
        for limit in self.floor_limits:
            if limit.currency != currency:
                continue
            if limit.contract not in ("*", contract) or limit.application not in ("*", application):
                continue
            rank = (limit.contract != "*") * 2 + (limit.application != "*")
            if best is None or rank > best[0]:
                best = (rank, limit.amount)
        return best[1] if best else 0


class TerminalEntry(_Section):
    """A terminal known from configuration (used when there is no database)."""

    terminal_id: str  # field 41
    contract: str  # field 42, trimmed


class ContractEntry(_Section):
    number: str
    application: str = "CBEMV"
    active: bool = True


class AuthorizationSettings(_Section):
    deadline: Seconds = 15.0  # every terminal is answered within this (its TNR minus margin)
    margin: Seconds = 0.05  # kept back from the deadline to build and send the answer
    min_attempt: Seconds = 0.2  # an acquirer is not tried with less time than this left
    currencies: list[Currency] = msgspec.field(default_factory=lambda: [978])
    max_amount: Minor = 99_999_999
    directory_ttl: Seconds = 60.0  # in-memory cache of terminals/contracts read from the DB
    # A directory query slower than this serves the cache (or configuration) instead, and
    # the database is left alone for `directory_retry` s: terminals never wait for it.
    directory_timeout: Seconds = 0.5
    directory_retry: Seconds = 5.0
    # Recent approvals kept (in memory) so that a terminal's own reversal can be sent on.
    reversal_memory: Count = 50_000
    # A reversal whose approval is not in this node's memory (it went through another
    # node) is looked for in the shared auth log for this long: the approving node writes
    # its log in batches (`authlog.flush_interval`), so the row may come a little later.
    reversal_lookup: Seconds = 5.0
    terminals: list[TerminalEntry] = msgspec.field(default_factory=list)
    contracts: list[ContractEntry] = msgspec.field(default_factory=list)
    # The terminals' PIN encryption key (HSM name of a TPK) and PIN block format. DUKPT
    # (a BDK + KSN) is not wired: CB2A's field 53 (n16) cannot carry a 10-byte KSN.
    pin_key: str = "tpk"
    pin_format: PinFormat = 0


class SafSettings(_Section):
    interval: Seconds = 1.0  # how often pending advices/reversals are looked for
    batch: Count = 50
    backoff_min: Seconds = 1.0
    backoff_max: Seconds = 300.0
    attempt_timeout: Seconds = 5.0
    data_key: str = "saf"  # HSM data key that encrypts queued messages


class AuthLogSettings(_Section):
    queue: Count = 10_000
    batch: Count = 500
    flush_interval: Seconds = 0.2
    spool_dir: str | None = None  # default: <state_dir>/spool-authlog


class RoutingSettings(_Section):
    path: str = "/etc/passerelle/routes.toml"
    acquirers: list[AcquirerSettings] = msgspec.field(default_factory=list)
    authorization: AuthorizationSettings = msgspec.field(default_factory=AuthorizationSettings)
    saf: SafSettings = msgspec.field(default_factory=SafSettings)
    authlog: AuthLogSettings = msgspec.field(default_factory=AuthLogSettings)

    def __post_init__(self) -> None:
        names = [a.name for a in self.acquirers]
        for name in names:
            if names.count(name) > 1:
                raise RoutingError(f"routes.acquirers: {name!r} is defined twice")

    def acquirer(self, name: str) -> AcquirerSettings:
        for acquirer in self.acquirers:
            if acquirer.name == name:
                return acquirer
        raise RoutingError(f"no acquirer named {name!r}")


def routing_settings(table: dict[str, Any]) -> RoutingSettings:
    """Settings from the `[routes]` table of switchd.toml; RoutingError names the bad key."""
    try:
        return msgspec.convert(table, RoutingSettings)
    except msgspec.ValidationError as error:
        raise RoutingError(f"routes: {error}") from None
