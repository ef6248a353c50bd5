"""The fairchem AllScAIP fixture (tests/fixtures/fairchem, bench/fairchem_fixture.py) and the reader of
fairchem inference checkpoints (allscaip.checkpoint_fairchem), without fairchem installed.

The last test recomputes the fixture with fairchem itself when a fairchem Python is at hand
(``FAIRCHEM_PYTHON`` or ``.fcvenv/bin/python`` from bench/setup_fairchem_venv.sh); it is skipped otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from allscaip.checkpoint_fairchem import (
    FAIRCHEM_CHECKPOINT_CLASS,
    FairchemCheckpointError,
    is_fairchem_checkpoint,
    read_fairchem_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "fairchem"
KINDS = ("conserving", "direct")
MAX_FIXTURE_BYTES = 6 * 2**20  # "a few MB at most"
HIDDEN, LAYERS = 64, 2  # bench/fairchem_fixture.py defaults
# live recomputation on the same machine repeats fairchem's float32 numbers; the tolerances allow
# another thread count or CPU (summation order) only
INTERMEDIATES = "intermediates_conserving.pt"
LIVE_ENERGY_RTOL = 1e-6
LIVE_FORCE_ATOL = 1e-5  # eV/Å


def reference() -> dict:
    return json.loads((FIXTURE / "reference.json").read_text())


def checkpoint_path(kind: str) -> Path:
    return FIXTURE / f"allscaip_md_{kind}.pt"


def test_fixture_files_exist_and_are_small():
    files = [checkpoint_path(k) for k in KINDS] + [FIXTURE / n for n in ("reference.json", "README.md", INTERMEDIATES)]
    for f in files:
        assert f.is_file(), f"missing {f}: run bench/fairchem_fixture.py (see tests/fixtures/fairchem/README.md)"
    assert sum(f.stat().st_size for f in files) < MAX_FIXTURE_BYTES


def test_reference_numbers_cover_every_structure():
    ref = reference()
    assert set(ref["models"]) == set(KINDS)
    assert {"ethanol", "benzene_cation_doublet", "water8_periodic"} <= set(ref["structures"])
    charged = ref["structures"]["benzene_cation_doublet"]
    assert (charged["charge"], charged["spin"]) == (1, 2)
    assert all(ref["structures"]["water8_periodic"]["pbc"])
    for kind, model in ref["models"].items():
        for name, s in ref["structures"].items():
            row = model["results"][name]
            forces = np.asarray(row["forces"])
            assert forces.shape == (len(s["numbers"]), 3)
            assert np.isfinite(forces).all() and np.isfinite(row["energy"])
            assert np.abs(forces).max() > 0.1  # random weights give real forces, not zeros
            if kind == "conserving":
                # -dE/dx of a translation-invariant energy sums to zero
                np.testing.assert_allclose(forces.sum(0), 0.0, atol=1e-3)
                assert np.asarray(row["stress"]).shape == (3, 3)


@pytest.mark.parametrize("kind", KINDS)
def test_reader_reads_fixture_as_plain_data(kind):
    path = checkpoint_path(kind)
    assert is_fairchem_checkpoint(path)
    ckpt = read_fairchem_checkpoint(path)
    bb = ckpt.backbone
    assert ckpt.direct_forces is (kind == "direct")
    # the published md_NeNo switches
    assert (bb["use_freq_mask"], bb["use_sincx_mask"], bb["use_node_path"]) == (False, False, True)
    assert (bb["hidden_size"], bb["num_layers"]) == (HIDDEN, LAYERS)
    ema, raw = ckpt.weights(use_ema=True), ckpt.weights(use_ema=False)
    assert set(ema) == set(raw)
    assert ema["backbone.input_block.atomic_embedding.weight"].shape == (110, HIDDEN)
    assert ema["backbone.input_block.charge_embedding.rand_emb.weight"].shape == (201, HIDDEN)
    assert ema["backbone.input_block.edge_attr_linear.0.weight"].shape == (HIDDEN, 512 + 6**2)
    assert not any(k.startswith("backbone.transformer_blocks.2.") for k in ema)
    # the EMA weights (what fairchem evaluates) differ from the raw ones: a converter must pick EMA
    key = "backbone.transformer_blocks.1.node_attention.attn_in_proj_q.weight"
    assert (ema[key] - raw[key]).abs().max() > 1e-3
    assert ckpt.datasets() == ["omol"]
    refs = ckpt.element_references("omol")
    assert refs[8] < refs[6] < refs[1] < 0  # O, C, H references of the fixture
    assert ckpt.normalizer("omol", "energy")[1] == pytest.approx(1.433569)


def test_intermediates_show_fairchem_graph_layout():
    """fairchem's padded rows start with the atom's self loop (bias 0); the destination map is the
    inverse of the source map (docs/fairchem.md, items 1 and 6)."""
    inter = torch.load(FIXTURE / INTERMEDIATES, weights_only=True)
    ref = reference()
    for name, rec in inter.items():
        n = len(ref["structures"][name]["numbers"])
        src, dst = rec["neighbor_index"]
        assert torch.equal(src[:, 0], torch.arange(n)) and torch.equal(dst[:, 0], torch.arange(n))
        assert torch.all(rec["src_neighbor_attn_mask"][:, 0] == 0)
        real = torch.isfinite(rec["src_neighbor_attn_mask"])
        # the soft kNN prunes to about k + 1 slots (self loop included; near-equal distances share
        # rank, so a row may hold a few more): far fewer than the ~90 atoms within 6 Å in the water box
        assert real.sum(1).max() <= 2 * ref["settings"]["knn_k"]
        rows, cols = real.nonzero(as_tuple=True)
        to_dst = rec["src_index"][:, rows, cols]  # source slot -> destination slot
        back = rec["dst_index"][:, to_dst[0], to_dst[1]]
        assert torch.equal(back, torch.stack([rows, cols]))
        assert len(rec["layer_tokens"]) == LAYERS and rec["input_tokens"].shape == (n, real.shape[1], HIDDEN)


def test_unknown_task_lists_the_tasks_in_the_file():
    ckpt = read_fairchem_checkpoint(checkpoint_path("conserving"))
    with pytest.raises(FairchemCheckpointError, match=r"no task 'omat'.*\['omol'\]"):
        ckpt.element_references("omat")


def _save_as_fairchem(monkeypatch, path: Path, **fields) -> None:
    """Write ``fields`` as a pickled fairchem MLIPInferenceCheckpoint, with no fairchem installed:
    a dataclass registered under fairchem's module path stands in for the real class."""
    module_name, _, class_name = FAIRCHEM_CHECKPOINT_CLASS.rpartition(".")
    parts = module_name.split(".")
    for i in range(1, len(parts) + 1):
        monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    cls = dataclasses.make_dataclass(class_name, list(fields))
    cls.__module__, cls.__qualname__ = module_name, class_name
    setattr(sys.modules[module_name], class_name, cls)
    torch.save(cls(**fields), path)


def _fixture_fields(kind: str = "conserving") -> dict:
    ckpt = read_fairchem_checkpoint(checkpoint_path(kind))
    return {
        "model_config": ckpt.model_config,
        "model_state_dict": ckpt.model_state_dict,
        "ema_state_dict": ckpt.ema_state_dict,
        "tasks_config": ckpt.tasks_config,
    }


@pytest.mark.parametrize(
    "backbone, family",
    [
        ("fairchem.core.models.uma.escn_moe.eSCNMDMoeBackbone", "UMA"),
        ("fairchem.core.models.uma.escn_md.eSCNMDBackbone", "eSEN"),
    ],
)
def test_other_fairchem_family_is_refused_naming_what_is_supported(monkeypatch, tmp_path, backbone, family):
    fields = _fixture_fields()
    fields["model_config"] = dict(fields["model_config"], backbone={"model": backbone, "sphere_channels": 128})
    path = tmp_path / "other.pt"
    _save_as_fairchem(monkeypatch, path, **fields)
    assert is_fairchem_checkpoint(path)
    with pytest.raises(
        FairchemCheckpointError, match=rf"fairchem {family}.*{backbone}.*supports only.*AllScAIPBackbone"
    ):
        read_fairchem_checkpoint(path)


def test_missing_field_is_named(monkeypatch, tmp_path):
    fields = _fixture_fields()
    del fields["ema_state_dict"]
    path = tmp_path / "no_ema.pt"
    _save_as_fairchem(monkeypatch, path, **fields)
    with pytest.raises(FairchemCheckpointError, match="lacks 'ema_state_dict'"):
        read_fairchem_checkpoint(path)


def test_missing_state_key_is_named(monkeypatch, tmp_path):
    fields = _fixture_fields("direct")
    key = "module.backbone.transformer_blocks.1.edge_ffn.ffn.0.0.weight"
    fields["ema_state_dict"] = {k: v for k, v in fields["ema_state_dict"].items() if k != key}
    path = tmp_path / "truncated.pt"
    _save_as_fairchem(monkeypatch, path, **fields)
    with pytest.raises(
        FairchemCheckpointError, match=r"ema_state_dict lacks key 'backbone\.transformer_blocks\.1\.edge_ffn"
    ):
        read_fairchem_checkpoint(path)


def test_missing_backbone_setting_is_named(monkeypatch, tmp_path):
    fields = _fixture_fields()
    fields["model_config"] = dict(fields["model_config"])
    fields["model_config"]["backbone"] = {k: v for k, v in fields["model_config"]["backbone"].items() if k != "knn_k"}
    path = tmp_path / "no_knn.pt"
    _save_as_fairchem(monkeypatch, path, **fields)
    with pytest.raises(FairchemCheckpointError, match="lacks 'knn_k'"):
        read_fairchem_checkpoint(path)


def test_foreign_objects_in_the_pickle_are_not_run(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"note": FAIRCHEM_CHECKPOINT_CLASS, "payload": argparse.Namespace(a=1)}, path)
    assert is_fairchem_checkpoint(path)  # the name occurs in the pickle ...
    with pytest.raises(FairchemCheckpointError, match="argparse.Namespace, which this reader does not unpickle"):
        read_fairchem_checkpoint(path)


def test_not_a_fairchem_file(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"model_state": {}}, path)
    assert not is_fairchem_checkpoint(path)
    with pytest.raises(FairchemCheckpointError, match="not a fairchem inference checkpoint; supported"):
        read_fairchem_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_fairchem_checkpoint(tmp_path / "absent.pt")


def _fairchem_python() -> str | None:
    for candidate in (
        os.environ.get("FAIRCHEM_PYTHON"),
        str(REPO / ".fcvenv/bin/python"),
        "/tmp/fc/.fcvenv/bin/python",
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def test_fixture_recomputed_live_with_fairchem(tmp_path):
    python = _fairchem_python()
    if python is None:
        pytest.skip("no fairchem environment: set FAIRCHEM_PYTHON or run bench/setup_fairchem_venv.sh")
    settings = reference()["settings"]
    cmd = [python, str(REPO / "bench/fairchem_fixture.py"), "--out", str(tmp_path)]
    for key in ("hidden", "layers", "heads", "cutoff", "knn_k", "seed", "dtype", "threads"):
        cmd += [f"--{key.replace('_', '-')}", str(settings[key])]
    env = dict(os.environ, OMP_NUM_THREADS=str(settings["threads"]))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for kind in KINDS:  # seeded: the same weights
        new, old = (
            read_fairchem_checkpoint(tmp_path / f"allscaip_md_{kind}.pt"),
            read_fairchem_checkpoint(checkpoint_path(kind)),
        )
        for key, value in old.weights().items():
            assert torch.equal(new.weights()[key], value), key
    live = json.loads((tmp_path / "reference.json").read_text())
    inter, live_inter = torch.load(FIXTURE / INTERMEDIATES), torch.load(tmp_path / INTERMEDIATES)
    for name, rec in inter.items():
        for layer, tokens in enumerate(rec["layer_tokens"]):
            torch.testing.assert_close(live_inter[name]["layer_tokens"][layer], tokens, rtol=1e-5, atol=1e-5)
    for kind in KINDS:
        for name, row in reference()["models"][kind]["results"].items():
            got = live["models"][kind]["results"][name]
            assert got["energy"] == pytest.approx(row["energy"], rel=LIVE_ENERGY_RTOL)
            np.testing.assert_allclose(got["forces"], row["forces"], atol=LIVE_FORCE_ATOL)
            if "stress" in row:
                np.testing.assert_allclose(got["stress"], row["stress"], atol=LIVE_FORCE_ATOL)
