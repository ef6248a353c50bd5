"""OpenMM engine: an allscaip model (``allscaip_openmm.MLPotential``, a PythonForce) or the
flexible TIP3P teacher (:mod:`allscaip.workflows.teacher.system`, LJPME) in OpenMM.

Liquid: ``LangevinMiddleIntegrator`` (friction ``friction_per_ps``) + ``MonteCarloBarostat``
(isotropic, every ``barostat_interval`` steps), CMMotionRemover. For the model, a
zero-strength ``HarmonicBondForce`` over the molecule's bonds tells OpenMM which atoms form a
molecule, so the barostat scales molecular centres (as it does for the teacher, whose force
field has real bonds). Gas: one molecule, no periodic box (model: non-periodic PythonForce;
teacher: ``NoCutoff``), Langevin NVT.

Checkpoints are OpenMM ``State`` XML files (positions, velocities, box, parameters, time and
step count), portable across platforms; :func:`read_state` reads their positions and box.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from ase import Atoms

try:
    import openmm
    import openmm.app as app
    import openmm.unit as unit
except ImportError as exc:  # pragma: no cover - OpenMM is an optional dependency
    raise ImportError("the openmm engine needs OpenMM (pip install openmm==8.6.1)") from exc

from allscaip.units import ANGSTROM_PER_NM, BOLTZMANN_KJ_PER_MOL_K, mass_density_g_cm3
from allscaip.workflows.liquid.build import Molecule
from allscaip.workflows.liquid.settings import Settings
from allscaip.workflows.teacher import system as teacher
from allscaip_openmm import MLPotential

A3_PER_NM3 = ANGSTROM_PER_NM**3


def state_arrays(st: openmm.State) -> tuple[np.ndarray, np.ndarray]:
    """(positions Å [N,3], box Å [3,3]) of an OpenMM State."""
    pos = np.asarray(st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)) * ANGSTROM_PER_NM
    box = (
        np.asarray([[v.x, v.y, v.z] for v in st.getPeriodicBoxVectors().value_in_unit(unit.nanometer)])
        * ANGSTROM_PER_NM
    )
    return pos, box


def read_state(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(positions Å [N,3], box Å [3,3]) of an OpenMM State XML (this engine's checkpoints)."""
    return state_arrays(openmm.XmlSerializer.deserialize(Path(path).read_text()))


def _model_topology(mol: Molecule, n_molecules: int, box_ang: Optional[float]) -> app.Topology:
    top = app.Topology()
    chain = top.addChain()
    counts: dict = {}
    names = []
    for s in mol.atoms.get_chemical_symbols():
        counts[s] = counts.get(s, 0) + 1
        names.append(f"{s}{counts[s]}")
    for _ in range(n_molecules):
        res = top.addResidue("MOL", chain)
        atoms = [
            top.addAtom(nm, app.element.Element.getByAtomicNumber(int(z)), res)
            for nm, z in zip(names, mol.atoms.numbers)
        ]
        for a, b in mol.bonds:
            top.addBond(atoms[a], atoms[b])
    if box_ang is not None:
        top.setPeriodicBoxVectors(np.eye(3) * box_ang / 10.0 * unit.nanometer)
    return top


class OpenMMEngine:
    """One phase ('liquid' or 'gas') of a run in OpenMM."""

    name = "openmm"

    def __init__(
        self, phase: str, mol: Molecule, n_molecules: int, settings: Settings, box_ang: Optional[float] = None
    ):
        if phase not in ("liquid", "gas"):
            raise ValueError(phase)
        self.phase = phase
        self.settings = settings
        self.mol = mol
        self.n_molecules = n_molecules if phase == "liquid" else 1
        self.periodic = phase == "liquid"
        self.box_ang = box_ang
        self._context = None
        self._integrator = None
        self.system, self.topology = self._build_system()
        self.total_mass = sum(
            self.system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(self.system.getNumParticles())
        )
        has_cmm = any(isinstance(f, openmm.CMMotionRemover) for f in self.system.getForces())
        self.dof = 3 * self.system.getNumParticles() - self.system.getNumConstraints() - (3 if has_cmm else 0)

    # ------------------------------------------------------------------ system
    def _build_system(self):
        s = self.settings
        if s.potential == "teacher":
            box_nm = self.box_ang / 10.0 if self.periodic else None
            top = teacher.water_topology(self.n_molecules, box_nm)
            if self.periodic:
                system = teacher.create_system(top, periodic=True, ewald_tolerance=teacher.EWALD_TOLERANCE)
            else:
                system, top = teacher.build_gas_system(1)
        else:
            top = _model_topology(self.mol, self.n_molecules, self.box_ang if self.periodic else None)
            potential = MLPotential("allscaip", modelPath=s.model, device=s.device)
            system = potential.createSystem(top, removeCMMotion=self.periodic)
            if not any(isinstance(f, openmm.CMMotionRemover) for f in system.getForces()) and self.periodic:
                system.addForce(openmm.CMMotionRemover())
            if self.mol.bonds:  # molecule definition for the barostat; zero energy
                bonds = openmm.HarmonicBondForce()
                n = self.mol.natoms
                for m in range(self.n_molecules):
                    for a, b in self.mol.bonds:
                        bonds.addBond(m * n + a, m * n + b, 0.1, 0.0)
                bonds.setForceGroup(31)
                system.addForce(bonds)
        if not self.periodic:  # the gas phase keeps no CMMotionRemover (Langevin on every degree of freedom)
            for k in reversed(range(system.getNumForces())):
                if isinstance(system.getForce(k), openmm.CMMotionRemover):
                    system.removeForce(k)
        if s.hydrogen_mass_amu is not None:  # same per-molecule masses as the LAMMPS engine
            masses = np.tile(self.mol.masses(s.hydrogen_mass_amu), self.n_molecules)
            for i, m in enumerate(masses):
                system.setParticleMass(i, float(m) * unit.dalton)
        if self.periodic:
            baro = openmm.MonteCarloBarostat(
                s.pressure_bar * unit.bar, s.temperature_K * unit.kelvin, int(s.barostat_interval)
            )
            system.addForce(baro)
        return system, top

    def _create_context(self, seed: int):
        s = self.settings
        integ = openmm.LangevinMiddleIntegrator(
            s.temperature_K * unit.kelvin, s.friction_per_ps / unit.picosecond, s.timestep_fs * 1e-3 * unit.picoseconds
        )
        integ.setRandomNumberSeed(int(seed))
        for f in self.system.getForces():
            if isinstance(f, openmm.MonteCarloBarostat):
                f.setRandomNumberSeed(int(seed) ^ 0x5A5A5)
        platform = openmm.Platform.getPlatformByName(s.platform)
        props = {}
        if s.threads and s.platform == "CPU":
            props["Threads"] = str(int(s.threads))
        self._integrator = integ
        self._context = openmm.Context(self.system, integ, platform, props)
        return self._context

    def context(self, seed: int):
        """The Context (created on first use with ``seed`` for its random numbers)."""
        return self._context if self._context is not None else self._create_context(seed)

    # ------------------------------------------------------------------ stages
    def minimise(self, atoms: Atoms, checkpoint_out: Path, seed: int) -> dict:
        """Energy-minimise ``atoms`` (Å), draw Maxwell-Boltzmann velocities, write a checkpoint."""
        s = self.settings
        ctx = self.context(seed)
        if self.periodic:
            L = float(atoms.cell[0, 0]) / 10.0
            ctx.setPeriodicBoxVectors(openmm.Vec3(L, 0, 0), openmm.Vec3(0, L, 0), openmm.Vec3(0, 0, L))
        ctx.setPositions(atoms.positions / 10.0 * unit.nanometer)
        e0 = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        if s.minimise_max_iterations > 0:  # (OpenMM reads 0 as "until converged")
            openmm.LocalEnergyMinimizer.minimize(
                ctx, float(s.minimise_tolerance_kj_mol_nm), int(s.minimise_max_iterations)
            )
        e1 = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        ctx.setVelocitiesToTemperature(s.temperature_K * unit.kelvin, int(seed))
        ctx.setTime(0.0)
        ctx.setStepCount(0)
        self._save(checkpoint_out)
        return {"energy_before_kJ_mol": e0, "energy_after_kJ_mol": e1}

    def _save(self, path: Path) -> None:
        st = self._context.getState(
            getPositions=True, getVelocities=True, getParameters=True, getIntegratorParameters=True
        )
        tmp = Path(str(path) + ".tmp")
        with open(tmp, "w") as fh:
            fh.write(openmm.XmlSerializer.serialize(st))
        os.replace(tmp, path)

    def _load(self, path: Path, seed: int) -> None:
        # a fresh Context per segment, its random numbers seeded by the segment: a run resumed after a
        # crash draws the same numbers as an uninterrupted one (tests/test_crash_resume.py)
        self._context = None
        ctx = self._create_context(seed)
        with open(path) as fh:
            st = openmm.XmlSerializer.deserialize(fh.read())
        ctx.setState(st)

    def run(
        self,
        checkpoint_in: Path,
        checkpoint_out: Path,
        n_steps: int,
        seed: int,
        progress: Optional[Callable[[int], None]] = None,
    ) -> np.ndarray:
        """``n_steps`` of MD from ``checkpoint_in``; records (see ``settings.COLUMNS``) every
        ``sample_steps``; the final state goes to ``checkpoint_out``."""
        s = self.settings
        self._load(checkpoint_in, seed)
        ctx, integ = self._context, self._integrator
        every = s.sample_steps
        rows = []
        done = 0
        while done < n_steps:
            k = min(every, n_steps - done)
            integ.step(k)
            done += k
            st = ctx.getState(getEnergy=True)
            pe = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            ke = st.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
            if not np.isfinite(pe):
                raise RuntimeError(f"{self.phase}: the potential energy became {pe} at step {st.getStepCount()}")
            if self.periodic:
                vol = st.getPeriodicBoxVolume().value_in_unit(unit.nanometer**3)
                rho = mass_density_g_cm3(self.total_mass, vol * A3_PER_NM3)
            else:
                vol = rho = float("nan")
            rows.append(
                (
                    st.getStepCount(),
                    st.getTime().value_in_unit(unit.picosecond),
                    pe,
                    ke,
                    2.0 * ke / (self.dof * BOLTZMANN_KJ_PER_MOL_K),
                    vol,
                    rho,
                )
            )
            if progress is not None:
                progress(k)
        self._save(checkpoint_out)
        return np.array(rows, dtype=float)

    def write_structure(self, path: Path) -> None:
        """The current configuration as PDB."""
        st = self._context.getState(getPositions=True, enforcePeriodicBox=self.periodic)
        top = self.topology
        if self.periodic:
            top.setPeriodicBoxVectors(st.getPeriodicBoxVectors())
        with open(path, "w") as fh:
            app.PDBFile.writeFile(top, st.getPositions(), fh)

    def close(self) -> None:
        self._context = None
        self._integrator = None
