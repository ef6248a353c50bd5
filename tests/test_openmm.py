"""OpenMM integration: PythonForce and TorchForce paths against the ASE calculator, MD
stability (NVE energy conservation, NPT with a Monte Carlo barostat) and ML/MM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

openmm = pytest.importorskip("openmm")
from conftest import small_model, water_box  # noqa: E402
from openmm import app, unit  # noqa: E402

from allscaip.calculator import AllScAIPCalculator  # noqa: E402
from allscaip_export.metadata import build_metadata  # noqa: E402
from allscaip_export.torchscript import export_torchscript  # noqa: E402
from allscaip_openmm import MLPotential  # noqa: E402
from allscaip_openmm.forces import (  # noqa: E402
    EV_TO_KJ_PER_MOL,
    AllScAIPComputation,
    NotAnAllScAIPModelError,
)
from allscaip_openmm.torchforce import write_torchforce_module  # noqa: E402

pytestmark = pytest.mark.openmm

KJ_NM_PER_EV_A = EV_TO_KJ_PER_MOL * 10.0


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # the model calls are tiny: two intra-op threads on a shared 2-core machine only contend
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory):
    model = small_model()
    path = tmp_path_factory.mktemp("openmm") / "model.pt"
    export_torchscript(model, path, build_metadata(model, "float64", "cpu", "torchscript"))
    return path


@pytest.fixture(scope="module")
def model_pt_no_wall(tmp_path_factory):
    """The same model without the core-repulsion wall (for the energy-conservation bounds)."""
    model = small_model(core=False)
    path = tmp_path_factory.mktemp("openmm") / "no_wall.pt"
    export_torchscript(model, path, build_metadata(model, "float64", "cpu", "torchscript"))
    return path


# ---------------------------------------------------------------------------- helpers
def topology_of(atoms, molecule_size=None, water_names=False):
    """OpenMM Topology for ASE ``atoms``; one residue per ``molecule_size`` atoms."""
    top = app.Topology()
    chain = top.addChain()
    size = molecule_size or len(atoms)
    for start in range(0, len(atoms), size):
        res = top.addResidue("HOH" if water_names else "MOL", chain)
        made = []
        for k, z in enumerate(atoms.numbers[start : start + size]):
            el = app.element.Element.getByAtomicNumber(int(z))
            name = ["O", "H1", "H2"][k] if water_names else f"{el.symbol}{k}"
            made.append(top.addAtom(name, el, res))
        if water_names:
            top.addBond(made[0], made[1])
            top.addBond(made[0], made[2])
    if atoms.pbc.all():
        top.setPeriodicBoxVectors(box_vectors(atoms.cell.array))
    return top


def box_vectors(cell_angstrom):
    return [openmm.Vec3(*(0.1 * np.asarray(v, dtype=float))) for v in cell_angstrom] * unit.nanometer


def context_for(system, atoms, platform="Reference", integrator=None):
    integrator = integrator or openmm.VerletIntegrator(0.0005)
    plat = openmm.Platform.getPlatformByName(platform)
    ctx = openmm.Context(system, integrator, plat)
    if atoms.pbc.all():
        ctx.setPeriodicBoxVectors(*box_vectors(atoms.cell.array))
    ctx.setPositions(atoms.positions * 0.1)
    return ctx


def energy_forces(ctx, groups=-1):
    st = ctx.getState(getEnergy=True, getForces=True, groups=groups)
    e = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    f = st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    return e, np.asarray(f)


def reference(atoms, model_pt):
    a = atoms.copy()
    a.info.update(atoms.info)
    a.calc = AllScAIPCalculator(model_pt)
    return a.get_potential_energy() * EV_TO_KJ_PER_MOL, a.get_forces() * KJ_NM_PER_EV_A


def molecule_atoms():
    from ase.build import molecule

    a = molecule("CH3CONH2")  # acetamide: H, C, N, O
    a.info.update(charge=0, spin=1)
    return a


# ---------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("case", ["triclinic_water", "cubic_water", "molecule"])
def test_pythonforce_matches_calculator(model_pt, case):
    if case == "molecule":
        atoms, size = molecule_atoms(), None
    else:
        # 6.2 Å box with a 4 Å cutoff: several periodic images of the same atom are neighbours;
        # the triclinic box is in OpenMM's reduced form (a along x, b in the xy plane, |tilts| <= half)
        atoms, size = water_box(2, cell_skew=case == "triclinic_water", seed=1), 3
    top = topology_of(atoms, size)
    system = MLPotential("allscaip", modelPath=str(model_pt)).createSystem(top, charge=0, spin=1)
    assert system.usesPeriodicBoundaryConditions() == bool(atoms.pbc.all())
    e, f = energy_forces(context_for(system, atoms))
    e_ref, f_ref = reference(atoms, model_pt)
    assert abs(e - e_ref) <= 1e-6 * abs(e_ref)
    np.testing.assert_allclose(f, f_ref, rtol=1e-6, atol=1e-6 * np.abs(f_ref).max())


def test_pythonforce_box_and_positions_are_read_every_call(model_pt):
    atoms = water_box(2, cell_skew=True, seed=2)
    system = MLPotential("allscaip", modelPath=str(model_pt)).createSystem(topology_of(atoms, 3))
    ctx = context_for(system, atoms)
    moved = atoms.copy()
    moved.set_cell(atoms.cell.array * 1.07, scale_atoms=True)
    moved.positions[0] += [0.2, -0.1, 0.05]
    ctx.setPeriodicBoxVectors(*box_vectors(moved.cell.array))
    ctx.setPositions(moved.positions * 0.1)
    e, f = energy_forces(ctx)
    e_ref, f_ref = reference(moved, model_pt)
    assert abs(e - e_ref) <= 1e-6 * abs(e_ref)
    np.testing.assert_allclose(f, f_ref, rtol=1e-6, atol=1e-6 * np.abs(f_ref).max())


def test_charge_and_spin_reach_the_model(model_pt):
    atoms = molecule_atoms()
    top = topology_of(atoms)
    pot = MLPotential("allscaip", modelPath=str(model_pt))
    e0, _ = energy_forces(context_for(pot.createSystem(top), atoms))
    e1, _ = energy_forces(context_for(pot.createSystem(top, charge=1, spin=2), atoms))
    charged = atoms.copy()
    charged.info.update(charge=1, spin=2)
    e1_ref, _ = reference(charged, model_pt)
    assert abs(e1 - e1_ref) <= 1e-6 * abs(e1_ref)
    assert e0 != e1  # the small model has charge/spin embeddings


def test_system_survives_xml_serialization(model_pt):
    atoms = water_box(2, seed=3)
    system = MLPotential("allscaip", modelPath=str(model_pt)).createSystem(topology_of(atoms, 3))
    copy = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    e0, f0 = energy_forces(context_for(system, atoms))
    e1, f1 = energy_forces(context_for(copy, atoms))
    assert e0 == pytest.approx(e1, rel=1e-12)
    np.testing.assert_allclose(f0, f1, atol=1e-9)


def test_checkpoint_model_equals_export(model_pt, tmp_path):
    checkpoint = pytest.importorskip("allscaip.checkpoint")
    import dataclasses

    model = small_model()
    ckpt = checkpoint.save_checkpoint(
        tmp_path / "model.ckpt",
        {"model_config": dataclasses.asdict(model.cfg), "model_state": model.state_dict()},
    )
    atoms = water_box(2, cell_skew=True, seed=6)
    top = topology_of(atoms, 3)
    e_pt, f_pt = energy_forces(context_for(MLPotential("allscaip", modelPath=str(model_pt)).createSystem(top), atoms))
    e_ck, f_ck = energy_forces(context_for(MLPotential("allscaip", modelPath=str(ckpt)).createSystem(top), atoms))
    assert abs(e_ck - e_pt) <= 1e-9 * abs(e_pt)
    np.testing.assert_allclose(f_ck, f_pt, atol=1e-8 * np.abs(f_pt).max())
    # a TorchForce module can be written from a checkpoint too (the eager model gets scripted)
    module = torch.jit.load(str(write_torchforce_module(ckpt, top, tmp_path / "tf.pt")))
    e, f, _ = call_like_torchforce(module, atoms.positions * 0.1, atoms.cell.array * 0.1, "cuda-float64", True)
    assert abs(e - e_pt) <= 1e-9 * abs(e_pt)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(NotAnAllScAIPModelError, match="not an allscaip"):
        MLPotential("allscaip", modelPath=str(junk))


def test_openmm_ml_calling_conventions(model_pt):
    """The factory/impl pair as openmm-ml drives it: createImpl(name, **constructor args), then
    addForces(topology, system, atoms, forceGroup, **args), where recent openmm-ml versions
    repeat the constructor's arguments (modelPath) in args."""
    from allscaip_openmm.potential import AllScAIPPotentialImplFactory

    atoms = molecule_atoms()
    top = topology_of(atoms)
    impl = AllScAIPPotentialImplFactory().createImpl("allscaip", modelPath=str(model_pt))
    energies = []
    for extra in ({}, {"modelPath": str(model_pt), "embedding": None, "charge": 0, "multiplicity": 1}):
        system = openmm.System()
        for atom in top.atoms():
            system.addParticle(atom.element.mass)
        impl.addForces(top, system, None, 3, **extra)
        assert system.getNumForces() == 1 and system.getForce(0).getForceGroup() == 3
        energies.append(energy_forces(context_for(system, atoms))[0])
    assert energies[0] == energies[1] == pytest.approx(reference(atoms, model_pt)[0], rel=1e-9)
    with pytest.raises(ValueError, match="differs"):
        impl.addForces(top, openmm.System(), None, 0, modelPath="other.pt")
    try:
        from openmmml import MLPotential as OpenMMMLPotential
    except ImportError:
        return
    system = OpenMMMLPotential("allscaip", modelPath=str(model_pt)).createSystem(top)  # pragma: no cover
    assert energy_forces(context_for(system, atoms))[0] == pytest.approx(energies[0], rel=1e-9)


# ---------------------------------------------------------------------------- TorchForce module
def call_like_torchforce(module, positions_nm, box_nm, kernel, outputs_forces):
    """What openmm-torch's kernels do. Reference/CPU: the module is frozen
    (``torch::jit::freeze``), positions are float64 with ``requires_grad`` always set.
    CUDA/OpenCL: the module is not frozen; positions and box come in the context's
    precision (float32 in single/mixed), ``requires_grad`` only without setOutputsForces.
    Without setOutputsForces the energy is back-propagated to the positions."""
    dtype = torch.float32 if kernel == "cuda-float32" else torch.float64
    pos = torch.tensor(positions_nm, dtype=dtype, requires_grad=kernel == "reference" or not outputs_forces)
    args = [pos] if box_nm is None else [pos, torch.tensor(box_nm, dtype=dtype)]
    if outputs_forces:
        energy, forces = module.forward(*args)
    else:
        energy = module.forward(*args)
        energy.backward()
        forces = -pos.grad
    assert energy.dim() == 0 and tuple(forces.shape) == tuple(positions_nm.shape)
    return energy.item(), forces.to(torch.float64).numpy(), dtype


@pytest.mark.parametrize("outputs_forces", [True, False])
@pytest.mark.parametrize("case", ["triclinic_water", "molecule", "ml_subset"])
def test_torchforce_module_matches_pythonforce(model_pt, tmp_path, case, outputs_forces):
    atoms = molecule_atoms() if case == "molecule" else water_box(2, cell_skew=True, seed=5)
    periodic = bool(atoms.pbc.all())
    top = topology_of(atoms, None if case == "molecule" else 3)
    ml = [3, 4, 5, 9, 10, 11] if case == "ml_subset" else None
    path = write_torchforce_module(
        model_pt, top, tmp_path / "tf.pt", outputs_forces=outputs_forces, charge=0, spin=1, atoms=ml
    )
    extra = {"torchforce.json": "", "metadata.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    assert b'"outputs_forces"' in extra["torchforce.json"] and b'"cutoff"' in extra["metadata.json"]
    frozen = torch.jit.freeze(torch.jit.load(str(path)).eval())
    sel = list(range(len(atoms))) if ml is None else ml
    comp = AllScAIPComputation(model_pt, atoms.numbers[sel], periodic)
    pos_nm = atoms.positions * 0.1
    box_nm = atoms.cell.array * 0.1 if periodic else None
    for kernel in ("reference", "cuda-float32", "cuda-float64"):
        for _ in range(2):  # a second call must not trip over state left by the first
            module = frozen if kernel == "reference" else loaded
            e, f, dtype = call_like_torchforce(module, pos_nm, box_nm, kernel, outputs_forces)
        # the PythonForce path at the positions the module actually saw
        p = torch.tensor(pos_nm, dtype=dtype).double().numpy()
        b = None if box_nm is None else torch.tensor(box_nm, dtype=dtype).double().numpy()
        e_ref, f_sel = comp.evaluate(p[sel], b)
        f_ref = np.zeros_like(p)
        f_ref[sel] = f_sel
        assert abs(e - e_ref) <= 1e-9 * abs(e_ref), (kernel, e, e_ref)
        # back-propagated forces come back in the positions' dtype (float32 rounding: ~6e-8)
        tol = 1e-6 if dtype == torch.float32 and not outputs_forces else 1e-9
        np.testing.assert_allclose(f, f_ref, rtol=tol, atol=tol * np.abs(f_ref).max(), err_msg=kernel)


def test_torchforce_implementation_needs_openmmtorch(model_pt):
    atoms = molecule_atoms()
    pot = MLPotential("allscaip", modelPath=str(model_pt))
    try:
        import openmmtorch  # noqa: F401
    except Exception:
        with pytest.raises(RuntimeError, match="openmmtorch is not importable here.*implementation='pythonforce'"):
            pot.createSystem(topology_of(atoms), implementation="torchforce")
        return
    system = pot.createSystem(topology_of(atoms), implementation="torchforce")  # pragma: no cover
    e, _ = energy_forces(context_for(system, atoms))
    assert e == pytest.approx(reference(atoms, model_pt)[0], rel=1e-6)


# ---------------------------------------------------------------------------- errors
def test_element_not_in_model_is_named(model_pt):
    from ase import Atoms

    atoms = Atoms("FeOH", positions=[[0, 0, 0], [2, 0, 0], [2.9, 0, 0]])
    with pytest.raises(ValueError, match=r"\['Fe'\].*knows \['H', 'C', 'N', 'O'\]"):
        MLPotential("allscaip", modelPath=str(model_pt)).createSystem(topology_of(atoms))


def test_atom_without_element_is_rejected(model_pt):
    top = app.Topology()
    res = top.addResidue("MOL", top.addChain())
    top.addAtom("O", app.element.oxygen, res)
    top.addAtom("EP", None, res)  # e.g. a virtual site / extra point
    with pytest.raises(ValueError, match="no element.*EP"):
        MLPotential("allscaip", modelPath=str(model_pt)).createSystem(top)


def test_not_an_allscaip_model(tmp_path):
    class Plain(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(Plain()), str(plain))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a model")
    for path in (plain, junk):
        with pytest.raises(NotAnAllScAIPModelError, match="not an allscaip model|not an allscaip export"):
            MLPotential("allscaip", modelPath=str(path))
    with pytest.raises(FileNotFoundError):
        MLPotential("allscaip", modelPath=str(tmp_path / "missing.pt"))


# ---------------------------------------------------------------------------- dynamics
def test_nve_energy_conservation(model_pt_no_wall):
    """Velocity Verlet, 0.5 fs, 2000 steps (1 ps): 4 waters in a 7 Å triclinic box at 300 K.

    Without the test models' core wall, which acts inside every molecule (H-H 1.8 Å) and makes
    them stiffer than the bounds below were set for; the wall's forces are checked exactly
    elsewhere (test_core_repulsion, finite differences, engine single points).

    Measured (Reference platform, double precision, 2-core CPU): drift -0.0006 meV/atom/ps,
    total energy max-min 0.020 meV/atom. The same run with forces scaled by 1.01 (a 1 %
    force/energy inconsistency) gives drift +0.020 meV/atom/ps and max-min 0.104 meV/atom.
    The bounds, |drift| < 0.01 meV/atom/ps and max-min < 0.05 meV/atom, pass the correct
    forces with a 2.5x (spread) to 15x (drift) margin and fail such an error.
    """
    atoms = water_box(2, spacing=3.5, seed=1, cell_skew=True)[:12]
    # no CMMotionRemover: it would take the random initial centre-of-mass motion out of the
    # kinetic energy at the first step
    potential = MLPotential("allscaip", modelPath=str(model_pt_no_wall))
    # min_distance off: without the wall this random-weight model brings two atoms to 0.49 Å; the
    # test is about conservation
    system = potential.createSystem(topology_of(atoms, 3), removeCMMotion=False, min_distance=0)
    integrator = openmm.VerletIntegrator(0.5 * unit.femtosecond)
    ctx = context_for(system, atoms, integrator=integrator)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    times, energies = [], []
    for _ in range(100):
        integrator.step(20)
        st = ctx.getState(getEnergy=True)
        energies.append((st.getPotentialEnergy() + st.getKineticEnergy()).value_in_unit(unit.kilojoule_per_mole))
        times.append(st.getTime().value_in_unit(unit.picosecond))
    energies = np.asarray(energies) / EV_TO_KJ_PER_MOL * 1000.0 / len(atoms)  # meV/atom
    drift = np.polyfit(times, energies, 1)[0]  # meV/atom/ps
    spread = energies.max() - energies.min()
    print(f"\nNVE: drift {drift:+.5f} meV/atom/ps, max-min {spread:.5f} meV/atom over {times[-1]:.2f} ps")
    assert np.all(np.isfinite(energies))
    assert abs(drift) < 0.01
    assert spread < 0.05


def test_npt_monte_carlo_barostat(model_pt):
    atoms = water_box(2, spacing=3.3, seed=7)
    system = MLPotential("allscaip", modelPath=str(model_pt)).createSystem(topology_of(atoms, 3))
    system.addForce(openmm.MonteCarloBarostat(1 * unit.bar, 300 * unit.kelvin, 5))
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 5 / unit.picosecond, 0.5 * unit.femtosecond)
    integrator.setRandomNumberSeed(3)
    ctx = context_for(system, atoms, integrator=integrator)
    ctx.setParameter(openmm.MonteCarloBarostat.Pressure(), 1.0)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, 2)
    v0 = atoms.get_volume() / 1000.0
    volumes = []
    for _ in range(10):
        integrator.step(20)
        st = ctx.getState(getEnergy=True)
        volumes.append(st.getPeriodicBoxVolume().value_in_unit(unit.nanometer**3))
        assert np.isfinite(st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    volumes = np.asarray(volumes)
    print(f"\nNPT: V/V0 from {volumes.min() / v0:.4f} to {volumes.max() / v0:.4f}")
    assert np.any(np.abs(volumes / v0 - 1) > 1e-6)  # the barostat moved the box
    assert np.all(np.abs(volumes / v0 - 1) < 0.3)
    # the force used the barostat's box: energy equals the calculator's at the final box
    st = ctx.getState(getEnergy=True, getPositions=True)
    final = atoms.copy()
    final.set_cell(st.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom))
    final.positions = st.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    e_ref, _ = reference(final, model_pt)
    e = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert abs(e - e_ref) <= 1e-6 * abs(e_ref)


def test_ml_mm_one_ml_water_in_tip3p(model_pt):
    atoms = water_box(4, seed=11)  # 64 waters, 12.4 Å box
    top = topology_of(atoms, 3, water_names=True)
    ff = app.ForceField("amber14/tip3p.xml")
    mm = ff.createSystem(
        top, nonbondedMethod=app.PME, nonbondedCutoff=0.6 * unit.nanometer, constraints=None, rigidWater=True
    )
    ml_atoms = [0, 1, 2]
    mixed = MLPotential("allscaip", modelPath=str(model_pt)).createMixedSystem(top, mm, ml_atoms, forceGroup=1)
    # the ML water is flexible (its constraints removed), the others stay rigid
    constrained = {mixed.getConstraintParameters(k)[0] for k in range(mixed.getNumConstraints())}
    assert not constrained & set(ml_atoms) and mixed.getNumConstraints() == 3 * 63
    for force in mixed.getForces():
        force.setForceGroup(1 if force.getName() == "AllScAIP" else 0)
    integrator = openmm.VerletIntegrator(0.5 * unit.femtosecond)
    ctx = context_for(mixed, atoms, integrator=integrator)
    ctx.applyConstraints(1e-8)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, 4)
    integrator.step(10)
    st = ctx.getState(getEnergy=True, getPositions=True)
    assert np.isfinite(st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    e_ml = ctx.getState(getEnergy=True, groups={1}).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    # the isolated molecule, made whole (the box was built with wrapped coordinates)
    from ase.geometry import find_mic

    pos = st.getPositions(asNumpy=True).value_in_unit(unit.angstrom)[ml_atoms]
    box = st.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom)
    water = atoms[ml_atoms].copy()
    water.pbc = False
    water.set_cell(np.zeros((3, 3)))
    water.positions = pos[0] + find_mic(pos - pos[0], box, pbc=True)[0]
    e_ref, _ = reference(water, model_pt)
    assert abs(e_ml - e_ref) <= 1e-6 * abs(e_ref)
    # ML-ML nonbonded pairs are excluded from the force field, ML-MM ones are not
    nb = next(f for f in mixed.getForces() if isinstance(f, openmm.NonbondedForce))
    pairs = {tuple(sorted(nb.getExceptionParameters(k)[:2])) for k in range(nb.getNumExceptions())}
    assert {(0, 1), (0, 2), (1, 2)} <= pairs and (0, 3) not in pairs


def test_node_encoding_model_runs_in_both_forces(tmp_path):
    """A sinc_pairs model exported to TorchScript: the PythonForce and the TorchForce module pass
    its encoding pairs and agree with the ASE calculator on the .pt."""
    model = small_model(node_encoding="sinc_pairs", encoding_range=7.5, encoding_freqs=8)
    with torch.no_grad():
        model.encoding_weights.mul_(10.0)  # a bias of order one, as in tests/test_node_encoding.py
    path = tmp_path / "encoding.pt"
    export_torchscript(model, path, build_metadata(model, "float64", "cpu", "torchscript"))
    atoms = water_box(2, cell_skew=True, seed=5)  # cell smaller than the encoding range
    atoms.info.update(charge=0, spin=1)
    atoms.calc = AllScAIPCalculator(path)
    e_ref = atoms.get_potential_energy() * EV_TO_KJ_PER_MOL
    f_ref = atoms.get_forces() * KJ_NM_PER_EV_A
    pos_nm, box_nm = atoms.positions * 0.1, atoms.cell.array * 0.1
    e, f = AllScAIPComputation(path, atoms.numbers, True).evaluate(pos_nm, box_nm)
    assert abs(e - e_ref) <= 1e-10 * abs(e_ref)
    np.testing.assert_allclose(f, f_ref, atol=1e-9 * np.abs(f_ref).max())
    tf = write_torchforce_module(path, topology_of(atoms, 3), tmp_path / "tf.pt", outputs_forces=True)
    e, f, _ = call_like_torchforce(torch.jit.load(str(tf)), pos_nm, box_nm, "cuda-float64", True)
    assert abs(e - e_ref) <= 1e-10 * abs(e_ref)
    np.testing.assert_allclose(f, f_ref, atol=1e-9 * np.abs(f_ref).max())
