"""A crash keeps the work (issue 26): ``kill -9`` of ``allscaip-train`` and of ``allscaip liquid``
at a random point, then ``--resume``, gives what an uninterrupted run gives (training: weights
bitwise; liquid: the completed segments' files identical). Real SIGKILLs of subprocesses."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List

import ase.io
import pytest
import torch
import yaml
from test_liquid import SHORT, tiny_model  # noqa: F401 (a fixture)
from test_train import emt_frames, make_cfg

from allscaip.checkpoint import CheckpointError, load_checkpoint

BIN = Path(sys.executable).parent
RUN_TIMEOUT_S = 600  # every subprocess
POLL_S = 0.05


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(argv: List[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc


def _kill_when(argv: List[str], cwd: Path, ready: Callable[[], bool], what: str) -> None:
    """Start ``argv`` and SIGKILL it as soon as ``ready()`` (polled); fail if it ends first."""
    proc = subprocess.Popen(argv, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"the run ended (exit {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {RUN_TIMEOUT_S} s")
            time.sleep(POLL_S)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}, not killed"


def _step_of(path: Path) -> int:
    """The optimizer step of a checkpoint, -1 while there is none (the rename is atomic)."""
    try:
        return int(load_checkpoint(path)["step"]) if path.exists() else -1
    except (CheckpointError, FileNotFoundError, OSError):
        return -1


def test_allscaip_train_kill_9_then_resume_gives_the_same_weights(tmp_path):
    data = {"train": str(tmp_path / "train.extxyz"), "val": str(tmp_path / "val.extxyz")}
    ase.io.write(data["train"], emt_frames(24, 0))
    ase.io.write(data["val"], emt_frames(3, 1))
    configs = {}
    for name in ("full", "killed"):
        raw = make_cfg(data, tmp_path / name, optim={"epochs": 3}, run={"checkpoint_every_steps": 1})
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(raw))
    train = str(BIN / "allscaip-train")
    _run([train, str(configs["full"])], tmp_path)
    full = load_checkpoint(tmp_path / "full" / "last.ckpt")
    total = int(full["step"])
    assert total >= 20

    target = random.Random().randint(2, total - 2)  # a random point, past the start, before the end
    last = tmp_path / "killed" / "last.ckpt"
    _kill_when([train, str(configs["killed"])], tmp_path, lambda: _step_of(last) >= target, f"step {target}")
    killed_at = _step_of(last)
    assert 0 < killed_at < total, (target, killed_at)
    _run([train, str(configs["killed"]), "--resume"], tmp_path)

    resumed = load_checkpoint(last)
    assert resumed["step"] == total and resumed["epoch"] == full["epoch"], (target, killed_at)
    for key in ("model_state", "ema_state", "optimizer_state"):
        a, b = full[key], resumed[key]
        if key == "optimizer_state":
            a, b = a["state"], b["state"]
            assert a.keys() == b.keys()
            assert all(torch.equal(a[p][k], b[p][k]) for p in a for k in a[p] if torch.is_tensor(a[p][k]))
        else:
            assert all(torch.equal(a[k], b[k]) for k in a), (key, target, killed_at)
    assert [r["val_force_mae_meV_A"] for r in resumed["metrics"]] == [r["val_force_mae_meV_A"] for r in full["metrics"]]


@pytest.mark.openmm
def test_allscaip_liquid_kill_9_then_resume_gives_the_same_segments(tiny_model, tmp_path):  # noqa: F811
    import json

    pytest.importorskip("openmm")
    argv = [str(BIN / "allscaip"), "liquid", "--model", str(tiny_model), "--molecule", "water"]
    argv += ["--n-molecules", "8", "--engine", "openmm", "--minimise-iterations", "20", *SHORT]
    _run(argv + ["--out", str(tmp_path / "full")], tmp_path)
    done = json.loads((tmp_path / "full" / "model" / "progress.json").read_text())["completed"]
    tasks = len(done)
    assert tasks >= 6

    progress = tmp_path / "killed" / "model" / "progress.json"

    def completed() -> int:
        try:
            return len(json.loads(progress.read_text())["completed"])
        except (OSError, ValueError, KeyError):
            return 0

    target = random.Random().randint(1, tasks - 1)
    _kill_when(argv + ["--out", str(tmp_path / "killed")], tmp_path, lambda: completed() >= target, f"task {target}")
    killed_at = completed()
    assert 0 < killed_at < tasks, (target, killed_at)
    _run(argv + ["--out", str(tmp_path / "killed"), "--resume"], tmp_path)

    again = json.loads(progress.read_text())["completed"]
    assert again.keys() == done.keys(), (target, killed_at)
    for phase in ("liquid", "gas"):
        for csv in sorted((tmp_path / "full" / "model" / phase).glob("*.csv")):
            twin = tmp_path / "killed" / "model" / phase / csv.name
            assert twin.read_bytes() == csv.read_bytes(), (csv.name, target, killed_at)
