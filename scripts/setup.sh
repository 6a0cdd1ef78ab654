#!/usr/bin/env bash
# Prepare a (possibly fresh) Debian machine for dstack: system packages, the
# Docker engine, RabbitMQ, the project venv and the local base images.
# Idempotent: every step is skipped when its result is already there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKERD_LOG=/var/log/dstack-dockerd.log
RABBIT_LOG=/var/log/dstack-rabbitmq.log
DOCKER_WAIT_S=${DSTACK_DOCKER_WAIT_S:-60}
RABBIT_WAIT_S=${DSTACK_RABBIT_WAIT_S:-120}

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# Run as root, via sudo when needed.
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "not root and sudo is not available"
  SUDO=(sudo)
fi
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

# --- 1. system packages ------------------------------------------------------
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server)
command -v git >/dev/null || missing+=(git)
# a container registry (tests pull from one), htpasswd for its authentication, compose for deploy/
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v htpasswd >/dev/null || missing+=(apache2-utils)
command -v docker-compose >/dev/null || missing+=(docker-compose)
dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q 'install ok installed' \
  || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing system packages: ${missing[*]}"
  "${SUDO[@]}" apt-get update -q >&2
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
else
  log "system packages: all present"
fi

# --- 2. Docker engine --------------------------------------------------------
docker_up() { "${SUDO[@]}" docker info >/dev/null 2>&1; }
if docker_up; then
  log "docker engine: running"
else
  log "docker engine: not answering, starting dockerd (log: $DOCKERD_LOG)"
  # Host networking only: no bridge, no iptables/NAT.
  # Detached from this shell's stdio so callers (CI) do not wait on it.
  "${SUDO[@]}" sh -c 'exec setsid nohup dockerd --bridge=none --iptables=false \
    --ip-masq=false </dev/null >>"$1" 2>&1' sh "$DOCKERD_LOG" &
  for ((i = 0; i < DOCKER_WAIT_S; i++)); do
    docker_up && break
    sleep 1
  done
  docker_up || die "dockerd did not answer within ${DOCKER_WAIT_S}s; see $DOCKERD_LOG"
  log "docker engine: up after ~${i}s"
fi

# --- 3. RabbitMQ ---------------------------------------------------------------
rabbit_up() { timeout 2 bash -c '</dev/tcp/127.0.0.1/5672' 2>/dev/null; }
if rabbit_up; then
  log "rabbitmq: answering on 127.0.0.1:5672"
else
  log "rabbitmq: port 5672 closed, starting rabbitmq-server (log: $RABBIT_LOG)"
  # May fail harmlessly when a node is already starting; the wait decides.
  "${SUDO[@]}" sh -c 'rabbitmq-server -detached </dev/null >>"$1" 2>&1' sh "$RABBIT_LOG" \
    || log "rabbitmq-server -detached returned $? (continuing to wait)"
  for ((i = 0; i < RABBIT_WAIT_S; i++)); do
    rabbit_up && break
    sleep 1
  done
  rabbit_up || die "rabbitmq did not open 127.0.0.1:5672 within ${RABBIT_WAIT_S}s; see $RABBIT_LOG and /var/log/rabbitmq/"
  log "rabbitmq: up after ~${i}s"
fi
# The management API (HTTP, port 15672): `dstack users` makes broker accounts through it, and the tests check
# them. Enabling it is idempotent and works on a running node; the plugin file keeps it across restarts.
manage_up() { timeout 2 bash -c '</dev/tcp/127.0.0.1/15672' 2>/dev/null; }
if manage_up; then
  log "rabbitmq management API: answering on port 15672"
else
  log "rabbitmq: enabling the management plugin (rabbitmq_management)"
  "${SUDO[@]}" rabbitmq-plugins -q enable rabbitmq_management >&2
  for ((i = 0; i < RABBIT_WAIT_S; i++)); do
    manage_up && break
    sleep 1
  done
  manage_up || die "the management API did not open port 15672 within ${RABBIT_WAIT_S}s; see /var/log/rabbitmq/"
  log "rabbitmq management API: up after ~${i}s"
fi

# --- 4. project venv -------------------------------------------------------------
VENV="$ROOT/.venv"
STAMP="$VENV/.dstack-pyproject.sha256"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv at $VENV"
  python3 -m venv "$VENV"
fi
want_sum="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" = "$want_sum" ]; then
  log "venv: up to date with pyproject.toml"
else
  log "venv: installing dstack (pip install -e '.[test]')"
  (cd "$ROOT" && "$VENV/bin/python" -m pip install --disable-pip-version-check -e '.[test]') >&2
  echo "$want_sum" >"$STAMP"
  log "venv: installed"
fi

# --- 5. local images ---------------------------------------------------------------
bash "$ROOT/scripts/build-images.sh"
log "done"
