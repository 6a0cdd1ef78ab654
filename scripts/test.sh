#!/usr/bin/env bash
# Prepare the machine (scripts/setup.sh), then run pytest from the repo root.
# Extra arguments go to pytest; default: -q -ra.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
[ $# -gt 0 ] || set -- -q -ra
echo "[test] .venv/bin/python -m pytest $*" >&2
exec .venv/bin/python -m pytest "$@"
