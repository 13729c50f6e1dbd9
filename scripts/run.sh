#!/usr/bin/env bash
# First command: set up on a fresh machine and run the main job on the default model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/memlora setup
.venv/bin/memlora demo --out out/demo "$@"
