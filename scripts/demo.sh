#!/usr/bin/env bash
# The gateway's main job on embedded defaults (no system PostgreSQL needed).
# Until switchd and the télécollecte land, it decodes and verifies the reference CB2A messages.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
vectors="${PASSERELLE_VECTORS:-../shared/vectors/cb2a}"
for f in "$vectors"/*.hex; do
  echo "== $(basename "$f")"
  .venv/bin/mpctl decode --verify --file "$f"
done
