"""Settings: one TOML file -> typed, validated msgspec Structs.

Every setting has a default, so an empty file is a valid configuration. Errors name the
key path and the offending value (`listeners.xot.port: expected int, got "abc"`) because
the person reading them is editing that file, not our code.

[storage], [hsm], [routes], [mail] and [branding] stay raw tables on `Settings` (their
owners read them: `storage.db.settings_from_table`, `hsm.HSMSettings`,
`routing.settings.routing_settings`, `passerelle.mail`), but `parse_config` validates each
present table against its owner's Struct, imported only then, so that `--check-config` names
a bad key there too without switchd importing psycopg or the HSM when they are unused.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from passerelle.codecs.profiles import PROFILES

__all__ = [
    "CbcomSettings",
    "CbcomTlsListener",
    "ConfigError",
    "IsoListener",
    "ListenerSettings",
    "LoggingSettings",
    "MetricsSettings",
    "Settings",
    "SwitchdSettings",
    "X25Settings",
    "load_config",
    "parse_config",
]

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=1_000_000)]  # finite: no inf, no nan
Count = Annotated[int, msgspec.Meta(ge=1)]
PacketSize = Annotated[int, msgspec.Meta(ge=16, le=4096)]  # and a power of two: see _check


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the key and the value."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A TOML table: unknown keys are typos, and typos must not pass silently."""


class SwitchdSettings(_Section):
    state_dir: str = "/var/lib/passerelle"
    # SIGTERM: how long dialogues in flight may run before switchd exits anyway.
    drain_timeout: Seconds = 30.0
    # PROXY header and TLS handshake must be done within this; then the protocol's own
    # timers rule (x25.call_timeout, cbcom.cn_timeout, listeners.iso.idle_timeout).
    handshake_timeout: Seconds = 10.0


class ListenerSettings(_Section):
    """One listening socket; subclasses set the per-listener defaults."""

    enabled: bool = True
    host: str = "0.0.0.0"  # noqa: S104 - terminals dial in from the network
    port: Port = 0
    max_connections: Count = 4096
    # Largest frame (the length prefix's value) accepted; a larger one closes the session.
    max_frame: Count = 16384
    # Expect a PROXY protocol v2 header (HAProxy in TCP mode) before anything else.
    proxy_protocol: bool = False


class XotListener(ListenerSettings):
    port: Port = 1998
    # Largest CBCOM IPDU reassembled from an M-bit chain (X.25 packets themselves are
    # bounded by x25.max_packet_size).
    max_frame: Count = 16384


class CbcomListener(ListenerSettings):
    port: Port = 4000


class CbcomTlsListener(ListenerSettings):
    enabled: bool = False  # needs a certificate
    port: Port = 4443
    cert: str | None = None  # PEM chain, server certificate first
    key: str | None = None
    # Mutual TLS: set to the PEM bundle of CAs that sign terminal certificates.
    client_ca: str | None = None
    # With client_ca: "required" refuses terminals without a certificate, "optional"
    # verifies a certificate when one is presented.
    client_auth: Literal["required", "optional"] = "required"


class IsoListener(ListenerSettings):
    host: str = "127.0.0.1"
    port: Port = 5000
    max_frame: Count = 8192
    # Codec profile of the messages: cb2a, iso87-ascii or iso93-binary.
    profile: Literal["cb2a", "iso87-ascii", "iso93-binary"] = "cb2a"
    # No session layer above the framer: an idle connection is closed after this long.
    idle_timeout: Seconds = 780.0


class ListenersSettings(_Section):
    xot: XotListener = msgspec.field(default_factory=XotListener)
    cbcom: CbcomListener = msgspec.field(default_factory=CbcomListener)
    cbcom_tls: CbcomTlsListener = msgspec.field(default_factory=CbcomTlsListener, name="cbcom-tls")
    iso: IsoListener = msgspec.field(default_factory=IsoListener)

    def items(self) -> list[tuple[str, ListenerSettings]]:
        """(name as written in the file, settings) for every listener."""
        return [("xot", self.xot), ("cbcom", self.cbcom), ("cbcom-tls", self.cbcom_tls),
                ("iso", self.iso)]


class X25Settings(_Section):
    """What we offer and accept on a virtual circuit (DESIGN.md §2)."""

    allow_modulo_128: bool = True  # else a modulo-128 Call Request is cleared
    packet_size: PacketSize = 128  # default when the Call Request has no facility 0x42
    max_packet_size: PacketSize = 1024  # larger requests are negotiated down to this
    window: Count = 2  # default when the Call Request has no facility 0x43
    max_window: Annotated[int, msgspec.Meta(ge=1, le=127)] = 7  # capped at modulo - 1
    call_timeout: Seconds = 180.0  # T11: Call Request or accept not in time
    clear_timeout: Seconds = 60.0  # T13: no Clear Confirmation after our Clear
    # The called X.121 address selects the CB2A profile (longest matching prefix wins),
    # e.g. {"19600199" = "cb2a-ebcdic"}; any other call uses "cb2a".
    called_profiles: dict[str, str] = msgspec.field(default_factory=dict)


class CbcomSettings(_Section):
    """CBCOM pseudo-session timers, in seconds (fractions allowed so tests stay fast)."""

    cn_timeout: Seconds = 30.0  # the CN must come this long after the connection / call
    tgr: Seconds = 30.0  # a DE must be answered within TGR
    tsi: Seconds = 780.0  # inactivity, unless the CN negotiates another value (PI17)
    tnr: Seconds = 60.0  # client side (simulator): waiting for AC or an answer


class MetricsSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 9150


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(_Section):
    switchd: SwitchdSettings = msgspec.field(default_factory=SwitchdSettings)
    listeners: ListenersSettings = msgspec.field(default_factory=ListenersSettings)
    x25: X25Settings = msgspec.field(default_factory=X25Settings)
    cbcom: CbcomSettings = msgspec.field(default_factory=CbcomSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    logging: LoggingSettings = msgspec.field(default_factory=LoggingSettings)
    # Typed by their owners, validated in `_check_owned` (see the module docstring).
    storage: dict[str, Any] = msgspec.field(default_factory=dict)
    hsm: dict[str, Any] = msgspec.field(default_factory=dict)
    routes: dict[str, Any] = msgspec.field(default_factory=dict)
    mail: dict[str, Any] = msgspec.field(default_factory=dict)
    branding: dict[str, Any] = msgspec.field(default_factory=dict)


_MSGSPEC_ERROR = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>.*)`)?$", re.DOTALL)
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<key>.*)`$")


def _lookup(data: Any, parts: list[str | int]) -> Any:
    for part in parts:
        data = data[part]
    return data


def _toml_repr(value: Any) -> str:
    """A value as the user wrote it in TOML."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


def _dotted(parts: list[str | int]) -> str:
    """`["routes", "acquirers", 0, "port"]` -> `routes.acquirers[0].port`."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _explain(error: msgspec.ValidationError, raw: dict[str, Any],
             prefix: list[str | int] | None = None) -> str:
    """Turn msgspec's message into `key.path: what is wrong, got VALUE`; `prefix` is the
    path of the table that was converted on its own."""
    match = _MSGSPEC_ERROR.match(str(error))
    assert match is not None  # the pattern matches any string
    what, path = match["what"], match["path"] or ""
    parts: list[str | int] = [*(prefix or []), *(
        name or int(index) for name, index in _PATH_PART.findall(path))]
    unknown = _UNKNOWN.match(what)
    if unknown:
        return _dotted([*parts, unknown["key"]]) + ": unknown key"
    key = _dotted(parts) or "(top level)"
    what = what[0].lower() + what[1:]
    what = re.sub(r"`([^`]*)`", r"\1", what)
    try:
        value = _lookup(raw, parts)
    except (KeyError, IndexError, TypeError):
        return f"{key}: {what}"
    what = re.sub(r", got \S+$", "", what)
    if what.startswith("invalid enum value"):
        what = "not an allowed value"
    return f"{key}: {what}, got {_toml_repr(value)}"


def _check(settings: Settings) -> None:
    """Rules that span several keys or touch the file system."""
    x25 = settings.x25
    for key in ("packet_size", "max_packet_size"):
        value = getattr(x25, key)
        if value & (value - 1):
            raise ConfigError(f"x25.{key}: expected a power of two from 16 to 4096, got {value}")
    if x25.packet_size > x25.max_packet_size:
        raise ConfigError(
            f"x25.packet_size: {x25.packet_size} is larger than "
            f"x25.max_packet_size ({x25.max_packet_size})"
        )
    if x25.window > min(x25.max_window, 7):
        raise ConfigError(f"x25.window: {x25.window} is larger than x25.max_window "
                          f"({x25.max_window}) or 7 (modulo 8)")
    for address, name in x25.called_profiles.items():
        if not address.isdigit() or len(address) > 15:
            raise ConfigError(f"x25.called_profiles: {_toml_repr(address)} is not an X.121 "
                              "address (up to 15 digits)")
        if name not in PROFILES:
            raise ConfigError(f"x25.called_profiles.{address}: unknown profile "
                              f"{_toml_repr(name)} (known: {', '.join(sorted(PROFILES))})")
    tls = settings.listeners.cbcom_tls
    if tls.enabled:
        for key in ("cert", "key"):
            if getattr(tls, key) is None:
                raise ConfigError(f"listeners.cbcom-tls.{key}: required when the listener "
                                  "is enabled")
    for key in ("cert", "key", "client_ca"):
        path = getattr(tls, key)
        if tls.enabled and path is not None and not Path(path).is_file():
            raise ConfigError(f"listeners.cbcom-tls.{key}: no such file, got {_toml_repr(path)}")
    seen: dict[tuple[str, int], str] = {}
    for name, listener in settings.listeners.items():
        if not listener.enabled or listener.port == 0:
            continue
        where = (listener.host, listener.port)
        if where in seen:
            raise ConfigError(f"listeners.{name}.port: {listener.port} is already used by "
                              f"listeners.{seen[where]}")
        seen[where] = name


def _owned_types() -> dict[str, Any]:
    """Table -> its owner's Struct, imported on demand (psycopg, cryptography)."""
    from passerelle.hsm.settings import HSMSettings  # noqa: PLC0415
    from passerelle.mail import Branding, MailSettings  # noqa: PLC0415
    from passerelle.routing.settings import RoutingSettings  # noqa: PLC0415
    from passerelle.storage.db import StorageSettings  # noqa: PLC0415

    return {"storage": StorageSettings, "hsm": HSMSettings, "routes": RoutingSettings,
            "mail": MailSettings, "branding": Branding}


def _check_owned(raw: dict[str, Any]) -> None:
    """Each present owned table converts to its Struct; the error names `table.key`."""
    present = [name for name in ("storage", "hsm", "routes", "mail", "branding")
               if isinstance(raw.get(name), dict)]
    if not present:
        return
    types = _owned_types()
    for name in present:
        try:
            msgspec.convert(raw[name], types[name])
        except msgspec.ValidationError as error:
            raise ConfigError(_explain(error, raw, prefix=[name])) from None
        except Exception as error:  # an owner's own check (__post_init__)
            message = str(error)
            raise ConfigError(message if message.startswith(f"{name}") else
                              f"{name}: {message}") from None


def parse_config(raw: dict[str, Any]) -> Settings:
    """Validate an already-parsed TOML document."""
    try:
        settings = msgspec.convert(raw, Settings)
    except msgspec.ValidationError as error:
        raise ConfigError(_explain(error, raw)) from None
    _check(settings)
    _check_owned(raw)
    return settings


def load_config(path: str | Path | None) -> Settings:
    """Read and validate the TOML file at `path` (None: every default)."""
    if path is None:
        return parse_config({})
    try:
        with open(path, "rb") as file:
            raw = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    return parse_config(raw)
