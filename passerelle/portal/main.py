"""`passerelle-portal`: serve the merchant portal with uvicorn.

    passerelle-portal --config /etc/passerelle/portal.toml
    passerelle-portal --config conf/portal.toml --check-config

Exit codes: 0 stopped normally, 2 unusable configuration (the message names the key).
"""

from __future__ import annotations

import argparse
import sys

import uvicorn

from passerelle.portal.app import create_app
from passerelle.portal.settings import PortalError, load_config


def main(argv: list[str] | None = None) -> int:
    """Parse options, load the configuration, run uvicorn until SIGTERM."""
    parser = argparse.ArgumentParser(prog="passerelle-portal",
                                     description="Read-only merchant portal.")
    parser.add_argument("--config", "-c", required=True, help="TOML configuration file.")
    parser.add_argument("--host", help="Override portal.host.")
    parser.add_argument("--port", type=int, help="Override portal.port.")
    parser.add_argument("--check-config", action="store_true",
                        help="Validate the configuration and exit.")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        _ = config.dsn  # the portal has no embedded database: a DSN is required
    except PortalError as exc:
        print(f"passerelle-portal: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"{args.config}: ok")
        return 0
    host = args.host or config.portal.host
    port = args.port if args.port is not None else config.portal.port
    uvicorn.run(create_app(config), host=host, port=port, proxy_headers=True,
                server_header=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
