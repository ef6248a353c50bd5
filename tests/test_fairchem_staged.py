"""The staged (domain-decomposition) evaluation of an exported fairchem AllScAIP
(allscaip.model.fairchem_staged through the export's ``stages``), run by its executable specification
export/fairchem_dd_reference.py on 1 to 4 emulated ranks (slabs along a), against the whole-system
evaluation of the same model in float64 (docs/fairchem.md, *Multi-rank evaluation*).

System: the fixture's periodic 8-water box repeated 3x2x2 (288 atoms, 18.6 x 12.4 x 12.4 Å), rattled
by 0.05 Å so that no two distances tie, charge 1, multiplicity 2; the fixture model (hidden 64, 2
layers, cutoff 6 Å, kNN 8, candidate lists of 28). Slabs of 4.7 to 9.3 Å are thinner than the 6.8 Å
candidate radius, so edges cross rank boundaries (and periodic images of a rank's own atoms are its
ghosts)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from allscaip.model.fairchem_load import fairchem_model
from allscaip.model.fairchem_staged import FairchemStages
from allscaip_export.cli import main as export_main
from allscaip_export.dd_reference import split_slabs
from allscaip_export.fairchem_dd_reference import fairchem_dd_evaluate, rank_layouts
from allscaip_export.torchscript import load_torchscript

FIXTURE = Path(__file__).resolve().parent / "fixtures"
RANK_INDEPENDENCE = 1e-10  # relative, float64 (the target for LAMMPS on many ranks)
RATTLE = 0.05  # Å
REPEAT = (3, 2, 2)
CHARGE, SPIN = 1, 2


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """The ``stages`` of the float64 TorchScript export of the conserving fixture."""
    path = tmp_path_factory.mktemp("fairchem_staged") / "conserving.pt"
    source = str(FIXTURE / "fairchem" / "allscaip_md_conserving.pt")
    assert export_main([source, "-o", str(path), "--dtype", "float64", "--no-verify"]) == 0
    module, _ = load_torchscript(path)
    return module.stages


@pytest.fixture(scope="module")
def water():
    s = json.loads((FIXTURE / "fairchem" / "reference.json").read_text())["structures"]["water8_periodic"]
    atoms = Atoms(numbers=s["numbers"], positions=s["positions"], cell=s["cell"], pbc=True).repeat(REPEAT)
    atoms.positions += np.random.default_rng(7).normal(0.0, RATTLE, atoms.positions.shape)
    return atoms


@pytest.fixture(scope="module")
def whole_system(water):
    torch.set_num_threads(1)
    model = fairchem_model(FIXTURE / "fairchem" / "allscaip_md_conserving.pt", dtype=torch.float64)
    out = model(
        torch.tensor(water.positions),
        torch.tensor(water.numbers),
        torch.tensor(np.array(water.cell)),
        torch.tensor([True, True, True]),
        CHARGE,
        SPIN,
        compute_stress=True,
    )
    graph = model.graph(
        torch.tensor(water.positions),
        torch.tensor(np.array(water.cell)),
        torch.tensor([True, True, True]),
        *model.neighbor_pairs(torch.tensor(water.positions), torch.tensor(np.array(water.cell)), torch.ones(3) > 0),
    )
    return out, int(torch.isfinite(graph.src_bias).sum())


def owners(atoms: Atoms, nranks: int) -> np.ndarray:
    return split_slabs(atoms.get_scaled_positions()[:, 0], nranks)


@pytest.mark.parametrize("nranks", [1, 2, 3, 4])
def test_ranks_equal_the_whole_system(stages, water, whole_system, nranks):
    ref, _ = whole_system
    got = fairchem_dd_evaluate(
        stages, water.positions, water.numbers, np.array(water.cell), owners(water, nranks), nranks, CHARGE, SPIN
    )
    energy = float(ref.energy)
    assert abs(float(got["energy"]) - energy) <= RANK_INDEPENDENCE * abs(energy)
    force_scale = float(ref.forces.abs().max())
    assert float((got["forces"] - ref.forces).abs().max()) <= RANK_INDEPENDENCE * force_scale
    virial_scale = float(ref.virial.abs().max())
    assert float((got["virial"] - ref.virial).abs().max()) <= RANK_INDEPENDENCE * virial_scale
    assert float((got["energies"] - ref.energies).abs().max()) <= RANK_INDEPENDENCE * abs(energy) / len(water)


@pytest.mark.parametrize("nranks", [1, 3])
def test_every_edge_has_one_source_and_one_destination_rank(stages, water, whole_system, nranks):
    """Each kept edge of the whole-system graph is kept by one rank (its source's owner) and found by
    one rank's destination rows (its destination's owner); every rank reads edges of ghost sources, so
    the exchange that the test above checks is exercised."""
    _, edges = whole_system
    n = len(water)
    ranks = rank_layouts(
        water.positions, water.numbers, np.array(water.cell), (True,) * 3, owners(water, nranks), nranks, 6.8
    )

    def with_ghosts(owned_rows):  # forward communication by indexing
        whole = torch.zeros([n] + list(owned_rows[0].shape[1:]), dtype=owned_rows[0].dtype)
        for rk, rows in zip(ranks, owned_rows):
            whole[rk["owned"]] = rows.detach()
        return [torch.cat([rows.detach(), whole[rk["ghost_atom"]]]) for rk, rows in zip(ranks, owned_rows)]

    tops = with_ghosts([stages.nearest(rk["vec"], rk["mask"]) for rk in ranks])
    rows = [stages.rows(rk["vec"], rk["mask"], rk["index"], top) for rk, top in zip(ranks, tops)]
    width = max(r[0].shape[1] for r in rows)
    desc = with_ghosts(
        [stages.prepare(rk["vec"], *r, rk["numbers"], CHARGE, SPIN, width)[2] for rk, r in zip(ranks, rows)]
    )
    sources = sum(int(r[1].sum()) for r in rows)
    destinations, from_ghosts = 0, []
    for rk, top, d in zip(ranks, tops, desc):
        source_row, _, bias = stages.destinations(rk["vec"], rk["mask"], rk["index"], top, d)
        arriving = torch.isfinite(bias)
        destinations += int(arriving.sum())
        from_ghosts.append(int((arriving & (source_row >= len(rk["owned"]))).sum()))
    assert sources == edges and destinations == edges
    assert min(from_ghosts) > 0


def test_sm_models_are_refused():
    sm = fairchem_model(FIXTURE / "fairchem_sm" / "allscaip_sm_conserving.pt", dtype=torch.float64)
    with pytest.raises(ValueError, match="md models"):
        FairchemStages(sm)
