"""Physics of the model: conservative forces, stress, invariances, periodic images, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule
from conftest import small_model, strain_fd_stress, water_box

from allscaip.data import atoms_to_batch
from allscaip.model import compute_properties

VARIANTS = {
    "radius": {},
    "knn": {"max_neighbors": 6},
    "distance_bias": {"distance_bias": True},
    "local_only": {"node_attention": False},
}


def energy(model, atoms) -> float:
    return compute_properties(model, atoms_to_batch([atoms]), forces=False)["energy"].item()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_forces_match_finite_differences(variant):
    model = small_model(**VARIANTS[variant])
    atoms = water_box(2, cell_skew=True)
    out = compute_properties(model, atoms_to_batch([atoms]))
    h = 1e-5
    rng = np.random.default_rng(1)
    for i in rng.choice(len(atoms), 4, replace=False):
        for d in range(3):
            ap, am = atoms.copy(), atoms.copy()
            ap.positions[i, d] += h
            am.positions[i, d] -= h
            fd = -(energy(model, ap) - energy(model, am)) / (2 * h)
            assert abs(fd - out["forces"][i, d].item()) < 1e-7, (variant, i, d)


def test_stress_matches_strain_finite_differences():
    model = small_model()
    atoms = water_box(2, cell_skew=True)
    out = compute_properties(model, atoms_to_batch([atoms]), stress=True)
    fd = strain_fd_stress(model, atoms, h=1e-6)
    for a in range(3):
        for b in range(3):
            assert abs(fd[a, b] - out["stress"][0, a, b].item()) < 1e-8, (a, b)
    s = out["stress"][0]
    assert torch.allclose(s, s.T, atol=1e-12)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rotation_translation_permutation_invariance(variant, rotation):
    model = small_model(**VARIANTS[variant])
    for atoms in (molecule("CH3CONH2"), water_box(2, cell_skew=True)):
        atoms.info.update(charge=0, spin=1)
        ref = compute_properties(model, atoms_to_batch([atoms]))
        rot = atoms.copy()
        rot.positions = atoms.positions @ rotation.T + np.array([1.3, -0.7, 2.2])
        if atoms.pbc.any():
            rot.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
        out = compute_properties(model, atoms_to_batch([rot]))
        assert abs(out["energy"].item() - ref["energy"].item()) < 1e-10
        np.testing.assert_allclose(out["forces"].numpy(), ref["forces"].numpy() @ rotation.T, atol=1e-10)
        perm = np.random.default_rng(3).permutation(len(atoms))
        p = atoms[perm]
        out = compute_properties(model, atoms_to_batch([p]))
        assert abs(out["energy"].item() - ref["energy"].item()) < 1e-10
        np.testing.assert_allclose(out["energies"].numpy(), ref["energies"].numpy()[perm], atol=1e-10)


def test_energy_changes_with_geometry_and_species():
    """Guard against a constant model: the invariance tests must not pass trivially."""
    model = small_model()
    a = water_box(2)
    b = a.copy()
    b.positions[0] += [0.2, 0.0, 0.1]
    assert abs(energy(model, a) - energy(model, b)) > 1e-4
    angle_a = molecule("H2O")
    angle_b = molecule("H2O")
    angle_b.set_angle(1, 0, 2, 120.0)
    assert abs(energy(model, angle_a) - energy(model, angle_b)) > 1e-5


@pytest.mark.parametrize("variant", ["radius", "knn"])
def test_periodic_cell_equals_supercell_per_atom(variant):
    model = small_model(**VARIANTS[variant])
    atoms = water_box(2, cell_skew=True)
    sup = atoms.repeat((2, 2, 2))
    e1 = energy(model, atoms) / len(atoms)
    e8 = energy(model, sup) / len(sup)
    assert abs(e1 - e8) < 1e-10
    f1 = compute_properties(model, atoms_to_batch([atoms]))["forces"]
    f8 = compute_properties(model, atoms_to_batch([sup]))["forces"]
    np.testing.assert_allclose(f8[: len(atoms)].numpy(), f1.numpy(), atol=1e-10)


def test_small_cell_with_several_images_of_a_neighbour():
    """Cutoff longer than half the cell: neighbours appear through several images."""
    model = small_model(cutoff=5.0)
    atoms = water_box(1, spacing=3.0)
    assert atoms.cell.lengths().max() < 5.0
    e1 = energy(model, atoms) / len(atoms)
    e27 = energy(model, atoms.repeat((3, 3, 3))) / (27 * len(atoms))
    assert abs(e1 - e27) < 1e-10


@pytest.mark.parametrize("variant", ["radius", "distance_bias"])
def test_batch_equals_each_system_alone(variant):
    model = small_model(**VARIANTS[variant])
    systems = [water_box(2, seed=1), molecule("CH3CONH2"), water_box(2, seed=2, cell_skew=True), molecule("H2O")]
    for s in systems:
        s.info.update(charge=0, spin=1)
    systems[1].info["charge"] = 1
    systems[1].info["spin"] = 2
    batch = compute_properties(model, atoms_to_batch(systems), stress=True)
    start = 0
    for b, s in enumerate(systems):
        alone = compute_properties(model, atoms_to_batch([s]), stress=True)
        assert abs(batch["energy"][b].item() - alone["energy"].item()) < 1e-10
        np.testing.assert_allclose(batch["forces"][start : start + len(s)].numpy(), alone["forces"].numpy(), atol=1e-10)
        if s.pbc.any():
            np.testing.assert_allclose(batch["stress"][b].numpy(), alone["stress"][0].numpy(), atol=1e-10)
        start += len(s)


def test_charge_and_spin_change_the_energy():
    model = small_model()
    a = molecule("CH3CONH2")
    a.info.update(charge=0, spin=1)
    b = a.copy()
    b.info.update(charge=1, spin=2)
    assert abs(energy(model, a) - energy(model, b)) > 1e-4


@pytest.mark.parametrize("variant", ["radius", "knn"])
def test_energy_continuous_across_cutoff(variant):
    """Pull one molecule out of range: energy and force change smoothly through the cutoff."""
    model = small_model(**VARIANTS[variant])
    a = molecule("H2O")
    b = molecule("NH3")
    es, fs = [], []
    ds = np.linspace(3.6, 4.4, 161)  # cutoff 4.0 between the nearest atoms
    for d in ds:
        at = a.copy() + b.copy()
        shift = np.array([d, 0, 0]) + a.positions[:, 0].max() - b.positions[:, 0].min()
        at.positions[len(a) :] += [shift[0], 0, 0]
        at.info.update(charge=0, spin=1)
        o = compute_properties(model, atoms_to_batch([at]))
        es.append(o["energy"].item())
        fs.append(o["forces"].numpy().copy())
    es = np.array(es)
    steps = np.abs(np.diff(es))
    assert steps.max() < 1e-3
    # the interaction actually goes to a constant beyond the cutoff ...
    assert abs(es[-1] - es[-2]) < 1e-12
    # ... and is non-trivial inside it
    assert abs(es[0] - es[-1]) > 1e-4
    dF = np.array([np.abs(fs[i + 1] - fs[i]).max() for i in range(len(fs) - 1)])
    assert dF.max() < 5e-3


def test_float32_matches_float64():
    model = small_model()
    atoms = water_box(2, cell_skew=True)
    o64 = compute_properties(model, atoms_to_batch([atoms]))
    m32 = small_model().float()
    o32 = compute_properties(m32, atoms_to_batch([atoms], dtype=torch.float32))
    assert abs(o32["energy"].item() - o64["energy"].item()) / abs(o64["energy"].item()) < 1e-5
    np.testing.assert_allclose(o32["forces"].double().numpy(), o64["forces"].numpy(), atol=2e-3)


def test_unknown_element_message():
    from allscaip.model import UnknownElementError

    model = small_model()
    a = molecule("CH3Cl")
    with pytest.raises(UnknownElementError, match=r"\['Cl'\].*knows \['H', 'C', 'N', 'O'\]"):
        energy(model, a)


@pytest.mark.parametrize("overrides", [{}, dict(node_encoding="sinc_pairs", encoding_range=6.0)])
def test_recomputed_layers_equal_stored_ones(overrides):
    """recompute "layers" (activation checkpointing) gives the stored backward's energy, forces and
    stress to 1e-10 in float64, on a batch of a periodic box and a molecule, and keeps fewer
    activations for the backward."""
    model = small_model(**overrides).eval()
    mol = molecule("CH3CH2OH")
    mol.info.update(charge=0, spin=1)
    batch = atoms_to_batch([water_box(2, cell_skew=True, seed=5), mol])
    results, saved = {}, {}
    model.recompute_rows = 5  # 33 centres: the local stage in 7 slices
    for mode in ("none", "layers"):
        model.recompute = mode
        sizes = []

        def pack(t, sizes=sizes):
            if torch._C._current_graph_task_id() == -1:  # kept by the forward (not by a recomputation)
                sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            results[mode] = compute_properties(model, batch, stress=True)
        saved[mode] = sum(sizes)
    for key in ("energy", "forces"):
        scale = results["none"][key].abs().max()
        assert (results["none"][key] - results["layers"][key]).abs().max() <= 1e-10 * scale, key
    periodic = slice(0, 1)
    assert (results["none"]["stress"][periodic] - results["layers"]["stress"][periodic]).abs().max() <= 1e-10
    assert saved["layers"] < 0.7 * saved["none"], saved


def test_recomputed_layers_differentiate_twice():
    """The recomputed backward keeps its graph under ``create_graph`` (a loss on forces in evaluation
    mode): the weights' gradient of the summed squared forces plus the energy equals the stored one to 1e-10 in
    float64, through the recomputed slices' inputs as well as their weights. (Without node attention:
    outside training it runs the fused kernel, which has no second derivative.)"""
    model = small_model(node_attention=False).eval()
    batch = atoms_to_batch([water_box(2, cell_skew=True, seed=6)])
    model.recompute_rows = 5
    weights = [p for p in model.parameters() if p.requires_grad]
    grads = {}
    for mode in ("none", "layers"):
        model.recompute = mode
        out = compute_properties(model, batch, training=True)
        loss = out["forces"].pow(2).sum() + out["energy"].sum()  # second and first derivatives
        grads[mode] = torch.cat([g.flatten() for g in torch.autograd.grad(loss, weights, materialize_grads=True)])
    scale = grads["none"].abs().max()
    assert scale > 0 and (grads["none"] - grads["layers"]).abs().max() <= 1e-10 * scale


@pytest.mark.parametrize("legendre", [True, False])
def test_last_block_reads_only_the_centres(legendre):
    """The last block's neighbour stage with ``last=True`` (the destination attention for the self
    tokens' queries only, no edge feed-forward) gives the centre states of the full stage, and
    their gradients with respect to every input, to 1e-12 in float64."""
    model = small_model(legendre=legendre).eval()
    block = model.blocks[-1]
    recorded = []
    full = block.local

    def record(*args):
        recorded.append(args[:5])
        return full(*args)

    block.local = record
    compute_properties(model, atoms_to_batch([water_box(2, cell_skew=True, seed=7)]))
    del block.local
    inputs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in recorded[-1]]
    weights = torch.randn(inputs[4].shape[0], model.cfg.hidden, dtype=torch.float64)
    nodes, grads = {}, {}
    for last in (False, True):
        nodes[last] = block.local(*inputs, 0, False, last)[0]
        wrt = [t for t in inputs if t.requires_grad]
        grads[last] = torch.autograd.grad((nodes[last] * weights).sum(), wrt, allow_unused=True)
    assert nodes[True].shape == nodes[False].shape
    assert (nodes[True] - nodes[False]).abs().max() <= 1e-12 * nodes[False].abs().max()
    for g_full, g_last in zip(grads[False], grads[True]):
        if g_full is None:
            assert g_last is None or g_last.abs().max() == 0
            continue
        assert g_full.abs().max() > 0
        assert (g_last - g_full).abs().max() <= 1e-12 * g_full.abs().max()
