"""AOTInductor export: a compiled package (``.pt2``) of the whole-system evaluation.

One package serves any system size: the atom count ``N`` and the edge count ``E`` are
dynamic dimensions of the exported program. The call has the same signature as the
TorchScript ``forward`` (see ``metadata.json``)::

    (positions [N,3], numbers [N], cell [3,3], pbc [3], edge_index [2,E], cell_shifts [E,3],
     charge [], spin []) -> (energy [], forces [N,3], virial [3,3], energies [N])

A model with a node encoding (``node_encoding: sinc_pairs``, metadata ``encoding_range`` > 0)
takes the TorchScript forward's two trailing inputs as well, ``encoding_index [2,P]`` and
``encoding_shifts [P,3]`` (the pairs within ``encoding_range``,
:func:`allscaip.neighbors.whole_system_inputs` with that range), with a dynamic pair count
``P`` (traced with ``P >= 2`` like ``E``; ``P = 0``, no pair within range, runs too); its node
attention is traced dense (logits [heads, N, N] per layer), as the TorchScript export runs it.

How it is built (torch 2.13):

1. the energy + forces + virial function (``torch.autograd.grad`` inside) is traced into a
   plain aten graph with ``make_fx(tracing_mode="symbolic")`` (``torch.export`` cannot
   trace ``autograd.grad`` itself);
2. that graph is exported with ``torch.export.export`` and dynamic ``N``/``E``;
3. ``torch._inductor.aot_compile`` compiles it and ``package_pt2`` writes the package with
   ``metadata.json`` as an extra file.

Data-dependent shapes. The padded neighbour width ``K`` (largest neighbour count), the
kNN-pruned width (``max_neighbors``) and the number of real edge tokens are computed from
the data. They become *unbacked* symbolic sizes in the graph:

* the flat-edge -> padded conversion is done inside the graph by
  :func:`_pad_neighbors_traceable` (same layout as :func:`allscaip.neighbors.pad_neighbors`,
  without ``int(...)`` on the width, which cannot be traced, and with ``K >= 2``: an extra
  all-padding column changes nothing but lets Inductor's CPU ``bmm`` lowering prove a
  dimension is not 1);
* the model's kNN-pruned width is computed by :func:`allscaip.model.neighbor_geometry.kept_width`,
  which keeps it symbolic while tracing, with at least two columns (again one harmless padding
  column at most);
* boolean-mask indexing / ``nonzero`` produce further unbacked sizes that torch.export
  handles itself; the equalities the model relies on become runtime asserts in the graph.

Metadata. ``metadata.json`` is stored twice in the package:

* as the archive record ``extra/metadata.json`` (Python: :func:`read_metadata`, or any zip
  reader: member ``<archive-name>/extra/metadata.json``; C++ without loading the model:
  ``caffe2::serialize::PyTorchStreamReader(path).getRecord("extra/metadata.json")``, which is
  also where TorchScript ``.pt`` files keep it);
* in the AOTInductor metadata map under the key ``"allscaip_metadata"`` (C++:
  ``torch::inductor::AOTIModelPackageLoader(path).get_metadata().at("allscaip_metadata")``;
  Python: ``torch._inductor.aoti_load_package(path).get_metadata()``). The map also holds
  ``AOTI_DEVICE_KEY`` (``"cpu"``/``"cuda"``), the device the package was compiled for.

Unknown elements and out-of-range charge/spin cannot raise inside a compiled graph; the
graph clamps the indices (no out-of-bounds reads) and returns NaN in every output instead.
:func:`load_aoti`'s callable checks them first and raises a clear error.
"""

from __future__ import annotations

import copy
import json
import os
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols
from torch import nn
from torch._inductor import aot_compile
from torch._inductor.package import load_package
from torch.export import Dim
from torch.export.pt2_archive._package import package_pt2
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.passes.runtime_assert import insert_deferred_runtime_asserts

from allscaip.model import AllScAIP, frozen
from allscaip.model.evaluate import UnknownElementError
from allscaip.neighbors import whole_system_inputs
from allscaip_export.metadata import dumps

METADATA_KEY = "allscaip_metadata"  # key in the AOTInductor metadata map
EXTRA_RECORD = "extra/metadata.json"  # record inside the package archive

# Largest sizes the compiled program accepts (torch.export needs finite bounds to reason
# about index arithmetic; these are far beyond what one process can hold).
MAX_ATOMS = 10_000_000
MAX_EDGES = 2_000_000_000
MAX_PAIRS = 2_000_000_000  # node-encoding pairs; declared >= 2 like the edges (0 and 1 would specialise)


# ---------------------------------------------------------------------------- tracing


def _pad_neighbors_traceable(
    center: torch.Tensor, neighbor: torch.Tensor, shift: torch.Tensor, n_centers: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`allscaip.neighbors.pad_neighbors` with a traceable (unbacked) width ``K >= 2``."""
    order = torch.argsort(center, stable=True)
    center = center[order]
    neighbor = neighbor[order]
    shift = shift[order]
    counts = torch.zeros(n_centers, dtype=center.dtype, device=center.device)
    counts = counts.index_add(0, center, torch.ones_like(center))
    k = counts.max().clamp_min(2).item()
    torch._check(k >= 2)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(center.shape[0], device=center.device) - start[center]
    index = torch.arange(n_centers, device=center.device).unsqueeze(1).expand(n_centers, k).clone()
    index[center, slot] = neighbor
    pshift = torch.zeros((n_centers, k, 3), dtype=shift.dtype, device=shift.device)
    pshift[center, slot] = shift
    mask = torch.zeros((n_centers, k), dtype=torch.bool, device=center.device)
    mask[center, slot] = True
    return index, pshift, mask


def whole_system_function(model: AllScAIP) -> Callable[..., Tuple[torch.Tensor, ...]]:
    """The traced function: whole system -> (energy, forces, virial, energies).

    The same evaluation as :meth:`allscaip_export.torchscript.ExportedAllScAIP.forward`
    (:meth:`allscaip.model.AllScAIP.energy_forces_virial`); unknown elements / out-of-range charge
    or spin give NaN outputs instead of an exception. A node-encoding model's function takes the
    encoding pairs as two more inputs (``encoding_index`` [2,P], ``encoding_shifts`` [P,3]).
    """
    use_cs = bool(model.use_charge_spin)
    max_charge, max_spin = int(model.max_charge), int(model.max_spin)

    def with_pairs(
        positions, numbers, cell, pbc, edge_index, cell_shifts, charge, spin, encoding_index, encoding_shifts
    ):
        n = positions.shape[0]
        dtype, device = positions.dtype, positions.device
        species = model.species_of(numbers)
        bad = (species < 0).any()
        species = species.clamp_min(0)
        charge = charge.reshape(1).to(torch.long)
        spin = spin.reshape(1).to(torch.long)
        if use_cs:
            bad = bad | (charge.abs() > max_charge).any() | (spin < 0).any() | (spin > max_spin).any()
            charge = charge.clamp(-max_charge, max_charge)
            spin = spin.clamp(0, max_spin)
        index, shift, mask = _pad_neighbors_traceable(edge_index[0], edge_index[1], cell_shifts.to(dtype), n)
        pair_shift = encoding_shifts.to(dtype) if encoding_shifts is not None else None
        out = model.energy_forces_virial(
            positions,
            species,
            None,
            cell.unsqueeze(0),
            pbc.unsqueeze(0),
            index,
            shift,
            mask,
            charge,
            spin,
            pair_index=encoding_index,
            pair_shift=pair_shift,
        )
        nan = torch.full((), float("nan"), dtype=dtype, device=device)
        return (
            torch.where(bad, nan, out.energy[0]),
            torch.where(bad, nan, out.forces),
            torch.where(bad, nan, out.virial[0]),
            torch.where(bad, nan, out.energies),
        )

    if model.use_encoding:
        return with_pairs

    # make_fx traces every parameter of the signature: the eight inputs only
    def plain(positions, numbers, cell, pbc, edge_index, cell_shifts, charge, spin):
        return with_pairs(positions, numbers, cell, pbc, edge_index, cell_shifts, charge, spin, None, None)

    return plain


class _TracedWholeSystem(nn.Module):
    """Holds the make_fx graph so that torch.export sees named positional inputs."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__()
        self.gm = gm

    def forward(self, positions, numbers, cell, pbc, edge_index, cell_shifts, charge, spin):
        return self.gm(positions, numbers, cell, pbc, edge_index, cell_shifts, charge, spin)


class _TracedEncodedWholeSystem(nn.Module):
    """:class:`_TracedWholeSystem` of a node-encoding model: the encoding pairs are two more inputs."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__()
        self.gm = gm

    def forward(
        self, positions, numbers, cell, pbc, edge_index, cell_shifts, charge, spin, encoding_index, encoding_shifts
    ):
        return self.gm(
            positions, numbers, cell, pbc, edge_index, cell_shifts, charge, spin, encoding_index, encoding_shifts
        )


def example_inputs(model: AllScAIP, dtype: torch.dtype, device: torch.device | str) -> Tuple[torch.Tensor, ...]:
    """Whole-system inputs for tracing: a small random periodic box of the model's elements.

    Sizes are generic (N, E, neighbour counts and, with a node encoding, the pair count P all > 1
    and different), so nothing is specialised; the trace does not depend on the values beyond that.
    """
    rng = np.random.default_rng(0)
    elements = list(model.cfg.elements)
    n = 16
    length = 6.0
    cell = np.diag([length, length * 1.05, length * 1.1])
    cell[1, 0], cell[2, 0] = 0.4, -0.3  # triclinic
    frac = rng.random((n, 3))
    numbers = [elements[i % len(elements)] for i in range(n)]
    atoms = Atoms(numbers=numbers, positions=frac @ cell, cell=cell, pbc=True)
    encoding_range = float(model.encoding_range) if model.use_encoding else 0.0
    args = whole_system_inputs(atoms, model.cutoff, dtype, device, encoding_range)
    sizes = [n, args[4].shape[1]] + ([args[8].shape[1]] if model.use_encoding else [])
    # make_fx gives equal sizes one symbol (duck sizing): N, E and P must differ (and exceed 3)
    assert len(set(sizes)) == len(sizes) and min(sizes) > 3, f"example sizes N, E(, P) not generic: {sizes}"
    return args


def export_program(model: AllScAIP, device: torch.device | str = "cpu") -> torch.export.ExportedProgram:
    """make_fx (energy + forces + virial) -> torch.export with dynamic atom and edge counts."""
    dev = torch.device(device)
    model = frozen(copy.deepcopy(model).to(dev))
    model.encoding_path = "dense"  # one traced system: no data-dependent query blocks
    dtype = next(model.parameters()).dtype
    args = example_inputs(model, dtype, dev)
    gm = make_fx(whole_system_function(model), tracing_mode="symbolic", _allow_non_fake_inputs=True)(*args)
    # carry the facts learnt while tracing (e.g. K >= 2) into the graph for torch.export
    insert_deferred_runtime_asserts(gm, gm.shape_env, "allscaip")
    gm.recompile()
    atoms = Dim("atoms", min=2, max=MAX_ATOMS)
    edges = Dim("edges", min=2, max=MAX_EDGES)
    dynamic = {
        "positions": {0: atoms},
        "numbers": {0: atoms},
        "cell": None,
        "pbc": None,
        "edge_index": {1: edges},
        "cell_shifts": {0: edges},
        "charge": None,
        "spin": None,
    }
    if not model.use_encoding:
        return torch.export.export(_TracedWholeSystem(gm), args, dynamic_shapes=dynamic, strict=False)
    pairs = Dim("pairs", min=2, max=MAX_PAIRS)
    dynamic.update(encoding_index={1: pairs}, encoding_shifts={0: pairs})
    return torch.export.export(_TracedEncodedWholeSystem(gm), args, dynamic_shapes=dynamic, strict=False)


def compile_whole_system(
    model: AllScAIP,
    metadata: Dict[str, Any],
    device: str = "cpu",
    inductor_configs: Optional[Dict[str, Any]] = None,
    verbose: bool = False,
) -> List[str]:
    """Trace, export and compile the whole-system call of ``model`` (in its current dtype) for
    ``device``; returns the AOTInductor files for ``package_pt2`` (under the name ``"model"``).
    ``metadata`` goes into the AOTInductor metadata map; the measured ``export_seconds`` /
    ``compile_seconds`` are written to ``export_aoti.timings``."""
    dev = torch.device(device)
    t0 = time.perf_counter()
    ep = export_program(model, dev)
    t1 = time.perf_counter()
    if verbose:
        print(
            f"[allscaip-export] traced and exported the graph in {t1 - t0:.1f} s; compiling with AOTInductor ...",
            flush=True,
        )
    configs: Dict[str, Any] = {"aot_inductor.metadata": {METADATA_KEY: dumps(metadata)}}
    configs.update(inductor_configs or {})
    configs["aot_inductor.package"] = True
    args, kwargs = ep.example_inputs
    files = aot_compile(ep.module(check_guards=False), args, kwargs, options=configs)
    export_aoti.timings = {"export_seconds": t1 - t0, "compile_seconds": time.perf_counter() - t1}  # type: ignore[attr-defined]
    return files


def export_aoti(
    model: AllScAIP,
    path: str | Path,
    metadata: Dict[str, Any],
    device: str = "cpu",
    inductor_configs: Optional[Dict[str, Any]] = None,
    verbose: bool = False,
) -> Path:
    """Compile ``model`` (in its current dtype) for ``device`` into the package ``path``.

    Returns the path. ``metadata`` is stored inside (see the module docstring); the
    measured ``export_seconds`` / ``compile_seconds`` are written to ``export_aoti.timings``.
    """
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"an AOTInductor package must end in .pt2, got {path}")
    files = compile_whole_system(model, metadata, device, inductor_configs, verbose)
    tmp = path.with_name(path.stem + ".tmp.pt2")
    package_pt2(str(tmp), aoti_files=files, extra_files={"metadata.json": dumps(metadata)})
    os.replace(tmp, path)
    return path


export_aoti.timings = {}  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- loading


def read_metadata(path: str | Path) -> Dict[str, Any]:
    """``metadata.json`` of a package, without loading the compiled model."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n == EXTRA_RECORD or n.endswith("/" + EXTRA_RECORD)]
            if not names:
                raise ValueError(f"{path} is a .pt2 archive but not an allscaip export (no {EXTRA_RECORD} inside)")
            return json.loads(z.read(names[0]).decode())
    except zipfile.BadZipFile:
        raise ValueError(f"{path} is not an AOTInductor package (not a zip archive)") from None


class AOTIWholeSystem:
    """Callable around a loaded package with the whole-system signature.

    Checks elements, charge and spin (clear errors instead of NaN outputs), converts the
    inputs to the package's dtype and device, and calls the compiled model. A node-encoding
    package (metadata ``encoding_range`` > 0) needs ``encoding_index`` / ``encoding_shifts``; other
    packages ignore them, as the TorchScript forward does.
    """

    def __init__(self, runner: Any, metadata: Dict[str, Any], device: torch.device) -> None:
        self.runner = runner
        self.metadata = metadata
        self.device = device
        self.dtype = {"float32": torch.float32, "float64": torch.float64}[metadata["dtype"]]
        self.cutoff = float(metadata["cutoff"])
        self.atomic_numbers = [int(z) for z in metadata["atomic_numbers"]]
        cfg = metadata.get("model_config", {})
        self.charge_spin = bool(metadata.get("charge_spin", cfg.get("charge_spin", False)))
        self.max_charge = int(cfg.get("max_charge", 0))
        self.max_spin = int(cfg.get("max_spin", 0))
        self.encoding_range = float(metadata.get("encoding_range", 0.0))

    def _encoding_pairs(self, encoding_index, encoding_shifts) -> Tuple[torch.Tensor, ...]:
        """The pairs as the compiled program takes them: [2,P] int64 and [P,3] in the package's dtype."""
        if encoding_index is None or encoding_shifts is None:
            raise ValueError(
                f"this package has node_encoding={self.metadata.get('node_encoding')!r}: pass its encoding pairs "
                f"encoding_index [2,P] and encoding_shifts [P,3] within encoding_range "
                f"{self.encoding_range:g} Å (allscaip.neighbors.whole_system_inputs with that range)"
            )
        index = torch.as_tensor(encoding_index, dtype=torch.long, device=self.device).reshape(2, -1)
        shifts = torch.as_tensor(encoding_shifts, dtype=self.dtype, device=self.device).reshape(-1, 3)
        if index.shape[1] != shifts.shape[0]:
            raise ValueError(f"encoding_index has {index.shape[1]} pairs but encoding_shifts {shifts.shape[0]}")
        return index.contiguous(), shifts.contiguous()

    def __call__(
        self,
        positions,
        numbers,
        cell,
        pbc,
        edge_index,
        cell_shifts,
        charge,
        spin,
        encoding_index=None,
        encoding_shifts=None,
    ):
        dev, dt = self.device, self.dtype
        numbers = torch.as_tensor(numbers, dtype=torch.long, device=dev)
        unknown = sorted(set(numbers.unique().tolist()) - set(self.atomic_numbers))
        if unknown:
            name = lambda z: chemical_symbols[z] if 0 <= z < len(chemical_symbols) else str(z)  # noqa: E731
            raise UnknownElementError(
                f"element(s) {[name(z) for z in unknown]} are not in this model, which knows "
                f"{[name(z) for z in self.atomic_numbers]}"
            )
        charge = torch.as_tensor(charge, dtype=torch.long, device=dev).reshape(())
        spin = torch.as_tensor(spin, dtype=torch.long, device=dev).reshape(())
        if self.charge_spin:
            if abs(int(charge)) > self.max_charge:
                raise ValueError(f"total charge {int(charge)} outside the model's range ±{self.max_charge}")
            if not 0 <= int(spin) <= self.max_spin:
                raise ValueError(f"spin multiplicity {int(spin)} outside the model's range 0..{self.max_spin}")
        positions = torch.as_tensor(positions, dtype=dt, device=dev).contiguous()
        if positions.shape[0] < 2:
            raise ValueError(
                "AOTInductor packages need at least 2 atoms (the program is compiled for N >= 2); "
                "use the TorchScript export or the checkpoint for a single atom"
            )
        args = (
            positions,
            numbers.contiguous(),
            torch.as_tensor(cell, dtype=dt, device=dev).reshape(3, 3).contiguous(),
            torch.as_tensor(pbc, dtype=torch.bool, device=dev).reshape(3).contiguous(),
            torch.as_tensor(edge_index, dtype=torch.long, device=dev).reshape(2, -1).contiguous(),
            torch.as_tensor(cell_shifts, dtype=dt, device=dev).reshape(-1, 3).contiguous(),
            charge,
            spin,
        )
        if self.encoding_range > 0.0:
            args = args + self._encoding_pairs(encoding_index, encoding_shifts)
        with torch.no_grad():
            energy, forces, virial, energies = self.runner(*args)
        return energy, forces, virial, energies


def load_aoti(path: str | Path, device: str = "cpu") -> Tuple[AOTIWholeSystem, Dict[str, Any]]:
    """Load a package: (callable with the whole-system signature, metadata).

    The package must have been compiled for the requested device type.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist")
    meta = read_metadata(path)
    dev = torch.device(device)
    built_for = str(meta.get("device", "cpu"))
    if torch.device(built_for).type != dev.type:
        raise ValueError(
            f"{path.name} was compiled for {built_for!r} and cannot run on {device!r}; "
            f"export it again with --device {dev.type} (AOTInductor packages are device-specific)"
        )
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA GPU")
    index = dev.index if dev.index is not None else -1
    runner = load_package(str(path), device_index=index)
    return AOTIWholeSystem(runner, meta, dev), meta
