"""The house: the layer contract catches an upward import, and files keep to one job's size."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
MAX_PYTHON_LINES = 600  # issue 21: "no Python file above about 600 lines"


def _lint_imports() -> str:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(exe).exists():
        pytest.skip("lint-imports is not installed (pip install -e .[test])")
    return exe


def _contract_config() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["importlinter"]


def _fake_tree(root: Path, config: dict) -> None:
    """Empty packages named like the contract's layers, so the real contract can run on them."""
    modules = set(config["root_packages"])
    for contract in config["contracts"]:
        for layer in contract.get("layers", []):
            modules.update(m.strip() for m in layer.replace(":", "|").split("|"))
    for name in sorted(modules):
        pkg = root.joinpath(*name.split("."))
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / "__init__.py").touch()
        for parent in pkg.relative_to(root).parents:
            if str(parent) != ".":
                (root / parent / "__init__.py").touch()


def _write_config(root: Path, config: dict) -> Path:
    # JSON strings and lists are valid TOML values
    lines = ["[tool.importlinter]", f"root_packages = {json.dumps(config['root_packages'])}", ""]
    for contract in config["contracts"]:
        lines += ["[[tool.importlinter.contracts]]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in contract.items() if k != "ignore_imports"]
        lines += [""]
    path = root / "pyproject.toml"
    path.write_text("\n".join(lines))
    return path


def _run(root: Path, exe: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run(
        [exe, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_layer_contract_holds_on_the_tree():
    exe = _lint_imports()
    r = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    "low, high",
    [
        ("allscaip.model", "allscaip.workflows"),
        ("allscaip.train", "allscaip_export"),
        ("allscaip.data", "allscaip.model"),
    ],
)
def test_layer_contract_names_an_upward_import(tmp_path, low, high):
    """The project's own contract, run on a tree of empty packages with one upward import."""
    exe = _lint_imports()
    config = _contract_config()
    _fake_tree(tmp_path, config)
    _write_config(tmp_path, config)
    assert _run(tmp_path, exe).returncode == 0  # empty packages keep the contract
    culprit = tmp_path.joinpath(*low.split(".")) / "__init__.py"
    culprit.write_text(f"import {high}\n")
    r = _run(tmp_path, exe)
    assert r.returncode != 0
    assert f"{low} is not allowed to import {high}" in r.stdout


def test_no_python_file_above_600_lines():
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    too_long = {}
    for name in files.split():
        path = REPO / name
        if path.exists():
            n = len(path.read_text().splitlines())
            if n > MAX_PYTHON_LINES:
                too_long[name] = n
    assert not too_long, f"split these by job (at most {MAX_PYTHON_LINES} lines): {too_long}"
