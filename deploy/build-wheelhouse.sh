#!/usr/bin/env bash
# Build deploy/wheelhouse/: the wheels the dstack image installs (dstack's dependencies, and setuptools
# to build dstack itself from the source), so that `docker build -f deploy/Dockerfile` needs no package
# index: the Dockerfile installs with `pip install --no-index --find-links`.
#
# The wheels come from this machine's pip, with the index (or mirror, or wheel folder) it is configured
# with; nothing inside the build reaches the network. In a closed network, run this where an index is
# reachable and carry deploy/wheelhouse/ with the repository.
#
#   deploy/build-wheelhouse.sh             # does nothing when the folder already matches pyproject.toml
#   deploy/build-wheelhouse.sh --force     # builds it again (e.g. for newer releases of the dependencies)
#   PYTHON=python3.11 deploy/build-wheelhouse.sh
#
# Compiled wheels (PyYAML, msgpack, ...) are for the Python that runs this script, so its version must be
# the image's: 3.11 for python:3.11-slim and for dstack/base:bookworm. The folder records it
# (python-version) and the Dockerfile refuses a base image whose Python differs. Same for the machine's
# architecture (x86_64, aarch64): build the wheelhouse on the kind of machine the image is for.
#
# Files: *.whl, requirements.txt (the pinned dependencies, installed in their own image layer, so that a
# change of dstack's source does not install them again) and python-version. The dstack wheel that
# `pip wheel .` makes is not kept: the image always builds dstack from the source it copies.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="$ROOT/deploy/wheelhouse"
PYTHON="${PYTHON:-python3}"
# setuptools' build_meta asks for no `wheel` package from 70.1 on; pyproject.toml asks for >=68.
BUILD_REQUIREMENTS=("setuptools>=70.1")

log() { printf '[build-wheelhouse] %s\n' "$*" >&2; }
die() { printf '[build-wheelhouse] ERROR: %s\n' "$*" >&2; exit 1; }

force=0
case "${1:-}" in
  "") ;;
  --force) force=1 ;;
  *) die "usage: $0 [--force]" ;;
esac

command -v "$PYTHON" >/dev/null || die "no $PYTHON (set PYTHON to a Python of the image's version)"
version="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
# What the folder is made from: a change of any of these builds it again.
key="$( { echo "python $version $(uname -m)"; echo "${BUILD_REQUIREMENTS[*]}"
          cat "$ROOT/pyproject.toml" "${BASH_SOURCE[0]}"; } | sha256sum | cut -d' ' -f1)"

if [ "$force" -eq 0 ] && [ "$(cat "$TARGET/.key" 2>/dev/null || true)" = "$key" ]; then
  log "$TARGET: up to date (Python $version); --force builds it again"
  exit 0
fi

# Built beside the target and moved into place when complete: an interrupted run leaves no partial folder.
building="$(mktemp -d "$ROOT/deploy/.wheelhouse.XXXXXX")"
trap 'rm -rf "$building"' EXIT
log "building wheels of dstack's dependencies for Python $version with $("$PYTHON" -m pip --version | cut -d' ' -f1-2)"
# From a copy of what the package is made of: building in the checkout would leave build/ behind.
source="$building/.source"
mkdir "$source"
cp -R "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/dstack" "$ROOT/sdk" "$ROOT/scheduler" "$ROOT/workers" "$source/"
"$PYTHON" -m pip wheel --disable-pip-version-check -q -w "$building" "$source" "${BUILD_REQUIREMENTS[@]}" >&2
rm -rf "$source" "$building"/dstack-*.whl
"$PYTHON" - "$building" <<'EOF'
import pathlib
import sys

folder = pathlib.Path(sys.argv[1])
pins = []
for wheel in sorted(folder.glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    if name.lower() not in ("dstack", "setuptools"):  # setuptools only builds dstack
        pins.append(f"{name}=={version}\n")
(folder / "requirements.txt").write_text("# dstack's dependencies (deploy/build-wheelhouse.sh)\n" + "".join(pins))
EOF
echo "$version" >"$building/python-version"
echo "$key" >"$building/.key"
chmod 0755 "$building"
rm -rf "$TARGET"
mv "$building" "$TARGET"
trap - EXIT
log "$TARGET: $(ls "$TARGET"/*.whl | wc -l) wheels for Python $version"
