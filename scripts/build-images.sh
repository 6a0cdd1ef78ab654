#!/usr/bin/env bash
# Build the local base image dstack/base:bookworm (Debian bookworm + python3,
# pip, curl, ca-certificates, git) from a debootstrapped tarball, and tag it
# python:3.9 (the spec's example) and python:3.11 (built-in providers and their
# jobs; bookworm's Python is 3.11), since no registry can be reached. Idempotent.
set -euo pipefail

IMAGE=dstack/base:bookworm
ALIASES="python:3.9 python:3.11"
SUITE=bookworm
# python-is-python3: official python images have a `python` command as well.
PACKAGES=python3,python3-pip,python-is-python3,curl,ca-certificates,git
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/dstack"
# Locally added CAs of this host (e.g. for a TLS-intercepting proxy) are
# trusted in the image too, so pip inside job containers can reach PyPI.
HOST_CA_DIR=/usr/local/share/ca-certificates

log() { printf '[build-images] %s\n' "$*" >&2; }
die() { printf '[build-images] ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=()
[ "$(id -u)" -eq 0 ] || SUDO=(sudo)
docker() { if [ ${#SUDO[@]} -eq 0 ]; then command docker "$@"; else sudo docker "$@"; fi; }

# The Debian mirror this machine already uses (first URIs entry, deb822 or
# one-line format); never hard-coded.
find_mirror() {
  local f m
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    m="$(awk 'tolower($1)=="uris:" {print $2; exit}' "$f")"
    [ -n "$m" ] && { echo "$m"; return; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    m="$(awk '$1=="deb" {for (i=2;i<=NF;i++) if ($i !~ /^\[/ && $i !~ /\]$/) {print $i; exit}}' "$f")"
    [ -n "$m" ] && { echo "$m"; return; }
  done
  return 1
}

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "$IMAGE: already present, not rebuilt"
else
  ca_hooks=()
  if compgen -G "$HOST_CA_DIR/*.crt" >/dev/null; then
    ca_hooks=(--customize-hook="sync-in $HOST_CA_DIR $HOST_CA_DIR"
              --customize-hook='chroot "$1" update-ca-certificates >/dev/null')
  fi
  # Cache key covers suite, packages and host CAs: a change forces a new tarball.
  key="$( { printf '%s %s\n' "$SUITE" "$PACKAGES"
            cat "$HOST_CA_DIR"/*.crt 2>/dev/null || true; } | sha256sum | cut -c1-12)"
  tarball="$CACHE_DIR/base-$SUITE-$key.tar"
  if [ -f "$tarball" ] && [ -s "$tarball" ]; then
    log "using cached rootfs $tarball"
  else
    command -v mmdebstrap >/dev/null || die "mmdebstrap missing (run scripts/setup.sh)"
    mirror="$(find_mirror)" || die "no Debian mirror found in /etc/apt/sources*"
    mkdir -p "$CACHE_DIR"
    log "building rootfs with mmdebstrap ($SUITE: $PACKAGES; host CAs: $([ ${#ca_hooks[@]} -gt 0 ] && echo yes || echo no)) -> $tarball"
    "${SUDO[@]}" rm -rf "$tarball.tmp"  # leftover of an interrupted run
    "${SUDO[@]}" mmdebstrap --variant=apt --format=tar --include="$PACKAGES" \
      --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
      ${ca_hooks[@]+"${ca_hooks[@]}"} \
      "$SUITE" "$tarball.tmp" "$mirror" >&2
    mv -f "$tarball.tmp" "$tarball"
    # Drop stale rootfs tarballs of older keys.
    find "$CACHE_DIR" -maxdepth 1 -name "base-$SUITE-*.tar" ! -name "${tarball##*/}" -delete
  fi
  log "importing $tarball as $IMAGE"
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$tarball" "$IMAGE" >/dev/null
  log "$IMAGE: built"
fi

for alias in $ALIASES; do
  if docker image inspect "$alias" >/dev/null 2>&1; then
    log "$alias: already present, left as is"
  else
    docker tag "$IMAGE" "$alias"
    log "$alias: tagged from $IMAGE"
  fi
done
