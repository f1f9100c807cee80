#!/usr/bin/env bash
# The gateway's main job on embedded defaults (no system PostgreSQL needed): switchd on a
# private PostgreSQL, simulated terminals (TPE) collecting their remises over XOT and
# CBCOM/TLS. Extra arguments go to `mpctl demo` (try --help, --terminals 50, --serve).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mpctl demo "$@"
