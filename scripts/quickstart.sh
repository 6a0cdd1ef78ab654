#!/usr/bin/env bash
# Set up dstack on this machine and run the example pipeline `evaluate` on the embedded
# defaults: RabbitMQ on 127.0.0.1, storage in a folder under $DSTACK_HOME (~/.dstack).
# Starts `dstack up` (a scheduler and a worker) in the background unless a scheduler
# already answers, and stops it again at the end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
DSTACK="$ROOT/.venv/bin/dstack"
export DSTACK_HOME="${DSTACK_HOME:-$HOME/.dstack}"
mkdir -p "$DSTACK_HOME"

started=""
if ! "$DSTACK" status -n 1 >/dev/null 2>&1; then
  echo "[quickstart] starting \`dstack up\` (log: $DSTACK_HOME/up.log)" >&2
  "$DSTACK" up >>"$DSTACK_HOME/up.log" 2>&1 &
  started=$!
  trap 'kill -TERM "$started" 2>/dev/null; wait "$started" 2>/dev/null || true' EXIT
  for _ in $(seq 1 60); do
    "$DSTACK" status -n 1 >/dev/null 2>&1 && break
    sleep 1
  done
fi

cd "$ROOT/examples/pipeline"
echo "[quickstart] dstack run evaluate (prepare -> train -> evaluate)" >&2
output="$("$DSTACK" run evaluate | tee /dev/stderr)"
run_name="$(head -n 1 <<<"$output")"
echo "[quickstart] artifacts of $run_name:" >&2
"$DSTACK" artifacts list "$run_name"
