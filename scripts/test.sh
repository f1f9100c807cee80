#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up, lint, then pytest.
# PostgreSQL: PASSERELLE_TEST_DSN if set, else 127.0.0.1:5432 if it answers, else an embedded
# server (pgserver) that the test session starts and stops itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check passerelle tests benchmarks
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests — failing on purpose" >&2
  exit 1
fi
exit "$rc"
