#!/usr/bin/env bash
# Prepare the machine (scripts/setup.sh), run the lint stage (scripts/lint.sh: ruff and mypy, seconds),
# then pytest from the repo root in two stages: the fast suite (-m "not integration": pure logic, no
# service) and the integration suite (-m integration: RabbitMQ, Docker, an S3 server).
# With arguments, the two stages give way to one pytest run with those arguments, e.g.
#   ./scripts/test.sh tests/unit -x      ./scripts/test.sh -m integration -k placement
# Any stage that fails stops the script with its exit code; pytest's 5 (no test collected) is a failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"

start=$SECONDS
bash scripts/lint.sh || { echo "[test] lint failed (scripts/lint.sh); no test was run" >&2; exit 1; }
echo "[test] lint passed in $((SECONDS - start))s" >&2

run_pytest() {
  echo "[test] .venv/bin/python -m pytest $*" >&2
  local status=0
  .venv/bin/python -m pytest "$@" || status=$?
  if [ "$status" -eq 5 ]; then
    echo "[test] pytest collected no test (exit 5): a failure" >&2
  fi
  return "$status"
}

if [ $# -gt 0 ]; then
  run_pytest "$@"
else
  run_pytest -q -ra -m "not integration"
  run_pytest -q -ra -m integration
fi
