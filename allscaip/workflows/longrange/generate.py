"""Long-range benchmark data, labelled exactly with OpenMM (double-precision Reference platform).

Three data sets, written as extxyz (energy in eV and forces in eV/Å as single-point results,
``charge`` and ``spin`` (multiplicity 1) in ``atoms.info``):

``boxes/``  ±1 point charges ("Na" = +1, "Cl" = -1) in neutral cubic periodic boxes at a fixed
            number density, placed at random (minimum separation ``BOX_DMIN``), with a short-range
            Born-Mayer repulsion ``A exp(-r/rho)`` switched off between 2.6 and 3.0 Å, and
            Coulomb summed by PME (Ewald error tolerance 1e-6). Several box edges; the runner
            trains on some and tests on others. ``info``: ``box`` (edge, Å), ``set``.
``dimers/`` two rigid monomers in random orientations at centre-centre separations ``d`` from
            contact to 15 Å, Coulomb + Lennard-Jones with no cutoff, intramolecular pairs
            excluded (the energy is the intermolecular energy; it goes to 0 at infinite
            separation). Kinds: ``na_water`` (Na+ + TIP3P water, charge +1), ``nh4_formate``
            (NH4+ + HCOO-, hand-assigned charges and LJ, charge 0) and ``na0_water`` (a neutral
            Na atom with the same LJ + water, charge 0: the charge-discrimination partner of
            ``na_water``). ``info``: ``kind``, ``d`` (Na-O or N-C distance, Å), ``dmin``
            (closest intermolecular atom pair, Å). Frames with d <= ``--train-dmax`` are split
            into train/val/test (80/10/10); frames beyond go to the test file only (``set``:
            ``held_out``, ``held_out_tail`` (extra test frames at 6 Å <= d <= train-dmax, where
            the tail is all of the interaction for the local model), ``extrapolation``).
            ``scans.extxyz``: one fixed orientation per kind scanned in ``d`` (the curves).
            ``charge_pairs.extxyz``: the same geometries twice, as Na+ + water (charge +1) and
            neutral Na + water (charge 0): the systems differ only by the charge of a distant atom.

Command line: ``python -m allscaip.workflows.longrange.generate --out DIR [--seed N] [sizes]``; prints a
summary (frames, label ranges, the share of the box forces that comes from beyond the model
cutoff).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence, Tuple

import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

try:  # OpenMM is an optional ("engines") dependency of allscaip.
    import openmm as mm
    import openmm.unit as u
except ImportError as exc:  # pragma: no cover - exercised only without OpenMM
    raise ImportError(
        "the long-range data (allscaip.workflows.longrange) needs OpenMM (pip install openmm==8.6.1)"
    ) from exc

from allscaip.geometry import random_rotation
from allscaip.units import ANGSTROM_PER_NM, EV_TO_KJ_PER_MOL
from allscaip.workflows.longrange.parameters import (
    BOX_DENSITY,
    BOX_DMIN,
    CONTACT_H,
    CONTACT_HEAVY,
    D_MAX,
    D_MIN,
    DIMER_KINDS,
    EWALD_TOL,
    MAX_INTERACTION,
    REP_A,
    REP_RHO,
    REP_SWITCH,
    TAIL_DMIN,
)
from allscaip.workflows.longrange.reference import COULOMB_EV_A, repulsion_force_pair


# --------------------------------------------------------------------------- geometry helpers
def random_unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def monomer_arrays(mono: list) -> Tuple[List[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    sym = [a[0] for a in mono]
    q = np.array([a[1] for a in mono])
    sig = np.array([a[2] for a in mono])
    eps = np.array([a[3] for a in mono])
    pos = np.array([a[4] for a in mono], dtype=float)
    return sym, q, sig, eps, pos


# --------------------------------------------------------------------------- OpenMM labelling


def openmm_label(context, pos: np.ndarray) -> Tuple[float, np.ndarray]:
    """(energy eV, forces eV/Å) of an OpenMM ``context`` at positions ``pos`` (Å)."""
    context.setPositions(pos / ANGSTROM_PER_NM)
    st = context.getState(getEnergy=True, getForces=True)
    e = st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) / EV_TO_KJ_PER_MOL
    f = (
        st.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
        / EV_TO_KJ_PER_MOL
        / ANGSTROM_PER_NM
    )
    return float(e), np.asarray(f, dtype=float)


class DimerLabeller:
    """OpenMM (Reference platform) intermolecular Coulomb + LJ energy of a rigid dimer, no cutoff."""

    def __init__(self, kind: str, dielectric: float = 1.0) -> None:
        a, b = DIMER_KINDS[kind]
        self.kind = kind
        self.sym_a, qa, sa, ea, self.pos_a = monomer_arrays(a)
        self.sym_b, qb, sb, eb, self.pos_b = monomer_arrays(b)
        self.symbols = self.sym_a + self.sym_b
        self.charges = np.concatenate([qa, qb]) / np.sqrt(dielectric)
        self.sigma = np.concatenate([sa, sb])
        self.epsilon = np.concatenate([ea, eb])
        self.na = len(self.sym_a)
        self.total_charge = int(round(float(np.concatenate([qa, qb]).sum())))
        system = mm.System()
        nb = mm.NonbondedForce()
        nb.setNonbondedMethod(mm.NonbondedForce.NoCutoff)
        for q, s, e in zip(self.charges, self.sigma, self.epsilon):
            system.addParticle(1.0)
            nb.addParticle(float(q), float(s) / ANGSTROM_PER_NM, float(e))
        n = len(self.symbols)
        for group in (range(self.na), range(self.na, n)):
            g = list(group)
            for i in range(len(g)):
                for j in range(i + 1, len(g)):
                    nb.addException(g[i], g[j], 0.0, 0.1, 0.0)
        system.addForce(nb)
        self.context = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))

    def place(self, d: float, rot_a: np.ndarray, rot_b: np.ndarray, direction: np.ndarray) -> np.ndarray:
        """Positions (Å): monomer A rotated about its centre atom at the origin, monomer B's centre
        atom at ``d * direction``."""
        return np.concatenate([self.pos_a @ rot_a.T, self.pos_b @ rot_b.T + d * direction])

    def label(self, pos: np.ndarray) -> Tuple[float, np.ndarray]:
        """(energy eV, forces eV/Å) at positions (Å)."""
        return openmm_label(self.context, pos)

    def intermolecular_distances(self, pos: np.ndarray) -> np.ndarray:
        """[atoms of A, atoms of B] distances (Å)."""
        return np.linalg.norm(pos[: self.na, None] - pos[None, self.na :], axis=-1)

    def dmin(self, pos: np.ndarray) -> float:
        return float(self.intermolecular_distances(pos).min())

    def clashes(self, pos: np.ndarray) -> bool:
        d = self.intermolecular_distances(pos)
        h = np.array([s == "H" for s in self.symbols])
        anyh = h[: self.na, None] | h[None, self.na :]
        return bool((d[anyh] < CONTACT_H).any() or (d[~anyh] < CONTACT_HEAVY).any())


class BoxLabeller:
    """OpenMM (Reference platform) PME Coulomb + switched Born-Mayer repulsion of ±1 charges in a
    cubic box of edge ``box`` Å."""

    def __init__(self, charges: Sequence[float], box: float, dielectric: float = 1.0) -> None:
        self.box = float(box)
        self.charges = np.asarray(charges, dtype=float)
        system = mm.System()
        vecs = [
            mm.Vec3(box / ANGSTROM_PER_NM, 0, 0),
            mm.Vec3(0, box / ANGSTROM_PER_NM, 0),
            mm.Vec3(0, 0, box / ANGSTROM_PER_NM),
        ]
        system.setDefaultPeriodicBoxVectors(*vecs)
        nb = mm.NonbondedForce()
        nb.setNonbondedMethod(mm.NonbondedForce.PME)
        nb.setCutoffDistance(min(0.49 * box, 9.0) / ANGSTROM_PER_NM)
        nb.setEwaldErrorTolerance(EWALD_TOL)
        nb.setUseDispersionCorrection(False)
        rep = mm.CustomNonbondedForce("A*exp(-r/rho)")
        rep.addGlobalParameter("A", REP_A * EV_TO_KJ_PER_MOL)
        rep.addGlobalParameter("rho", REP_RHO / ANGSTROM_PER_NM)
        rep.setNonbondedMethod(mm.CustomNonbondedForce.CutoffPeriodic)
        rep.setCutoffDistance(REP_SWITCH[1] / ANGSTROM_PER_NM)
        rep.setUseSwitchingFunction(True)
        rep.setSwitchingDistance(REP_SWITCH[0] / ANGSTROM_PER_NM)
        for q in self.charges:
            system.addParticle(1.0)
            nb.addParticle(float(q) / np.sqrt(dielectric), 0.1, 0.0)
            rep.addParticle([])
        system.addForce(nb)
        system.addForce(rep)
        self.context = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))

    def label(self, pos: np.ndarray) -> Tuple[float, np.ndarray]:
        """(energy eV, forces eV/Å) at positions (Å)."""
        return openmm_label(self.context, pos)


def box_ion_count(box: float, density: float = BOX_DENSITY) -> int:
    """Even number of ions closest to ``density * box^3`` (at least 2)."""
    return max(2, 2 * int(round(density * box**3 / 2.0)))


def random_ions(rng: np.random.Generator, n: int, box: float, dmin: float = BOX_DMIN) -> np.ndarray:
    """``n`` points in a periodic cube, sequentially placed with minimum-image spacing >= dmin."""
    pos = np.zeros((0, 3))
    tries = 0
    while len(pos) < n:
        tries += 1
        if tries > 100000:
            raise RuntimeError(f"cannot place {n} ions at spacing {dmin} Å in a {box} Å box")
        p = rng.uniform(0.0, box, 3)
        if len(pos):
            dv = pos - p
            dv -= box * np.round(dv / box)
            if (np.linalg.norm(dv, axis=1) < dmin).any():
                continue
        pos = np.vstack([pos, p])
    return pos


# --------------------------------------------------------------------------- frames
def _atoms(symbols, pos, energy, forces, info, cell=None):
    a = Atoms(symbols=symbols, positions=pos, cell=cell if cell is not None else np.zeros((3, 3)), pbc=cell is not None)
    a.info.update(info)
    a.calc = SinglePointCalculator(a, energy=energy, forces=forces)
    return a


def dimer_frames(
    kind: str, n: int, rng: np.random.Generator, dielectric: float = 1.0, dmax: float = D_MAX, dmin: float = D_MIN
) -> list:
    """``n`` random-orientation dimers of ``kind`` with d uniform in [dmin, dmax] (rejecting clashes)."""
    lab = DimerLabeller(kind, dielectric)
    out = []
    while len(out) < n:
        d = rng.uniform(dmin, dmax)
        pos = lab.place(d, random_rotation(rng), random_rotation(rng), random_unit(rng))
        if lab.clashes(pos):
            continue
        e, f = lab.label(pos)
        if e > MAX_INTERACTION:
            continue
        out.append(
            _atoms(
                lab.symbols, pos, e, f, dict(kind=kind, d=float(d), dmin=lab.dmin(pos), charge=lab.total_charge, spin=1)
            )
        )
    return out


def scan_orientation(
    kind: str, rng: np.random.Generator, dielectric: float = 1.0, d_probe: float = 3.2, tries: int = 400
):
    """The lowest-energy of ``tries`` random orientations at separation ``d_probe`` (a bound,
    physically sensible approach direction for the curve)."""
    lab = DimerLabeller(kind, dielectric)
    best = None
    for _ in range(tries):
        ra, rb, u = random_rotation(rng), random_rotation(rng), random_unit(rng)
        pos = lab.place(d_probe, ra, rb, u)
        if lab.clashes(pos):
            continue
        e, _ = lab.label(pos)
        if best is None or e < best[0]:
            best = (e, ra, rb, u)
    if best is None:
        raise RuntimeError(f"no clash-free orientation for {kind} at d = {d_probe} Å")
    return best[1:]


def scan_frames(kind: str, orientation, ds: Sequence[float], dielectric: float = 1.0) -> list:
    lab = DimerLabeller(kind, dielectric)
    out = []
    for d in ds:
        pos = lab.place(float(d), *orientation)
        if lab.clashes(pos):
            continue
        e, f = lab.label(pos)
        out.append(
            _atoms(
                lab.symbols, pos, e, f, dict(kind=kind, d=float(d), dmin=lab.dmin(pos), charge=lab.total_charge, spin=1)
            )
        )
    return out


def box_frames(
    box: float, n: int, rng: np.random.Generator, dielectric: float = 1.0, density: float = BOX_DENSITY
) -> list:
    nion = box_ion_count(box, density)
    charges = np.array([1.0, -1.0] * (nion // 2))
    symbols = ["Na" if q > 0 else "Cl" for q in charges]
    lab = BoxLabeller(charges, box, dielectric)
    out = []
    for _ in range(n):
        pos = random_ions(rng, nion, box)
        e, f = lab.label(pos)
        out.append(_atoms(symbols, pos, e, f, dict(box=float(box), charge=0, spin=1), cell=np.eye(3) * box))
    return out


def local_force_share(frames: list, cutoff: float, dielectric: float = 1.0) -> float:
    """Mean |F - F_local| / mean |F| where F_local is the force from pairs closer than ``cutoff``
    (bare Coulomb + the repulsion, minimum image): how much of the exact force comes from beyond
    the model's cutoff."""
    num = den = 0.0
    for a in frames:
        box = a.cell[0, 0]
        q = np.where(a.numbers == 11, 1.0, -1.0) / np.sqrt(dielectric)
        pos = a.positions
        dv = pos[:, None] - pos[None]
        dv -= box * np.round(dv / box)
        r = np.linalg.norm(dv, axis=-1)
        np.fill_diagonal(r, np.inf)
        near = r < cutoff
        fmag = np.where(near, COULOMB_EV_A * q[:, None] * q[None] / r**2 + repulsion_force_pair(r), 0.0)
        floc = (fmag[..., None] * dv / r[..., None]).sum(1)
        f = a.get_forces()
        num += np.linalg.norm(f - floc, axis=1).sum()
        den += np.linalg.norm(f, axis=1).sum()
    return float(num / den)


# --------------------------------------------------------------------------- driver
@dataclass
class Sizes:
    dimers_per_kind: int = 500  # na_water and nh4_formate (na0_water gets half)
    tail_per_kind: int = 60  # extra test-only dimers at 6 Å <= d <= train_dmax (na0_water: half)
    train_dmax: float = 9.0
    scan_step: float = 0.25
    box_train: List[float] = field(default_factory=lambda: [12.0, 14.0])
    box_test: List[float] = field(default_factory=lambda: [10.0, 16.0, 20.0])
    box_frames_train: int = 160  # per training box size (train + val + test split)
    box_frames_test: int = 40  # per test-only box size
    charge_pairs: int = 120
    model_cutoff: float = 3.0  # for the reported beyond-cutoff share of the box forces


def split(frames: list, rng: np.random.Generator, fractions=(0.8, 0.1)) -> Tuple[list, list, list]:
    idx = rng.permutation(len(frames))
    n1 = int(round(fractions[0] * len(frames)))
    n2 = n1 + int(round(fractions[1] * len(frames)))
    return [frames[i] for i in idx[:n1]], [frames[i] for i in idx[n1:n2]], [frames[i] for i in idx[n2:]]


def generate(
    out: str | Path, seed: int = 0, sizes: Sizes | None = None, dielectric: float = 1.0, verbose: bool = True
) -> dict:
    """Write every data set under ``out``; returns (and prints) a summary."""
    sizes = sizes or Sizes()
    out = Path(out)
    rng = np.random.default_rng(seed)
    summary: dict = dict(seed=seed, dielectric=dielectric, sizes=sizes.__dict__.copy(), files={})

    def write(rel: str, frames: list) -> None:
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        ase.io.write(path, frames, format="extxyz")
        e = np.array([a.get_potential_energy() for a in frames])
        fabs = np.concatenate([np.abs(a.get_forces()).ravel() for a in frames])
        summary["files"][rel] = dict(
            frames=len(frames),
            energy_min=float(e.min()),
            energy_max=float(e.max()),
            force_rms=float(np.sqrt((fabs**2).mean())),
        )

    # dimers
    train, val, test = [], [], []
    for kind in ("na_water", "nh4_formate", "na0_water"):
        n = sizes.dimers_per_kind if kind != "na0_water" else max(1, sizes.dimers_per_kind // 2)
        frames = dimer_frames(kind, n, rng, dielectric)
        inside = [a for a in frames if a.info["d"] <= sizes.train_dmax]
        beyond = [a for a in frames if a.info["d"] > sizes.train_dmax]
        tr, va, te = split(inside, rng)
        for a in te:
            a.info["set"] = "held_out"
        for a in beyond:
            a.info["set"] = "extrapolation"
        # more held-out frames where the tail matters (in the trained range, near its end)
        nt = sizes.tail_per_kind if kind != "na0_water" else max(1, sizes.tail_per_kind // 2)
        tail = dimer_frames(kind, nt, rng, dielectric, dmax=sizes.train_dmax, dmin=TAIL_DMIN) if nt else []
        for a in tail:
            a.info["set"] = "held_out_tail"
        train += tr
        val += va
        test += te + tail + beyond
    write("dimers/train.extxyz", train)
    write("dimers/val.extxyz", val)
    write("dimers/test.extxyz", test)
    ds = np.arange(D_MIN, D_MAX + 1e-9, sizes.scan_step)
    scans = []
    for kind in ("na_water", "nh4_formate"):
        scans += scan_frames(kind, scan_orientation(kind, rng, dielectric), ds, dielectric)
    write("dimers/scans.extxyz", scans)
    # charge discrimination: the same geometries as Na+ + water (charge +1) and Na + water (0)
    ion, atom = DimerLabeller("na_water", dielectric), DimerLabeller("na0_water", dielectric)
    pairs = []
    while len(pairs) < 2 * sizes.charge_pairs:
        d = rng.uniform(3.0, D_MAX)
        pos = ion.place(d, random_rotation(rng), random_rotation(rng), random_unit(rng))
        if ion.clashes(pos):
            continue
        for lab in (ion, atom):
            e, f = lab.label(pos)
            pairs.append(
                _atoms(
                    lab.symbols,
                    pos,
                    e,
                    f,
                    dict(
                        kind=lab.kind,
                        d=float(d),
                        dmin=lab.dmin(pos),
                        charge=lab.total_charge,
                        spin=1,
                        pair=len(pairs) // 2,
                    ),
                )
            )
    write("dimers/charge_pairs.extxyz", pairs)

    # boxes
    btrain, bval, btest = [], [], []
    for box in sizes.box_train:
        tr, va, te = split(box_frames(box, sizes.box_frames_train, rng, dielectric), rng)
        btrain += tr
        bval += va
        btest += te
    for box in sizes.box_test:
        btest += box_frames(box, sizes.box_frames_test, rng, dielectric)
    for a in btest:
        a.info["set"] = "trained_size" if a.info["box"] in sizes.box_train else "unseen_size"
    write("boxes/train.extxyz", btrain)
    write("boxes/val.extxyz", bval)
    write("boxes/test.extxyz", btest)
    shares = {}
    for box in sorted(set(sizes.box_train) | set(sizes.box_test)):
        fr = [a for a in btrain + btest if a.info["box"] == box]
        shares[f"{box:g}"] = dict(
            ions=box_ion_count(box), beyond_cutoff_force_share=local_force_share(fr, sizes.model_cutoff, dielectric)
        )
    summary["boxes"] = shares
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if verbose:
        print_summary(summary)
    return summary


def print_summary(summary: dict) -> None:
    print(
        f"long-range benchmark data (seed {summary['seed']}, dielectric {summary['dielectric']:g}); energies eV, forces eV/Å"
    )
    print(f"  {'file':28s} {'frames':>6s} {'E min':>9s} {'E max':>9s} {'F rms':>7s}")
    for rel, s in summary["files"].items():
        print(f"  {rel:28s} {s['frames']:6d} {s['energy_min']:9.3f} {s['energy_max']:9.3f} {s['force_rms']:7.3f}")
    cut = summary["sizes"]["model_cutoff"]
    print(f"  boxes: density {BOX_DENSITY} ions/Å^3; share of |F| from beyond {cut:g} Å (|F - F_pairs<cutoff| / |F|):")
    for box, s in summary["boxes"].items():
        print(f"    L = {box:>4s} Å  {s['ions']:3d} ions  {100 * s['beyond_cutoff_force_share']:.0f}%")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, help="output directory (dimers/, boxes/, summary.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dimers", type=int, default=Sizes.dimers_per_kind, help="frames per dimer kind (na0_water: half)")
    p.add_argument(
        "--tail", type=int, default=Sizes.tail_per_kind, help="extra held-out dimers per kind at 6 Å <= d <= train-dmax"
    )
    p.add_argument("--train-dmax", type=float, default=Sizes.train_dmax, help="largest training separation (Å)")
    p.add_argument("--box-train", type=float, nargs="+", default=Sizes().box_train, help="training box edges (Å)")
    p.add_argument("--box-test", type=float, nargs="+", default=Sizes().box_test, help="test-only box edges (Å)")
    p.add_argument("--box-frames", type=int, default=Sizes.box_frames_train, help="frames per training box edge")
    p.add_argument("--box-test-frames", type=int, default=Sizes.box_frames_test, help="frames per test-only box edge")
    p.add_argument("--charge-pairs", type=int, default=Sizes.charge_pairs)
    p.add_argument("--dielectric", type=float, default=1.0, help="relative permittivity dividing every Coulomb term")
    args = p.parse_args(argv)
    sizes = Sizes(
        dimers_per_kind=args.dimers,
        tail_per_kind=args.tail,
        train_dmax=args.train_dmax,
        box_train=list(args.box_train),
        box_test=list(args.box_test),
        box_frames_train=args.box_frames,
        box_frames_test=args.box_test_frames,
        charge_pairs=args.charge_pairs,
    )
    generate(args.out, args.seed, sizes, args.dielectric)
    return 0


if __name__ == "__main__":
    sys.exit(main())
