#!/usr/bin/env bash
# System packages the test suite needs beyond the venv, installed only if missing (idempotent, quiet).
#   postgresql  tests/test_postgres.py, tests/test_secrets.py: a real PostgreSQL server on 127.0.0.1
#               (the tests skip, with the reason, when its binaries are absent)
#   chromium    headless browser for the dashboard test
# Debian/Ubuntu (apt) only; elsewhere it says what is missing and leaves the machine as it is.
# Usage: .ci/system_deps.sh   (.ci/run calls it before `make test`)
set -euo pipefail

PACKAGES=(postgresql chromium)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    for pkg in "${PACKAGES[@]}"; do
        installed "$pkg" || missing+=("$pkg")
    done
else
    echo "system_deps: no dpkg here; install ${PACKAGES[*]} yourself (tests that need them skip)" >&2
    exit 0
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "system_deps: missing ${missing[*]} and no root/sudo to install them (tests that need them skip)" >&2
    exit 0
fi

echo "system_deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
