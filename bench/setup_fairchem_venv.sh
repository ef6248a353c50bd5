#!/usr/bin/env bash
# A separate environment with fairchem's own AllScAIP (fairchem-core 2.24) for
# bench/fairchem_allscaip.py. torch stays pinned at 2.13.0 (CPU wheel) through a constraints
# file: fairchem-core 2.24 requires torch~=2.13, and an unpinned resolve would fetch CUDA torch.
#
#   bash bench/setup_fairchem_venv.sh [VENV_DIR]     # default: .fcvenv in the repository
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$here/.fcvenv}"
python3.11 -m venv "$venv"
constraints="$venv/constraints.txt"
echo "torch==2.13.0" > "$constraints"
"$venv/bin/pip" install -q -c "$constraints" torch==2.13.0
"$venv/bin/pip" install -q -c "$constraints" "fairchem-core==2.24.*"
"$venv/bin/python" -c "import torch, fairchem.core; print('torch', torch.__version__, 'fairchem-core', fairchem.core.__version__)"
echo "run: $venv/bin/python bench/fairchem_allscaip.py --help"
