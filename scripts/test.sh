#!/usr/bin/env bash
# Second command: set up and run the default test suite (tiny models; real-model tests are opt-in).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q "$@"
