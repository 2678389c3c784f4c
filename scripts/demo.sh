#!/usr/bin/env bash
# Sets up blastwall and runs the demo: an "agent" tries the classic moves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m blastwall.demo
