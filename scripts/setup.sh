#!/usr/bin/env bash
# One-time (idempotent) set-up of a fresh machine: Debian tools the tests drive, then a
# virtualenv in .venv with passerelle and its dev extra. Only Python, pip and apt are assumed.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(tshark softhsm2 chromium libreoffice-calc-nogui)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# pip's chatter goes to a log, shown only if the install fails.
log=.venv/pip-install.log
if ! { .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip &&
       .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "setup: pip install failed (log above, also in $log)" >&2
  exit 1
fi
