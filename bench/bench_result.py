"""What every benchmark's JSON starts with, and how it is written (one copy for the bench scripts)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Optional, Sequence


def run_header(script: str, argv: Optional[Sequence[str]]) -> dict:
    """The command that produced a result (``script`` as typed, e.g. ``bench/floor.py``), the date
    and time in UTC, the machine and its one-minute load when the result was written."""
    args = list(argv) if argv is not None else sys.argv[1:]
    return {
        "command": f"python {script} " + " ".join(args),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.node()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "load_1m": os.getloadavg()[0],
    }


def write_result(path: Path, result: dict) -> None:
    """Write ``result`` as indented JSON to ``path`` (folders created) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
