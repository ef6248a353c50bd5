"""allscaip/heap.py: freed tensor memory stays resident between force calls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# what the calculator did to malloc (the speed effect is measured by bench/heap_trim.py: with
# an AOTInductor package glibc's trimming refaults ~29,000 pages per MD step; an eager model's
# allocations stop being trimmed after about ten calls, so a page-fault count is no test here)
_PROBE = """
import json, sys
from allscaip.calculator import AllScAIPCalculator
calc = AllScAIPCalculator(sys.argv[1], dtype="float32")
again = AllScAIPCalculator(sys.argv[1], dtype="float32")
print(json.dumps({"note": calc.heap_note, "second": again.heap_note}))
"""


def _probe(**env: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(REPO / "examples/water/model.ckpt")],
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_calculator_applies_malloc_settings_once():
    tuned, off = _probe(), _probe(ALLSCAIP_MALLOC_TUNING="0")
    assert tuned["note"].startswith("glibc malloc keeps up to 1 GiB"), tuned
    assert tuned["second"] == "already applied in this process", tuned
    assert off["note"] == "off (ALLSCAIP_MALLOC_TUNING=0)", off


def test_user_malloc_environment_wins():
    probe = _probe(MALLOC_TRIM_THRESHOLD_="131072")
    assert probe["note"] == "left to the MALLOC_*_THRESHOLD_ environment variables", probe
