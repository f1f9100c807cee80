"""`switchd`: the terminal-facing daemon.

    switchd --config /etc/passerelle/switchd.toml     run (systemd Type=notify)
    switchd --check-config /etc/passerelle/switchd.toml   validate, exit 0 or 2

Exit codes follow the project's CLI convention: 0 ok, 2 bad usage or bad configuration.
"""

from __future__ import annotations

import argparse
import ssl
import sys
import tomllib

import uvloop

from passerelle.config import CbcomTlsListener, ConfigError, Settings, load_config
from passerelle.switchd import logs
from passerelle.switchd.server import Daemon
from passerelle.switchd.tls import server_context


def _check_tls(settings: Settings) -> None:
    """Load the TLS files now, so that a bad certificate fails the check, not a reload."""
    tls: CbcomTlsListener = settings.listeners.cbcom_tls
    if not tls.enabled:
        return
    try:
        server_context(tls)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"listeners.cbcom-tls: cannot load the certificate, key or "
                          f"client CA ({error})") from None


def _route_problems(settings: Settings) -> list[str]:
    """Overlapping or unreachable routes, a bad routes file, inconsistent timeouts."""
    if not settings.routes:
        return []
    from passerelle.routing.check import check_config  # noqa: PLC0415 - only with [routes]

    return check_config(settings.routes)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchd", description="Passerelle terminal switch: XOT, CBCOM, CBCOM/TLS, ISO.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--config", metavar="FILE", help="settings file (TOML); "
                       "without it every setting has its default")
    group.add_argument("--check-config", metavar="FILE",
                       help="validate FILE, print what is wrong, exit 0 (valid) or 2")
    return parser


async def _serve(settings: Settings) -> None:
    daemon = Daemon(settings)
    await daemon.run()


def _wants_storage(path: str | None) -> bool:
    """A [storage], [telecollecte], [routes] or [hsm] table: run the gateway (storage,
    télécollecte, and authorization when routes are configured)."""
    if path is None:
        return False
    try:
        with open(path, "rb") as file:
            raw = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError):
        return False  # load_config reports it
    return any(table in raw for table in ("storage", "telecollecte", "routes", "hsm"))


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    path = args.check_config or args.config
    gateway = _wants_storage(path)
    try:
        if gateway:  # storage code is imported only when the configuration asks for it
            from passerelle.switchd import gateway as gateway_module  # noqa: PLC0415

            settings, telecollecte = gateway_module.load(path)
        else:
            settings = load_config(path)
        _check_tls(settings)
    except ConfigError as error:
        print(f"switchd: {path}: {error}", file=sys.stderr)
        sys.exit(2)
    if args.check_config:
        problems = _route_problems(settings)
        if problems:
            for problem in problems:
                print(f"switchd: {path}: {problem}", file=sys.stderr)
            sys.exit(2)
        print(f"switchd: {path}: configuration is valid")
        return
    logs.configure(settings.logging.level)
    Daemon.freeze_gc_after_start = True  # see Daemon: no full-collection pause after start-up
    try:
        if gateway:
            uvloop.run(gateway_module.serve(settings, telecollecte))
        else:
            uvloop.run(_serve(settings))
    except Exception as error:  # e.g. a port in use, storage away: systemd restarts us
        logs.get_logger().error("switchd.failed", error=str(error),
                                exc_info=not isinstance(error, OSError))
        sys.exit(1)


if __name__ == "__main__":
    main()
