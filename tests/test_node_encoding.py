"""The distance-aware node attention "sinc_pairs" (allscaip.model.node_encoding): continuity at the
half box and at its range, stress, invariances, blocked == dense, per-system batching, training,
and configuration errors. Float64, small random-weight models, one thread."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from conftest import small_model, strain_fd_stress, water_box
from torch.nn.attention import SDPBackend, sdpa_kernel

from allscaip import structures
from allscaip.config import ConfigError, model_config
from allscaip.data import atoms_to_batch
from allscaip.model import AllScAIP, compute_properties
from allscaip.model.node_encoding import blocked_pair_bias_attention, dense_pair_bias_attention
from allscaip.neighbors import encoding_pairs
from allscaip.train.config import load_config

REPO = Path(__file__).resolve().parents[1]
FAST = dict(hidden=16, bond_order_lmax=2, legendre_lmax=2, cutoff=3.5)
ENCODING = dict(node_encoding="sinc_pairs", encoding_range=7.5, encoding_freqs=8)
ENCODING_BOOST = 10.0
"""Test models multiply their random encoding weights by this, so that the bias is of order one and
the encoding's share of the forces is large enough for every test to notice it."""

# a triclinic cell smaller than the encoding range (each pair has several images within it)
SMALL_CELL = np.array([[6.0, 0.0, 0.0], [1.1, 6.3, 0.0], [-0.7, 0.8, 6.6]])
CROSSING_FRACTION = np.array([0.5, 0.23, 0.31])  # fractional offset of the moving atom from its partner


def encoding_model(boost: float = ENCODING_BOOST, **overrides) -> AllScAIP:
    model = small_model(**{**FAST, **ENCODING, **overrides})
    with torch.no_grad():
        model.encoding_weights.mul_(boost)
    return model.eval()


def energy(model, atoms) -> float:
    return compute_properties(model, atoms_to_batch([atoms]), forces=False)["energy"].item()


def forces(model, atoms) -> np.ndarray:
    return compute_properties(model, atoms_to_batch([atoms]))["forces"].numpy()


def crossing_atoms(t: float, direction: np.ndarray) -> Atoms:
    """A water molecule, a C and an N atom in SMALL_CELL; the N atom (index 4) sits at
    ``x_C + CROSSING_FRACTION @ cell + t * direction``: at t = 0 its fractional offset from the C atom
    (index 3) is exactly one half along the first lattice vector, where a minimum image flips."""
    water = molecule("H2O")
    x_c = np.array([0.1, 0.6, 0.5]) @ SMALL_CELL
    x_n = x_c + CROSSING_FRACTION @ SMALL_CELL + t * direction
    positions = np.vstack([water.positions + [1.0, 1.2, 4.9], x_c, x_n])
    atoms = Atoms("OH2CN", positions=positions, cell=SMALL_CELL, pbc=True)
    atoms.info.update(charge=0, spin=1)
    return atoms


def fd_forces(model, make_atoms, atom: int, h: float = 1e-5) -> np.ndarray:
    """Central finite differences of the energy for atom ``atom`` of ``make_atoms()``."""
    fd = np.zeros(3)
    for d in range(3):
        ap, am = make_atoms(), make_atoms()
        ap.positions[atom, d] += h
        am.positions[atom, d] -= h
        fd[d] = -(energy(model, ap) - energy(model, am)) / (2 * h)
    return fd


def test_forces_continuous_at_the_half_box_in_a_small_triclinic_cell():
    along_a1 = SMALL_CELL[0] / np.linalg.norm(SMALL_CELL[0])
    at = lambda t: crossing_atoms(t, along_a1)  # noqa: E731
    assert min(at(0.0).get_distances(4, range(4), mic=True)) > 1.0
    model = encoding_model()
    f0 = forces(model, at(0.0))
    fd = fd_forces(model, lambda: at(0.0), 4)
    assert np.abs(fd - f0[4]).max() < 1e-6, (fd, f0[4])
    # the encoding carries a real share of that force
    unbiased = encoding_model(boost=0.0)
    assert np.abs(forces(unbiased, at(0.0))[4] - f0[4]).max() > 1e-3
    # across the crossing the new forces move smoothly, the legacy minimum-image bias jumps
    step = 1e-6
    assert np.abs(forces(model, at(step)) - forces(model, at(-step))).max() < 1e-5
    legacy = small_model(**FAST, distance_bias=True)
    with torch.no_grad():
        legacy.bias_weights.mul_(ENCODING_BOOST)
    jump = np.abs(forces(legacy, at(step)) - forces(legacy, at(-step))).max()
    assert jump > 1e-4, jump
    assert np.abs(fd_forces(legacy, lambda: at(0.0), 4) - forces(legacy, at(0.0))[4]).max() > 1e-2


def test_forces_continuous_where_a_pair_crosses_the_range():
    model = encoding_model()
    rng_a = model.encoding_range
    direction = np.array([0.3, -0.5, 0.81])
    direction /= np.linalg.norm(direction)
    # the image C + a1 + a2 of the moving N atom: solve |d0 - t u| = R for the t where it leaves
    x_c_image = crossing_atoms(0.0, direction).positions[3] + SMALL_CELL[0] + SMALL_CELL[1]
    d0 = x_c_image - crossing_atoms(0.0, direction).positions[4]
    b, c = -2 * d0 @ direction, d0 @ d0 - rng_a**2
    t_star = max((-b + s * np.sqrt(b * b - 4 * c)) / 2 for s in (1, -1))
    at = lambda dt: crossing_atoms(t_star + dt, direction)  # noqa: E731
    assert abs(np.linalg.norm(x_c_image - at(0.0).positions[4]) - rng_a) < 1e-12
    # the pair really enters the list there (and nothing else changes within 1e-4 Å)
    counts = [int(encoding_pairs(atoms_to_batch([at(dt)]), rng_a)[0].shape[1]) for dt in (-1e-4, 1e-4)]
    assert abs(counts[0] - counts[1]) == 2, counts  # (N, C image) and (C, N image)
    fd = fd_forces(model, lambda: at(0.0), 4)
    assert np.abs(fd - forces(model, at(0.0))[4]).max() < 1e-6
    assert np.abs(forces(model, at(1e-6)) - forces(model, at(-1e-6))).max() < 1e-5


def test_stress_is_the_strain_derivative():
    model = encoding_model()
    atoms = crossing_atoms(0.2, np.array([0.0, 0.0, 1.0]))
    out = compute_properties(model, atoms_to_batch([atoms]), stress=True)
    fd = strain_fd_stress(model, atoms, h=1e-6)
    assert np.abs(fd - out["stress"][0].numpy()).max() < 1e-8
    unbiased = compute_properties(encoding_model(boost=0.0), atoms_to_batch([atoms]), stress=True)
    assert np.abs(unbiased["stress"][0].numpy() - fd).max() > 1e-5  # the encoding's share is visible


def _rotated(atoms, rotation):
    out = atoms.copy()
    out.positions = atoms.positions @ rotation.T
    if atoms.pbc.any():
        out.set_cell(atoms.cell.array @ rotation.T)
    return out


def test_invariances(rotation):
    model = encoding_model()
    box = water_box(2, spacing=3.0, cell_skew=True)  # 24 atoms in a cell smaller than the range
    e0 = energy(model, box)
    rng = np.random.default_rng(3)
    perm = rng.permutation(len(box))
    translated = box.copy()
    translated.positions += [0.37, -1.21, 2.3]
    wrapped = box.copy()
    wrapped.positions[5] += box.cell.array[1] - box.cell.array[2]
    sheared = box.copy()  # the same lattice in another basis: a1' = a1 + a2, a3' = a3 - a1
    sheared.set_cell(np.array([[1, 1, 0], [0, 1, 0], [-1, 0, 1]]) @ box.cell.array, scale_atoms=False)
    sheared.wrap()
    variants = {"rotation": _rotated(box, rotation), "translation": translated, "permutation": box[perm]}
    variants.update(wrap=wrapped, equivalent_cell=sheared)
    for name, atoms in variants.items():
        assert abs(energy(model, atoms) - e0) < 1e-10, name
    mol = molecule("CH3CH2OH")  # no cell: no images
    assert abs(energy(model, _rotated(mol, rotation)) - energy(model, mol)) < 1e-10
    assert abs(energy(model, box) - energy(encoding_model(boost=0.0), box)) > 1e-3


class SavedShapes:
    """Shapes of the tensors autograd saves for the backward while it is active."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def __enter__(self):
        def pack(t):
            self.shapes.append(tuple(t.shape))
            return t

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


def test_blocked_equals_dense_and_keeps_nothing_quadratic():
    model = encoding_model(encoding_range=6.0)
    atoms = structures.water_box(80, seed=2, cell_skew=True)  # 240 atoms
    n, heads = len(atoms), model.cfg.heads
    results, shapes = {}, {}
    for path in ("dense", "blocked"):
        model.encoding_path = path
        model.encoding_block_elements = heads * n * 16  # 16 query rows per block: 15 blocks
        with SavedShapes() as saved:
            results[path] = compute_properties(model, atoms_to_batch([atoms]), stress=True)
        shapes[path] = saved.shapes
    for key in ("energy", "forces", "stress"):
        assert (results["dense"][key] - results["blocked"][key]).abs().max().item() < 1e-12, key

    def quadratic(s):
        return sum(d == n for d in s) >= 2

    assert any(quadratic(s) for s in shapes["dense"])  # the check sees an [h, n, n] when there is one
    assert not any(quadratic(s) for s in shapes["blocked"]), [s for s in shapes["blocked"] if quadratic(s)]


def _random_attention_inputs(heads=2, n=7, d=3, pairs=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(heads, n, d, generator=gen, dtype=torch.float64) for _ in range(3))
    rows = torch.sort(torch.randint(0, n, (pairs,), generator=gen)).values
    cols = torch.randint(0, n, (pairs,), generator=gen)
    bias = torch.randn(pairs, heads, generator=gen, dtype=torch.float64)
    return [t.requires_grad_(True) for t in (q, k, v, bias)], rows, cols


def test_blocked_attention_first_and_second_derivatives():
    """gradcheck and gradgradcheck of the blocked attention (3-row blocks over 7 atoms, repeated
    pairs included), and its second derivative equal to the dense one's."""
    (q, k, v, bias), rows, cols = _random_attention_inputs()

    def blocked(q, k, v, bias):
        return blocked_pair_bias_attention(q, k, v, bias, rows, cols, block_elements=2 * 7 * 3)

    def dense(q, k, v, bias):
        return dense_pair_bias_attention(q, k, v, bias, rows, cols)

    assert torch.autograd.gradcheck(blocked, (q, k, v, bias))
    assert torch.autograd.gradgradcheck(blocked, (q, k, v, bias))
    weight = torch.randn(2, 7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    second = {}
    for name, fn in (("dense", dense), ("blocked", blocked)):
        first = torch.autograd.grad((fn(q, k, v, bias) * weight).sum(), (q, k, v, bias), create_graph=True)
        second[name] = torch.autograd.grad(sum((g * g).sum() for g in first), (q, k, v, bias))
    for a, b in zip(second["dense"], second["blocked"]):
        assert (a - b).abs().max() < 1e-12 * a.abs().max()


@pytest.mark.parametrize("encoding", [True, False])
def test_force_training_keeps_nothing_quadratic(encoding):
    """A force-loss training step through the blocked attention (240 atoms, 15 blocks), with the
    encoding and without (content attention): the same parameter gradients as the dense one, and
    nothing [n, n] saved in the forward, the force backward or the double backward."""
    atoms = structures.water_box(80, seed=2, cell_skew=True)
    batch = atoms_to_batch([atoms])
    model = small_model(**FAST, **(ENCODING if encoding else {}), layers=1, core=False).train()
    if encoding:
        model.encoding_weights.data.mul_(ENCODING_BOOST)
    n = len(atoms)
    model.encoding_block_elements = model.cfg.heads * n * 16
    grads, shapes = {}, {}
    target = torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for path in ("dense", "blocked"):
        model.encoding_path = path
        model.zero_grad()
        with SavedShapes() as saved, sdpa_kernel(SDPBackend.MATH):
            out = compute_properties(model, batch, training=True)
            ((out["forces"] - target) ** 2).mean().backward()
        grads[path] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        shapes[path] = saved.shapes
    assert (grads["dense"] - grads["blocked"]).abs().max() < 1e-10 * grads["dense"].abs().max()

    def quadratic(s):
        return sum(d == n for d in s) >= 2

    assert any(quadratic(s) for s in shapes["dense"])
    assert not any(quadratic(s) for s in shapes["blocked"]), [s for s in shapes["blocked"] if quadratic(s)]


def _batch_vs_alone(model, systems):
    batched = compute_properties(model, atoms_to_batch(systems), stress=True)
    alone = [compute_properties(model, atoms_to_batch([a]), stress=True) for a in systems]
    assert (batched["energy"] - torch.cat([o["energy"] for o in alone])).abs().max() < 1e-12
    assert (batched["forces"] - torch.cat([o["forces"] for o in alone])).abs().max() < 1e-12
    periodic = [i for i, a in enumerate(systems) if a.pbc.all()]
    stress_alone = torch.cat([alone[i]["stress"] for i in periodic])
    assert (batched["stress"][periodic] - stress_alone).abs().max() < 1e-12


@pytest.mark.parametrize("encoding", [True, False])
def test_batch_equals_each_system_alone(encoding):
    mol = molecule("CH3CH2OH")
    mol.info.update(charge=0, spin=1)
    systems = [water_box(2, seed=1, cell_skew=True), mol, crossing_atoms(0.1, np.array([1.0, 0.0, 0.0]))]
    model = encoding_model() if encoding else small_model(**FAST)
    _batch_vs_alone(model, systems)
    if encoding:
        model.encoding_path = "blocked"
        model.encoding_block_elements = 64
        _batch_vs_alone(model, systems)


def test_training_steps_with_the_encoding():
    frames = ase.io.read(REPO / "examples/water/data/train.extxyz", index=":3")
    batch = atoms_to_batch(frames)
    model = small_model(**FAST, **ENCODING, elements=[1, 8], layers=1, core=False)
    model.encoding_weights.data.mul_(ENCODING_BOOST)
    # the double backward through the blocked attention equals the dense one
    grads = {}
    for path in ("dense", "blocked"):
        model.encoding_path = path
        model.zero_grad()
        with sdpa_kernel(SDPBackend.MATH):
            out = compute_properties(model, batch, training=True)
        ((out["forces"] - batch.forces) ** 2).mean().backward()
        grads[path] = model.encoding_weights.grad.clone()
    assert torch.isfinite(grads["dense"]).all() and grads["dense"].abs().max() > 0
    assert (grads["dense"] - grads["blocked"]).abs().max() < 1e-10 * grads["dense"].abs().max()
    model.encoding_path = "auto"
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        with sdpa_kernel(SDPBackend.MATH):
            out = compute_properties(model, batch, training=True)
        de = (out["energy"] - batch.energy) / batch.natoms
        loss = (de**2).mean() + ((out["forces"] - batch.forces) ** 2).mean()
        loss.backward()
        assert torch.isfinite(model.encoding_weights.grad).all()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize(
    "overrides, words",
    [
        (dict(node_encoding="rotary"), ["rotary", "none", "sinc_pairs"]),
        (dict(node_encoding="sinc_pairs", encoding_range=0.0), ["encoding_range", "0.0"]),
        (dict(node_encoding="sinc_pairs", encoding_freqs=0), ["encoding_freqs", "0"]),
        (dict(node_encoding="sinc_pairs", distance_bias=True), ["distance_bias", "choose one"]),
        (dict(node_encoding="sinc_pairs", node_attention=False), ["node_attention", "sinc_pairs"]),
    ],
)
def test_config_errors(overrides, words):
    with pytest.raises(ConfigError) as err:
        model_config(**overrides)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_models_without_the_encoding_are_unchanged():
    cfg = model_config()
    assert cfg.node_encoding == "none"
    keys = set(AllScAIP(cfg).state_dict())
    assert not any("encoding" in k for k in keys)
    assert set(AllScAIP(model_config(**ENCODING)).state_dict()) - keys == {"encoding_weights"}
    model = encoding_model()
    with pytest.raises(ValueError, match="encoding pairs"):
        model(*_forward_inputs_without_pairs(model))


def _forward_inputs_without_pairs(model):
    atoms = crossing_atoms(0.0, np.array([1.0, 0.0, 0.0]))
    b = atoms_to_batch([atoms])
    index = torch.tensor([[1, 0]] * len(atoms))
    return (
        b.positions,
        model.species_of(b.numbers),
        b.system,
        b.cell,
        b.pbc,
        index,
        torch.zeros(len(atoms), 2, 3, dtype=torch.float64),
        torch.ones(len(atoms), 2, dtype=torch.bool),
        b.charge,
        b.spin,
    )


@pytest.mark.parametrize(
    "preset, legendre, encoding",
    [
        ("sm", True, "sinc_pairs"),
        ("sm_NeAnNoSi", True, "sinc_pairs"),
        ("md", False, "none"),
        ("md_NeNo", False, "none"),
    ],
)
def test_presets_name_the_published_configurations(preset, legendre, encoding):
    """fairchem's sm_NeAnNoSi has the angular and the sinc encodings on, md_NeNo both off."""
    cfg = model_config(preset, elements=[1, 8])
    assert (cfg.legendre, cfg.node_encoding, cfg.distance_bias) == (legendre, encoding, False)
    assert (cfg.hidden, cfg.layers) == ((512, 6) if preset.startswith("sm") else (640, 10))


def test_long_range_preset_trains_from_a_config(tmp_path):
    (tmp_path / "c.yaml").write_text("model: {preset: lr}\ndata: {train: t.extxyz}\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.model_preset == "lr"
    assert (cfg.model.hidden, cfg.model.legendre, cfg.model.node_encoding) == (128, True, "sinc_pairs")
