#!/usr/bin/env bash
# The GPU check (issue 23): on a machine with a CUDA GPU and a CUDA build of torch 2.13.0 in .venv,
# build the LAMMPS plugin, run the GPU-marked tests (tests/test_gpu.py: eager CUDA vs CPU, float32
# default, exports for CUDA, pair_style allscaip device cuda on 1 and 2 ranks) and print the speed
# table (bench/gpu_speed.py). Until it has run, docs/benchmarks.md says "not run".
#
#   bash bench/gpu_check.sh
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
if [ ! -x .venv/bin/python ]; then
  echo "no .venv: run bash scripts/setup.sh first (then install a CUDA build of torch==2.13.0 into .venv)" >&2
  exit 2
fi
source .venv/bin/activate
python - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA GPU: install a CUDA build of torch==2.13.0 into .venv "
             "and run on a machine with a GPU")
print(f"torch {torch.__version__}, {torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name()}")
PY
cmake --build build
OMP_NUM_THREADS=1 python -m pytest -q -m gpu tests/test_gpu.py
(cd bench && python gpu_speed.py "$@")
