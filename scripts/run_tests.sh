#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the test suite: python -m pytest -q tests [extra args]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

bash scripts/setup.sh || { echo "run_tests.sh: set-up failed" >&2; exit 1; }

set +u  # the venv's activate script is not written for set -u
# shellcheck disable=SC1091
source .venv/bin/activate
set -u

echo "[run_tests] python -m pytest -q tests $*"
rc=0
python -m pytest -q tests "$@" || rc=$?
case "$rc" in
    0) echo "[run_tests] tests passed" ;;
    5) echo "run_tests.sh: FAILED: pytest collected no tests (exit 5)" >&2; exit 5 ;;
    *) echo "run_tests.sh: FAILED: pytest exit code $rc" >&2; exit "$rc" ;;
esac
