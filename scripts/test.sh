#!/usr/bin/env bash
# Install Planbro with its test dependencies and run every check: lint, then the test suite.
# The MongoDB suite runs when MONGODB_URI points at a real server (docker compose up mongo),
# and is skipped with the reason printed otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
# A Compose CLI checks docker-compose.yml (tests/test_compose.py). Where there is none and
# this runs as root on Debian (as CI does), Debian's docker-compose is installed for it;
# otherwise that one check is skipped with the reason printed.
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { apt-get install -y -q docker-compose || { apt-get update -q && apt-get install -y -q \
    docker-compose; }; } >/dev/null 2>&1 \
    || echo "docker-compose could not be installed: the Compose CLI check will be skipped"
fi
python3 -m ruff check .
python3 -m pytest "$@"
