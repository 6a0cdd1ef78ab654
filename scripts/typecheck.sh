#!/usr/bin/env bash
# mypy over the installed package: dstack with dstack.sdk, dstack.scheduler and dstack.workers.
# Those three live in sdk/, scheduler/ and workers/ ([tool.setuptools.package-dir] in pyproject.toml),
# a mapping mypy cannot follow (nor the editable install's import hook), so this lays the package out
# as it installs, as symbolic links under build/typecheck/dstack/, runs mypy with [tool.mypy]
# (mypy_path = build/typecheck, packages = dstack) and prints the repository's own paths.
# Extra arguments go to mypy.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TREE=build/typecheck
PY="${PYTHON:-.venv/bin/python}"

rm -rf "$TREE/dstack"
mkdir -p "$TREE/dstack"
for entry in dstack/*; do
  [ "$(basename "$entry")" = __pycache__ ] || ln -s "$ROOT/$entry" "$TREE/dstack/"
done
# Each line of [tool.setuptools.package-dir], e.g. "dstack.sdk" = "sdk": a link dstack/sdk -> sdk/,
# and an expression that prints mypy's build/typecheck/dstack/sdk/x.py as sdk/x.py.
unmap=()
while read -r name folder; do
  ln -s "$ROOT/$folder" "$TREE/${name//.//}"
  unmap+=(-e "s#^\\(${ROOT}/\\)\\?${TREE}/${name//.//}/#${folder}/#")
done < <(sed -n '/^\[tool\.setuptools\.package-dir\]/,/^\[/p' pyproject.toml \
           | sed -n 's/^"\([A-Za-z_.]*\)" *= *"\([^"]*\)".*/\1 \2/p')
unmap+=(-e "s#^\\(${ROOT}/\\)\\?${TREE}/dstack/#dstack/#")

status=0
"$PY" -m mypy "$@" >"$TREE/mypy.out" 2>&1 || status=$?
sed "${unmap[@]}" "$TREE/mypy.out"
exit $status
