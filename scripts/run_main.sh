#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the main job: python -m allscaip.workflows.main [args]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

bash scripts/setup.sh || { echo "run_main.sh: set-up failed" >&2; exit 1; }

set +u  # the venv's activate script is not written for set -u
# shellcheck disable=SC1091
source .venv/bin/activate
set -u

rc=0
python - <<'PY' || rc=$?
import importlib.util, sys
try:
    found = importlib.util.find_spec("allscaip.workflows.main") is not None
except ModuleNotFoundError as e:
    if e.name not in ("allscaip.workflows", "allscaip.workflows.main"):
        raise  # a real import error inside the package: fail loudly
    found = False
sys.exit(0 if found else 3)
PY
case "$rc" in
    0)  echo "[run_main] python -m allscaip.workflows.main $*"
        exec python -m allscaip.workflows.main "$@" ;;
    3)  echo "[run_main] the main job (allscaip.workflows.main) is not implemented yet; nothing to run"
        exit 0 ;;
    *)  echo "run_main.sh: FAILED: could not look up allscaip.workflows.main (exit $rc)" >&2
        exit 1 ;;
esac
