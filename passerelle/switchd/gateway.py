"""switchd with storage and the télécollecte dialogue wired in.

`switchd --config FILE` runs this when FILE has a `[storage]` or `[telecollecte]` table
(see `switchd/main.py`); `mpctl demo` and the tests run `Gateway` in-process. It is the same
daemon (listeners, logs, metrics, signals) plus the storage runtime (`[storage]` DSN, or
with none an embedded PostgreSQL in the state directory; migrations; pool; spool journal
under `<state_dir>/spool`, replayed in the background) and the télécollecte dialogue on
transfer-mode sessions. `[storage] state_dir` defaults to `[switchd] state_dir`.

`[telecollecte]` is read here (config.py does not know it), see `TelecollecteSettings`.

`[routes]` adds the authorization dialogue (`switchd.authorization`): acquirer links, SAF,
the auth log (journalled in `storage.authlog_spool`), started after the daemon is built,
closed after it drained, its route table reloaded on SIGHUP (a bad file keeps the old one).

PAN HMAC and keys. With `[hsm]` (`passerelle.hsm.HSMSettings`) the HSM computes every PAN
HMAC (télécollecte rows and the auth log record the key version it used; new rows use the
newest), seals the SAF under its data key `routes.saf.data_key` (so several nodes share
it), translates PIN blocks and MACs acquirer messages; SIGHUP calls `hsm.reload()`.
Without `[hsm]`, as before: the PAN HMAC key is `[telecollecte] pan_hmac_key` (version
`pan_hmac_key_version`) or, without it, a random key generated once into
`<state_dir>/pan-hmac.key` (mode 0600: fine for a demo or a single node, not for several
nodes that must agree); the SAF key is `<state_dir>/saf-data.key`; PIN blocks are not sent
on and no MAC is made (an acquirer that names a pin_key or mac_key is a config error).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tomllib
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client import Gauge

from passerelle.config import ConfigError, Settings, parse_config
from passerelle.hsm.base import HSM
from passerelle.hsm.errors import HSMError
from passerelle.hsm.settings import HSMSettings
from passerelle.routing.settings import RoutingSettings, routing_settings
from passerelle.storage.db import StorageError, settings_from_table
from passerelle.storage.pan import PanHmacKey
from passerelle.storage.runtime import Storage
from passerelle.storage.spool import Spool
from passerelle.switchd import authorization, logs
from passerelle.switchd.dispatch import default_registry
from passerelle.switchd.server import Daemon
from passerelle.switchd.telecollecte import (
    TelecollecteMetrics,
    TelecollecteServices,
    register,
)

__all__ = ["Gateway", "TelecollecteSettings", "load", "serve"]


class TelecollecteSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                           kw_only=True):
    """The `[telecollecte]` table."""

    pan_hmac_key: str | None = None  # hex, at least 16 bytes; default: a generated key file
    pan_hmac_key_version: int = 1
    max_window: int = msgspec.field(default=32)  # 0246 per 0256 at most
    max_messages: int = 9999  # 0246 per file (field 72 is n4)
    replay_interval: float = 5.0  # seconds between spool replays while it holds remises
    spool_retry_after: float = 2.0  # after a failed store, go straight to the spool this long


def _read(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None


def _parse(raw: dict[str, Any]) -> tuple[Settings, TelecollecteSettings]:
    table = raw.pop("telecollecte", {})
    try:
        telecollecte = msgspec.convert(table, TelecollecteSettings)
    except msgspec.ValidationError as error:
        raise ConfigError(f"[telecollecte]: {str(error).replace('`', '')}") from None
    for key, low, high in (("max_window", 1, 999), ("max_messages", 1, 9999),
                           ("pan_hmac_key_version", 1, 32767)):
        value = getattr(telecollecte, key)
        if not low <= value <= high:
            raise ConfigError(f"telecollecte.{key}: expected {low}..{high}, got {value}")
    for key in ("replay_interval", "spool_retry_after"):
        value = getattr(telecollecte, key)
        if not 0 < value <= 86_400:
            raise ConfigError(f"telecollecte.{key}: expected seconds in (0, 86400], got {value}")
    settings = parse_config(raw)
    try:
        settings_from_table(settings.storage)
    except StorageError as error:
        raise ConfigError(str(error)) from None
    if not settings.hsm:
        for index, acquirer in enumerate(settings.routes.get("acquirers") or []):
            for key in ("pin_key", "mac_key"):
                if isinstance(acquirer, dict) and acquirer.get(key) is not None:
                    raise ConfigError(f"routes.acquirers[{index}].{key}: needs an [hsm] table")
    return settings, telecollecte


def load(path: str | Path | None) -> tuple[Settings, TelecollecteSettings]:
    """Read the TOML file: switchd settings plus our `[telecollecte]` table.

    A relative `routes.path` is taken from the settings file's directory, so that
    switchd.toml and routes.toml travel together (/etc/passerelle, conf/)."""
    raw = _read(path)
    routes = raw.get("routes")
    if path is not None and isinstance(routes, dict) and isinstance(routes.get("path"), str):
        routes["path"] = str(Path(path).parent / routes["path"])  # absolute stays absolute
    return _parse(raw)


def _pan_key(settings: TelecollecteSettings, state_dir: Path, log: Any) -> PanHmacKey:
    if settings.pan_hmac_key is not None:
        return PanHmacKey.from_hex(settings.pan_hmac_key_version, settings.pan_hmac_key)
    path = state_dir / "pan-hmac.key"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(32) + "\n")
            file.flush()
            os.fsync(file.fileno())
        log.warning("telecollecte.pan_key_generated", path=str(path))
    return PanHmacKey.from_hex(settings.pan_hmac_key_version, path.read_text().strip())


async def _check_route_keys(hsm: HSM, routes: RoutingSettings) -> None:
    """Every key the routes name exists in the HSM (UnknownKeyError names the first one
    missing): a typo must fail the start, not every PIN transaction or SAF message."""
    names = {routes.saf.data_key}
    for acquirer in routes.acquirers:
        if acquirer.pin_key is not None:
            names |= {acquirer.pin_key, routes.authorization.pin_key}
        if acquirer.mac_key is not None:
            names.add(acquirer.mac_key)
    for name in sorted(names):
        await hsm.key_info(name)


def _pending_bytes(spool: Spool) -> float:
    total = 0
    for segment in spool.segments():
        with contextlib.suppress(FileNotFoundError):  # replayed and removed meanwhile
            total += segment.stat().st_size
    return total


class Gateway:
    """Storage (`passerelle.storage.runtime.Storage`) + the daemon, in the right order."""

    def __init__(self, settings: Settings, telecollecte: TelecollecteSettings) -> None:
        self.settings = settings
        self.telecollecte = telecollecte
        table = {"state_dir": settings.switchd.state_dir, **settings.storage}
        self.storage_settings = settings_from_table(table)
        self.state_dir = Path(self.storage_settings.state_dir)
        self.log = logs.get_logger()
        self.storage: Storage | None = None
        self.daemon: Daemon | None = None
        self.hsm: HSM | None = None
        self.auth: authorization.AuthServices | None = None

    async def start(self) -> None:
        """Storage, then the listeners (tests and the demo run it in-process)."""
        try:
            await self._prepare()
            assert self.daemon is not None
            await self.daemon.start()
        except BaseException:
            await self.stop()
            raise

    async def _open_hsm(self) -> HSM:
        """The configured HSM, checked now: a missing PAN HMAC key fails the start, not the
        first 0246."""
        from passerelle.hsm import open_hsm  # noqa: PLC0415 - only when [hsm] is there

        hsm = open_hsm(msgspec.convert(self.settings.hsm, HSMSettings))
        try:
            versions = await hsm.pan_hmac_versions()
        except HSMError:
            await hsm.close()
            raise
        self.log.info("hsm.opened", backend=hsm.backend, pan_hmac_versions=versions)
        return hsm

    async def _prepare(self) -> None:
        tlc = self.telecollecte
        storage = Storage(self.storage_settings, replay_interval_s=tlc.replay_interval)
        await storage.__aenter__()
        self.storage = storage
        storage.sink.retry_after_s = tlc.spool_retry_after
        if self.settings.hsm:
            self.hsm = await self._open_hsm()
        pan_key = None if self.hsm else _pan_key(tlc, self.state_dir, self.log)
        services = TelecollecteServices(
            sink=storage.sink, pan_key=pan_key, hsm=self.hsm,
            pool=storage.pool, max_window=tlc.max_window, max_messages=tlc.max_messages)
        registry = default_registry()
        register(registry, services)
        self.daemon = Daemon(self.settings, registry=registry)
        if self.settings.routes and self.hsm is not None:
            await _check_route_keys(self.hsm, routing_settings(self.settings.routes))
        if self.settings.routes:
            self.auth = authorization.build_from_config(
                self.settings, registry=self.daemon.metrics.registry, pool=storage.pool,
                hsm=self.hsm, pan_key=pan_key, spool=storage.authlog_spool)
            authorization.register(registry, self.auth)  # 0100/0200, 0400/0420 and repeats
            await self.auth.start()
            self.daemon.reload_hooks.append(self.auth.reload_routes)
        if self.hsm is not None:
            self.daemon.reload_hooks.append(self.hsm.reload)
        services.metrics = TelecollecteMetrics(self.daemon.metrics.registry)
        spool = storage.spool
        Gauge("storage_spool_pending_bytes",
              "Bytes of remises waiting in the spool journal for PostgreSQL",
              registry=self.daemon.metrics.registry).set_function(
                  lambda: _pending_bytes(spool))

    async def stop(self) -> None:
        """Drain the daemon (0516s in flight are sent), then close storage."""
        if self.daemon is not None:
            await self.daemon.stop()
        if self.auth is not None:  # SAF marks and the auth log reach storage first
            auth, self.auth = self.auth, None
            await auth.close()
        if self.hsm is not None:
            hsm, self.hsm = self.hsm, None
            await hsm.close()
        if self.storage is not None:
            storage, self.storage = self.storage, None
            with contextlib.suppress(StorageError, TimeoutError):
                await asyncio.wait_for(storage.replay_now(), 10)
            await storage.__aexit__(None, None, None)

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT, stop."""
        try:
            await self._prepare()
            assert self.daemon is not None
            await self.daemon.run()
        finally:
            await self.stop()


async def serve(settings: Settings, telecollecte: TelecollecteSettings) -> None:
    await Gateway(settings, telecollecte).run()
