#!/usr/bin/env bash
# The lint stage, run first by scripts/test.sh and by the pre-commit hooks: ruff over the whole
# repository ([tool.ruff] in pyproject.toml), then mypy over the package (scripts/typecheck.sh).
# Needs only the venv (scripts/setup.sh makes it); takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
status=0
echo "[lint] ruff check" >&2
.venv/bin/ruff check . || status=1
echo "[lint] mypy (scripts/typecheck.sh)" >&2
bash scripts/typecheck.sh || status=1
exit $status
