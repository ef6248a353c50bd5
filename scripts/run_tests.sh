#!/usr/bin/env bash
# Set up (scripts/setup.sh), check the house (ruff lint and format, import-linter layer contracts),
# then run the test suite: python -m pytest -q tests [extra args]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

bash scripts/setup.sh || { echo "run_tests.sh: set-up failed" >&2; exit 1; }

set +u  # the venv's activate script is not written for set -u
# shellcheck disable=SC1091
source .venv/bin/activate
set -u

# The house: lint, format and the layer contracts (pyproject.toml, docs/architecture.md).
# Each names the file and line, or the import, that breaks it.
echo "[run_tests] ruff check . && ruff format --check . && lint-imports"
ruff check . || { echo "run_tests.sh: FAILED: ruff lint (fix the lines above; 'ruff check --fix .' fixes many)" >&2; exit 1; }
ruff format --check . || { echo "run_tests.sh: FAILED: ruff format (run 'ruff format .')" >&2; exit 1; }
lint-imports --no-cache || { echo "run_tests.sh: FAILED: an import breaks the layer contracts above (docs/architecture.md)" >&2; exit 1; }

echo "[run_tests] python -m pytest -q --durations=25 tests $*"
rc=0
python -m pytest -q --durations=25 tests "$@" || rc=$?
case "$rc" in
    0) echo "[run_tests] tests passed" ;;
    5) echo "run_tests.sh: FAILED: pytest collected no tests (exit 5)" >&2; exit 5 ;;
    *) echo "run_tests.sh: FAILED: pytest exit code $rc" >&2; exit "$rc" ;;
esac
