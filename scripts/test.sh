#!/usr/bin/env bash
# Install Planbro with its test dependencies and run every check: lint, then the test suite.
# The MongoDB suite runs when MONGODB_URI points at a real server (docker compose up mongo),
# and is skipped with the reason printed otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
python3 -m ruff check .
python3 -m pytest "$@"
