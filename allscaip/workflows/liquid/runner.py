"""The liquid protocol, in segments that survive interruption.

For one potential (an allscaip model, or the water teacher) in ``run_dir``:

1. ``liquid/build``: pack ``n_molecules`` copies at the packing density (0.95 x the
   experimental density when the liquid is known, else 0.95 g/cm^3) -> ``liquid/initial.xyz``;
2. ``liquid/minimise``: energy minimisation, Maxwell-Boltzmann velocities at T;
3. ``liquid/equil_NNN``: NPT equilibration, ``equilibrate_ps`` in segments of ``segment_ps``;
4. ``liquid/prod_NNN``: NPT production, ``production_ps`` in segments;
5. ``gas/minimise``, ``gas/equil_NNN``, ``gas/prod_NNN``: one molecule, no periodic
   boundaries, NVT Langevin;
6. analysis and report (:mod:`.analysis`, :mod:`.report`).

Each task ends by writing its checkpoint and sample file and then recording itself in
``progress.json`` (atomically), so ``resume=True`` continues after the last completed task
and never redoes one. ``settings.json`` holds the settings; a resumed run must agree on the
fields in ``Settings.IDENTITY`` (the run lengths may change: a longer ``production_ps``
appends segments).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import ase.io
import numpy as np
import torch
from tqdm import tqdm

from allscaip.reproducible import seed_for, sha256_file
from allscaip.workflows.liquid import analysis, build, report
from allscaip.workflows.liquid.build import InputError, Molecule
from allscaip.workflows.liquid.engine_lammps import LammpsEngine
from allscaip.workflows.liquid.settings import Settings, read_records, write_json, write_records

PROGRESS_FILE = "progress.json"
SETTINGS_FILE = "settings.json"
DEFAULT_PACK_FRACTION = 0.95
DEFAULT_PACK_DENSITY = 0.95  # g/cm^3 when the liquid is not in the experimental table


@dataclass
class Task:
    phase: str  # "liquid" or "gas"
    stage: str  # "build", "minimise", "equil_000", "prod_000", ...
    steps: int = 0

    @property
    def name(self) -> str:
        return f"{self.phase}/{self.stage}"

    @property
    def is_md(self) -> bool:
        return self.steps > 0


class Incomplete(Exception):
    """Raised internally when ``max_segments`` stops a run early."""


def tasks_for(settings: Settings) -> List[Task]:
    seg = settings.segment_steps()
    out = [Task("liquid", "build"), Task("liquid", "minimise")]
    for kind, length in (("equil", settings.equilibrate_ps), ("prod", settings.production_ps)):
        out += [Task("liquid", f"{kind}_{i:03d}", seg) for i in range(settings.n_segments(length))]
    out.append(Task("gas", "minimise"))
    for kind, length in (("equil", settings.gas_equilibrate_ps), ("prod", settings.gas_production_ps)):
        out += [Task("gas", f"{kind}_{i:03d}", seg) for i in range(settings.n_segments(length))]
    return out


def prepare_molecule(settings: Settings, log: Callable[[str], None] = print):
    """Molecule, model info (None for the teacher), packing density and box edge, with every
    input check: parseable molecule, elements in the model, box edge > 2 x cutoff."""
    mol = build.load_molecule(settings.molecule, seed=settings.seed)
    liq, how = mol.experimental()
    info = None
    if settings.potential == "teacher":
        if not mol.is_water():
            raise InputError(
                f"--teacher is the flexible TIP3P water teacher and runs water only; {settings.molecule!r} is "
                f"{mol.formula}"
            )
        mol = mol.water_ordered()
        # the teacher needs OpenMM, an optional dependency (the engines extra)
        from allscaip.workflows.teacher.system import CUTOFF_NM

        cutoff, what = CUTOFF_NM * 10.0, "teacher (flexible TIP3P, LJPME)"
    else:
        if not settings.model:
            raise InputError("--model is required (or use --teacher alone for the water teacher)")
        if settings.engine == "lammps" and Path(settings.model).suffix.lower() not in (".pt", ".pt2"):
            raise InputError(
                f"--engine lammps needs an exported model (.pt TorchScript or .pt2 AOTInductor) for pair_style "
                f"allscaip, got {Path(settings.model).name}; export it with allscaip-export or use --engine openmm"
            )
        info = build.model_info(settings.model)
        build.check_elements(mol, info.atomic_numbers, f"model {Path(settings.model).name}")
        cutoff, what = info.cutoff, f"model {Path(settings.model).name}"
    density = settings.pack_density_g_cm3
    if density is None:
        density = DEFAULT_PACK_FRACTION * liq.density_g_cm3 if liq is not None else DEFAULT_PACK_DENSITY
    edge = build.check_box(settings.n_molecules, mol, density, cutoff, what)
    return mol, info, float(density), edge, cutoff, (liq, how)


class Runner:
    """Runs (or resumes) the protocol for one potential in ``run_dir``."""

    def __init__(
        self,
        settings: Settings,
        run_dir: Path,
        resume: bool = False,
        max_segments: Optional[int] = None,
        show_progress: bool = True,
        log: Callable[[str], None] = print,
    ):
        self.settings = settings
        self.dir = Path(run_dir)
        self.resume = resume
        self.max_segments = max_segments
        self.show_progress = show_progress
        self.log = log
        self.engines: Dict[str, object] = {}
        self.segments_run = 0

    # ------------------------------------------------------------------ bookkeeping
    def _progress_path(self) -> Path:
        return self.dir / PROGRESS_FILE

    def _load_progress(self) -> dict:
        p = self._progress_path()
        if p.exists():
            return json.loads(p.read_text())
        return {"completed": {}}

    def _mark_done(self, progress: dict, task: Task, **info) -> None:
        info.update(finished_at=_dt.datetime.now().isoformat(timespec="seconds"), steps=task.steps)
        progress["completed"][task.name] = info
        write_json(self._progress_path(), progress)

    def _check_settings(self) -> None:
        sp = self.dir / SETTINGS_FILE
        if sp.exists():
            old = Settings.from_dict(json.loads(sp.read_text()), where=str(sp))
            if not self.resume and self._load_progress()["completed"]:
                raise InputError(f"{self.dir} already holds a run; continue it with --resume or choose another --out")
            if self.resume:
                bad = self.settings.mismatches(old)
                if bad:
                    raise InputError(f"cannot resume the run in {self.dir}: settings differ: " + "; ".join(bad))
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(sp, self.settings.as_dict())

    # ------------------------------------------------------------------ engines
    def _engine(self, phase: str, mol: Molecule, edge: Optional[float]):
        if phase in self.engines:
            return self.engines[phase]
        s = self.settings
        workdir = self.dir / phase
        workdir.mkdir(parents=True, exist_ok=True)
        if s.engine == "lammps" and s.potential == "model":
            eng = LammpsEngine(phase, mol, s.n_molecules, s, workdir)
        elif s.engine in ("openmm", "lammps"):
            # OpenMM is an optional dependency (the engines extra): imported when a run needs it
            from allscaip.workflows.liquid.engine_openmm import OpenMMEngine

            eng = OpenMMEngine(phase, mol, s.n_molecules, s, edge)
        else:
            raise InputError(f"unknown engine {s.engine!r} (openmm or lammps)")
        self.engines[phase] = eng
        return eng

    def _checkpoint(self, task: Task) -> Path:
        ext = ".restart" if (self.settings.engine == "lammps" and self.settings.potential == "model") else ".xml"
        return self.dir / task.phase / f"{task.stage}{ext}"

    # ------------------------------------------------------------------ main
    def run(self) -> dict:
        """Run the remaining tasks, then analyse. Returns the report dictionary, or
        ``{"status": "incomplete", ...}`` when ``max_segments`` stopped the run."""
        restore = _configure_threads(self.settings)
        try:
            return self._run()
        finally:
            restore()

    def _run(self) -> dict:
        s = self.settings
        mol, info, density, edge, cutoff, exp = prepare_molecule(s, self.log)
        if info is not None and not s.model_sha256:
            s.model_sha256 = sha256_file(s.model)
        self._check_settings()
        progress = self._load_progress()
        tasks = tasks_for(s)
        for phase in ("liquid", "gas"):  # completed tasks must be a prefix of each phase's task list
            flags = [t.name in progress["completed"] for t in tasks if t.phase == phase]
            if any(flags[k + 1] and not flags[k] for k in range(len(flags) - 1)):
                raise InputError(
                    f"cannot resume {self.dir} with these run lengths: a {phase} task before a completed one is "
                    "missing (only production may be lengthened once it has started, not equilibration)"
                )
        todo = [t for t in tasks if t.name not in progress["completed"]]
        done_before = len(tasks) - len(todo)
        if self.resume and done_before:
            self.log(f"[{self.dir.name}] resuming: {done_before} of {len(tasks)} tasks already done")
        bars: Dict[str, object] = {}

        def bar_for(phase: str):
            """One progress bar per phase (a gas-phase step costs far less than a liquid one)."""
            steps = sum(t.steps for t in todo if t.phase == phase)
            if not self.show_progress or not steps:
                return None
            if phase not in bars:
                for b in bars.values():
                    b.close()
                bars[phase] = tqdm(
                    total=steps,
                    unit="step",
                    desc=f"{self.dir.name} {phase}",
                    file=sys.stderr,
                    dynamic_ncols=True,
                    smoothing=0.1,
                )
            return bars[phase]

        try:
            prev_by_phase = {t.phase: None for t in tasks}
            for t in tasks:
                if t.name in progress["completed"]:
                    prev_by_phase[t.phase] = t
                    continue
                if t.is_md and self.max_segments is not None and self.segments_run >= self.max_segments:
                    raise Incomplete()
                self._do_task(
                    t, prev_by_phase[t.phase], mol, density, edge, progress, bar_for(t.phase) if t.is_md else None
                )
                prev_by_phase[t.phase] = t
        except Incomplete:
            left = [t.name for t in tasks if t.name not in progress["completed"]]
            msg = (
                f"[{self.dir.name}] stopped after {self.segments_run} segment(s) (--max-segments); "
                f"{len(left)} task(s) left; continue with --resume"
            )
            self.log(msg)
            return {
                "status": "incomplete",
                "run_dir": str(self.dir),
                "remaining": left,
                "segments_run": self.segments_run,
            }
        finally:
            for b in bars.values():
                b.close()
            for eng in self.engines.values():
                eng.close()
            self.engines.clear()
        return self.analyse(mol, info, density, cutoff, exp, tasks, progress)

    def _do_task(
        self, t: Task, prev: Optional[Task], mol: Molecule, density: float, edge: float, progress: dict, bar
    ) -> None:
        s = self.settings
        phase_dir = self.dir / t.phase
        phase_dir.mkdir(parents=True, exist_ok=True)
        seed = seed_for(s.seed, t.name)
        t0 = time.time()
        if t.stage == "build":
            atoms = build.pack_box(
                mol, s.n_molecules, density, seed=s.seed, tolerance=s.pack_tolerance_ang, method=s.packer
            )
            ase.io.write(phase_dir / "initial.xyz", atoms, format="extxyz")
            ase.io.write(phase_dir / "initial.pdb", atoms, format="proteindatabank")
            self._mark_done(
                progress,
                t,
                wall_s=time.time() - t0,
                packer=atoms.info["packer"],
                density_g_cm3=build.mass_density(atoms),
                box_edge_ang=float(atoms.cell[0, 0]),
            )
            self.log(
                f"[{self.dir.name}] packed {s.n_molecules} x {mol.formula} at {density:.4f} g/cm^3 "
                f"({atoms.info['packer']}), box edge {atoms.cell[0, 0]:.3f} Å"
            )
            return
        eng = self._engine(t.phase, mol, edge)
        ckpt = self._checkpoint(t)
        if t.stage == "minimise":
            if t.phase == "liquid":
                atoms = ase.io.read(phase_dir / "initial.xyz", format="extxyz")
            else:
                atoms = mol.atoms.copy()
            res = eng.minimise(atoms, ckpt, seed)
            self._mark_done(progress, t, wall_s=time.time() - t0, checkpoint=ckpt.name, **res)
            return
        if bar is not None:
            bar.set_postfix_str(t.name, refresh=False)
        start_steps = [0]

        def tick(k: int) -> None:
            start_steps[0] += k
            if bar is not None:
                el = time.time() - t0
                if el > 0:
                    ns_day = start_steps[0] * s.timestep_fs * 1e-6 / (el / 86400.0)
                    bar.set_postfix_str(f"{t.name} {ns_day:.3g} ns/day", refresh=False)
                bar.update(k)

        records = eng.run(self._checkpoint(prev), ckpt, t.steps, seed, tick)
        data = phase_dir / f"{t.stage}.csv"
        write_records(data, records)
        if t.phase == "liquid":
            try:
                eng.write_structure(phase_dir / "last.pdb")
            except Exception:  # a convenience file only
                pass
        wall = time.time() - t0
        self._mark_done(
            progress,
            t,
            wall_s=wall,
            checkpoint=ckpt.name,
            data=data.name,
            ns_per_day=t.steps * s.timestep_fs * 1e-6 / (wall / 86400.0),
        )
        self.segments_run += 1

    # ------------------------------------------------------------------ analysis
    def _series(self, tasks: List[Task], phase: str, kind: str) -> np.ndarray:
        parts = [
            read_records(self.dir / phase / f"{t.stage}.csv")
            for t in tasks
            if t.phase == phase and t.stage.startswith(kind)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, 7))

    def analyse(self, mol, info, density, cutoff, exp, tasks, progress) -> dict:
        s = self.settings
        n = s.n_molecules
        liq_eq = self._series(tasks, "liquid", "equil")
        liq = self._series(tasks, "liquid", "prod")
        gas_eq = self._series(tasks, "gas", "equil")
        gas = self._series(tasks, "gas", "prod")
        if len(liq) < 2 or len(gas) < 2:
            raise InputError(
                "production too short to analyse: need at least two samples per phase "
                "(increase --production-ps / --gas-production-ps or decrease --sample-every-fs)"
            )
        dt = s.sample_steps * s.timestep_fs * 1e-3
        st = {
            "density_g_cm3": analysis.analyse_series(liq[:, 6], sample_interval_ps=dt),
            "u_liquid_per_molecule_kJ_mol": analysis.analyse_series(liq[:, 2] / n, sample_interval_ps=dt),
            "u_gas_kJ_mol": analysis.analyse_series(gas[:, 2], sample_interval_ps=dt),
            "temperature_liquid_K": analysis.analyse_series(liq[:, 4], detect=False, sample_interval_ps=dt),
            "temperature_gas_K": analysis.analyse_series(gas[:, 4], detect=False, sample_interval_ps=dt),
        }
        hvap = analysis.heat_of_vaporization(st["u_gas_kJ_mol"], st["u_liquid_per_molecule_kJ_mol"], s.temperature_K)
        rep = report.build_report(self, mol, info, density, cutoff, exp, st, hvap, progress)
        report.write_report(self.dir, rep)
        try:
            report.plot(self.dir, rep, liq_eq, liq, gas_eq, gas, n)
        except Exception as err:  # plots are a convenience; the numbers are in report.json
            self.log(f"[{self.dir.name}] plotting failed: {type(err).__name__}: {err}")
        return rep


def _configure_threads(s: Settings) -> Callable[[], None]:
    """torch threads (``--threads``; also OMP_NUM_THREADS for lmp) and the TorchScript executor
    mode (as in the LAMMPS plugin: plain interpretation unless ALLSCAIP_JIT_OPTIMIZE=1, because
    the profiling executor re-specialises on every new neighbour count). Returns a function
    that restores the previous settings."""
    old_threads = torch.get_num_threads()
    old_omp = os.environ.get("OMP_NUM_THREADS")
    old_opt = torch._C._get_graph_executor_optimize()
    if s.threads:
        torch.set_num_threads(int(s.threads))
        os.environ["OMP_NUM_THREADS"] = str(int(s.threads))
    opt = os.environ.get("ALLSCAIP_JIT_OPTIMIZE", "")
    torch._C._set_graph_executor_optimize(bool(opt) and opt != "0")

    def restore() -> None:
        torch.set_num_threads(old_threads)
        if old_omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old_omp
        torch._C._set_graph_executor_optimize(old_opt)

    return restore
