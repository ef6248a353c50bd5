"""LAMMPS engine: ``pair_style allscaip`` (the plugin in ``build/lammps_plugin``), run as an
``lmp`` subprocess per stage.

Units ``metal`` (Å, eV, ps, bar), ``atom_style atomic``, ``newton on``.

* minimisation: ``minimize`` (CG) at fixed box, then ``velocity create`` at T and
  ``write_restart``;
* liquid segments: ``fix npt temp T T Tdamp iso P P Pdamp`` (Nose-Hoover chains, MTK barostat);
* gas segments: one molecule, ``boundary s s s`` (non-periodic, shrink-wrapped), ``fix nve`` +
  ``fix langevin T T 1/friction seed zero no gjf vhalf`` (GJF: accurate configurations at large steps).

Every segment starts from the previous segment's restart file and writes its own, so the
runner can resume after the last complete segment. Samples come from ``fix print`` every
``sample_steps`` (``thermo`` runs on the same steps so that ``pe`` is tallied); energies are
converted to kJ/mol, volumes to nm^3. ``lmp`` is ``settings.lmp``, else the one
:func:`allscaip.engines.lammps.find_lmp` finds, with the plugin that
:func:`allscaip.engines.lammps.find_plugin_dir` finds.
"""

from __future__ import annotations

import subprocess
from collections import deque
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from allscaip.engines.lammps import LammpsError, find_lmp, lmp_environment
from allscaip.units import EV_TO_KJ_PER_MOL
from allscaip.workflows.liquid.build import Molecule
from allscaip.workflows.liquid.settings import Settings


def minimise_ftol(rms_kj_mol_nm: float, n_atoms: int) -> float:
    """LAMMPS ``minimize`` force tolerance (2-norm of the 3N force vector, eV/Å) equivalent to
    OpenMM's stopping rule (RMS force component, kJ/mol/nm). With a fixed 1e-3 eV/Å a learned
    potential never converges and CG spends every allowed iteration (10 min for 64 waters)."""
    if rms_kj_mol_nm <= 0:
        raise ValueError(f"minimise tolerance must be positive, got {rms_kj_mol_nm} kJ/mol/nm")
    return rms_kj_mol_nm / EV_TO_KJ_PER_MOL / 10.0 * float(np.sqrt(3 * n_atoms))


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


class LammpsEngine:
    """One phase ('liquid' or 'gas') of a run in LAMMPS."""

    name = "lammps"

    def __init__(self, phase: str, mol: Molecule, n_molecules: int, settings: Settings, workdir: Path):
        if settings.potential != "model":
            raise ValueError("the LAMMPS engine runs allscaip models only (the teacher runs in OpenMM)")
        self.phase = phase
        self.settings = settings
        self.mol = mol
        self.n_molecules = n_molecules if phase == "liquid" else 1
        self.periodic = phase == "liquid"
        self.workdir = Path(workdir)
        self.lmp = find_lmp(settings.lmp)
        self.env = lmp_environment()
        # one atom type per distinct (element, mass) in order of first appearance in the molecule
        # (hydrogen mass repartitioning can give atoms of one element different masses)
        masses = mol.masses(settings.hydrogen_mass_amu)
        kinds = [(int(z), round(float(m), 6)) for z, m in zip(mol.atoms.numbers, masses)]
        self.type_kinds: list[tuple[int, float]] = list(dict.fromkeys(kinds))
        self.atom_types = np.array([self.type_kinds.index(k) + 1 for k in kinds])
        self.type_numbers: list[int] = [z for z, _ in self.type_kinds]
        self.model_path = str(Path(settings.model).resolve())

    # ------------------------------------------------------------------ inputs
    def write_data(self, atoms: Atoms, path: Path) -> None:
        """``atoms``: ``n_molecules`` copies of the molecule, atoms in the molecule's order."""
        types = np.tile(self.atom_types, self.n_molecules)
        if not np.array_equal(atoms.numbers, np.tile(self.mol.atoms.numbers, self.n_molecules)):
            raise LammpsError("internal: the box's atoms are not whole molecules in the molecule's atom order")
        pos = atoms.positions.copy()
        if self.periodic:
            L = float(atoms.cell[0, 0])
            pos = pos - L * np.floor(pos / L)
            lo, hi = [0.0] * 3, [L] * 3
        else:
            pad = 10.0
            lo = list(pos.min(axis=0) - pad)
            hi = list(pos.max(axis=0) + pad)
        lines = [
            f"LAMMPS data file: allscaip liquid workflow ({self.phase}, {self.n_molecules} x {self.mol.formula})",
            "",
            f"{len(atoms)} atoms",
            f"{len(self.type_numbers)} atom types",
            "",
        ]
        for d, ax in enumerate("xyz"):
            lines.append(f"{lo[d]:.10f} {hi[d]:.10f} {ax}lo {ax}hi")
        lines += ["", "Masses", ""]
        for t, (z, m) in enumerate(self.type_kinds):
            lines.append(f"{t + 1} {m:.6f}  # {chemical_symbols[z]}")
        lines += ["", "Atoms # atomic", ""]
        for i, (t, p) in enumerate(zip(types, pos)):
            lines.append(f"{i + 1} {int(t)} {p[0]:.10f} {p[1]:.10f} {p[2]:.10f}")
        path.write_text("\n".join(lines) + "\n")

    def _header(self, read: str) -> list[str]:
        s = self.settings
        els = " ".join(chemical_symbols[z] for z in self.type_numbers)
        lines = ["units metal", "atom_style atomic", "atom_modify map array"]
        if read.startswith("read_data"):
            lines.append("boundary p p p" if self.periodic else "boundary s s s")
        lines += [
            "newton on",
            read,
            "pair_style allscaip" + (f" device {s.device}" if s.device != "cpu" else ""),
            f"pair_coeff * * {self.model_path} {els}",
            "neighbor 2.0 bin" if self.periodic else "neighbor 2.0 nsq",
            "neigh_modify every 1 delay 0 check yes",
            f"timestep {s.timestep_fs * 1e-3:.10g}",
        ]
        return lines

    # ------------------------------------------------------------------ execution
    def _run_lmp(
        self, name: str, lines: list[str], steps_total: int = 0, progress: Optional[Callable[[int], None]] = None
    ) -> None:
        inp = self.workdir / f"{name}.in"
        inp.write_text("\n".join(lines) + "\n")
        log = self.workdir / f"{name}.log"
        cmd = [self.lmp, "-in", inp.name, "-log", log.name, "-nocite"]
        tail: deque = deque(maxlen=40)
        first = last = None  # thermo steps: the first line is the run's first step
        proc = subprocess.Popen(
            cmd, cwd=self.workdir, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                tail.append(line.rstrip())
                if progress is not None:
                    tok = line.split()
                    if len(tok) == 7 and tok[0].isdigit() and all(_is_number(t) for t in tok):
                        step = int(tok[0])
                        if first is None:
                            first = last = step
                        elif last < step <= first + steps_total:
                            progress(step - last)
                            last = step
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if rc != 0 or any(t.startswith("ERROR") for t in tail):
            errors = [t for t in tail if "ERROR" in t]
            raise LammpsError(
                f"lmp failed on {inp} (exit {rc}): " + (" | ".join(errors) if errors else "\n".join(tail))
            )

    def minimise(self, atoms: Atoms, checkpoint_out: Path, seed: int) -> dict:
        """CG minimisation to OpenMM's stopping rule, then velocities at T and a restart file."""
        s = self.settings
        data = self.workdir / "initial.data"
        self.write_data(atoms, data)
        lines = (
            self._header(f"read_data {data.name}")
            + [
                "thermo 50",
                "thermo_style custom step pe fnorm",
                "thermo_modify norm no",
                "run 0",
                'print "ALLSCAIP_E0 $(pe:%.12g)"',
            ]
            + (
                [
                    "min_style cg",
                    f"minimize 0.0 {minimise_ftol(s.minimise_tolerance_kj_mol_nm, len(atoms)):.6g} "
                    f"{int(s.minimise_max_iterations)} {10 * int(s.minimise_max_iterations)}",
                ]
                if s.minimise_max_iterations > 0
                else []
            )
            + [
                'print "ALLSCAIP_E1 $(pe:%.12g)"',
                "reset_timestep 0",
                f"velocity all create {s.temperature_K} {int(seed) % 900000000 + 1} dist gaussian mom yes "
                f"rot {'no' if self.periodic else 'yes'}",
                f"write_restart {Path(checkpoint_out).name}",
            ]
        )
        self._run_lmp(Path(checkpoint_out).stem, lines)
        e = {}
        for line in (self.workdir / f"{Path(checkpoint_out).stem}.log").read_text().splitlines():
            if line.startswith("ALLSCAIP_E0 "):
                e["energy_before_kJ_mol"] = float(line.split()[1]) * EV_TO_KJ_PER_MOL
            elif line.startswith("ALLSCAIP_E1 "):
                e["energy_after_kJ_mol"] = float(line.split()[1]) * EV_TO_KJ_PER_MOL
        return e

    def run(
        self,
        checkpoint_in: Path,
        checkpoint_out: Path,
        n_steps: int,
        seed: int,
        progress: Optional[Callable[[int], None]] = None,
    ) -> np.ndarray:
        s = self.settings
        name = Path(checkpoint_out).stem
        every = s.sample_steps
        dat = self.workdir / f"{name}.dat"
        if dat.exists():
            dat.unlink()
        lines = self._header(f"read_restart {Path(checkpoint_in).name}") + [
            f"thermo {every}",
            "thermo_style custom step temp pe ke vol density press",
            "thermo_modify norm no flush yes",
        ]
        T = s.temperature_K
        if self.periodic:
            P = s.pressure_bar
            lines.append(f"fix integ all npt temp {T} {T} {s.thermostat_damp_ps} iso {P} {P} {s.barostat_damp_ps}")
        else:
            # one molecule under Langevin: all 3N degrees of freedom are thermalised (no momentum conservation)
            # `zero no`: with `zero yes` the friction drains the centre-of-mass motion that no
            # random force restores, and T (9 degrees of freedom) reads low. GJF (`gjf vhalf`,
            # listed before `fix nve`) samples configurations accurately at the large steps of
            # --hydrogen-mass runs: ⟨U_gas⟩ then matches OpenMM's LangevinMiddle (docs/validation.md)
            lines += [
                "compute_modify thermo_temp extra/dof 0",
                f"fix thermostat all langevin {T} {T} {1.0 / s.friction_per_ps} {int(seed) % 900000000 + 1} "
                "zero no gjf vhalf",
                "fix integ all nve",
            ]
        lines += [
            f'fix rec all print {every} "$(step) $(pe:%.15g) $(ke:%.15g) $(temp:%.10g) $(vol:%.15g) $(density:%.12g)" '
            f'file {dat.name} screen no title "# step pe_eV ke_eV temp_K vol_A3 density_g_cm3"',
            f"run {int(n_steps)}",
            f"write_restart {Path(checkpoint_out).name}",
        ]
        self._run_lmp(name, lines, n_steps, progress)
        raw = np.loadtxt(dat, comments="#", ndmin=2)
        if len(raw) == n_steps // every + 1:  # fix print also fires on the run's first step
            raw = raw[1:]
        if len(raw) != n_steps // every:
            raise LammpsError(f"{dat}: expected {n_steps // every} samples, got {len(raw)}")
        step, pe, ke, temp, vol, rho = raw.T
        if not self.periodic:
            vol = rho = np.full_like(pe, np.nan)
        else:
            vol = vol / 1000.0
        out = np.stack(
            [step, step * s.timestep_fs * 1e-3, pe * EV_TO_KJ_PER_MOL, ke * EV_TO_KJ_PER_MOL, temp, vol, rho], 1
        )
        if not np.all(np.isfinite(out[:, 2])):
            raise LammpsError(f"{self.phase}: the potential energy became non-finite in {name}")
        return out

    def write_structure(self, path: Path) -> None:  # the restart files hold the structure
        pass

    def close(self) -> None:
        pass
