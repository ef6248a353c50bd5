"""AOTInductor compilation of the stages of a staged evaluation: the building blocks of a staged
``.pt2`` (docs/export.md, *The staged .pt2*).

A stage (a function of tensors from :func:`allscaip_export.dd_vjp_reference.stage_functions`, or its
VJP from :func:`~allscaip_export.dd_vjp_reference.vjp_function`) is traced with
``make_fx(tracing_mode="symbolic")``, exported with every dimension left to ``Dim.AUTO`` (the
centre, row, kept-width and edge-token counts become dynamic; the sizes fixed by the model's
weights stay static) and compiled. Several compiled stages go into one archive under their names
and are loaded one by one (``load_stage``), in C++ with ``AOTIModelPackageLoader(path, name)``.

``compile_staged`` compiles every stage of a model and its VJP (2(2L + 2) functions) into one
package, from the sizes met on rank 0 of an example split; ``load_staged`` returns them with the
signatures of :func:`~allscaip_export.dd_vjp_reference.stage_functions` and
:func:`~allscaip_export.dd_vjp_reference.stage_vjps`, so that
:func:`~allscaip_export.dd_vjp_reference.dd_vjp_evaluate` runs the package. Not yet here: the
plugin's C++ reverse pass; ``charge`` and ``spin`` are fixed at compile time; every rank must own
at least 2 atoms (compiled sizes start at 2).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch._inductor import aot_compile
from torch._inductor.package import load_package
from torch.export import Dim
from torch.export.pt2_archive._package import package_pt2
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.passes.runtime_assert import insert_deferred_runtime_asserts

from allscaip_export.dd_vjp_reference import dd_vjp_evaluate, stage_functions, stage_vjps
from allscaip_export.metadata import dumps


class _Traced(nn.Module):
    """Holds a make_fx graph so that torch.export sees its positional inputs."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__()
        self.gm = gm

    def forward(self, *args):
        return self.gm(*args)


def compile_stage(fn: Callable[..., Any], example_args: Sequence[torch.Tensor], into: str | Path) -> List[str]:
    """Compile ``fn`` (tensors in, a tuple of tensors out) for the device of its inputs into the new
    folder ``into``; returns the AOTInductor files for :func:`package_stages`. Inductor names its
    output by the generated code, which is the same for two layers of the model (their weights are
    constants inside the library): caches are off and the files are copied out at once, or layer 1
    would get layer 0's library. The example sizes must be generic: make_fx gives
    equal sizes one symbol, so every size that varies between ranks or steps must differ from every
    other size (and from the model's fixed sizes) and exceed 1. ``compile_stage.seconds`` holds
    (trace + export, compile) of the last call."""
    # contiguous: the compiled code assumes the strides of its example inputs, and engines pass
    # contiguous tensors (a stage's output, or a slice of the gathered keys, may be a strided view)
    args = tuple(a.contiguous() for a in example_args)
    t0 = time.perf_counter()
    gm = make_fx(fn, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*args)
    insert_deferred_runtime_asserts(gm, gm.shape_env, "allscaip_stage")
    gm.recompile()
    dynamic = (tuple({d: Dim.AUTO for d in range(a.dim())} for a in args),)
    ep = torch.export.export(_Traced(gm), args, dynamic_shapes=dynamic, strict=False)
    t1 = time.perf_counter()
    options = {"aot_inductor.package": True, "force_disable_caches": True}
    files = aot_compile(ep.module(check_guards=False), args, {}, options=options)
    compile_stage.seconds = (t1 - t0, time.perf_counter() - t1)  # type: ignore[attr-defined]
    into = Path(into)
    into.mkdir(parents=True)
    return [shutil.copy2(f, into / Path(f).name) for f in files]


compile_stage.seconds = (0.0, 0.0)  # type: ignore[attr-defined]


def package_stages(path: str | Path, stages: Dict[str, List[str]], metadata: Dict[str, Any]) -> Path:
    """Write the compiled ``stages`` (name -> files of :func:`compile_stage`) into one archive with
    ``metadata.json``."""
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"an AOTInductor package must end in .pt2, got {path}")
    package_pt2(str(path), aoti_files=stages, extra_files={"metadata.json": dumps(metadata)})
    return path


def load_stage(path: str | Path, name: str, device_index: int = -1):
    """One compiled stage of a package: a callable taking the stage's inputs positionally and
    returning its outputs as a list of tensors (no autograd)."""
    return load_package(str(path), model_name=name, device_index=device_index)


class StagedExportError(ValueError):
    """A model or example structure a staged package cannot be built from (the message says why
    and what to do instead)."""


def staged_metadata(metadata: Dict[str, Any], charge: int, spin: int, whole_system: bool) -> Dict[str, Any]:
    """``metadata`` of a staged package: engines run it domain-decomposed through its stages and
    VJPs (``staged_interface`` ``"dd_vjp"``, lammps_plugin/allscaip_staged_pt2.h) with the charge
    and spin it was compiled for; ``whole_system``: it also holds the whole-system model."""
    return dict(
        metadata,
        supports_domain_decomposition=True,
        staged_interface="dd_vjp",
        staged_charge=int(charge),
        staged_spin=int(spin),
        whole_system=bool(whole_system),
    )


def fixed_sizes(module) -> set:
    """Every dimension of the module's weights and buffers, and 0 and 1: sizes an example's
    dynamic sizes must avoid (see :func:`compile_stage`)."""
    sizes = {0, 1}
    for t in list(module.parameters()) + list(module.buffers()):
        sizes.update(int(d) for d in t.shape)
    return sizes


def generic_example(module, atoms, max_ranks: int = 6) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """(positions, numbers, cell, owner_rank, nranks) of a slab split of the periodic ``atoms`` whose
    rank 0 has generic sizes (centres, rows, neighbour width, atoms: all different, none a fixed
    size of the module), trying 2 to ``max_ranks`` slabs along a, b and c; raises
    StagedExportError if none has."""
    from allscaip_export.dd_reference import rank_layouts, split_slabs

    avoid = fixed_sizes(module)
    for nranks in range(2, max_ranks + 1):
        for axis in range(3):
            owner = split_slabs(atoms.get_scaled_positions()[:, axis], nranks)
            args = (atoms.positions, atoms.numbers, atoms.cell.array, owner, nranks)
            rank0 = rank_layouts(module, *args)[0]
            sizes = [len(rank0["owned"]), rank0["z_all"].shape[0], rank0["index"].shape[1], len(atoms)]
            if len(set(sizes)) == len(sizes) and not set(sizes) & avoid:
                return args
    raise StagedExportError(
        f"no slab split of {len(atoms)} atoms into 2..{max_ranks} ranks has generic sizes on rank 0 (all "
        f"different and none of the model's fixed sizes {sorted(avoid)})"
    )


def compile_staged(
    module,
    path: str | Path,
    metadata: Dict[str, Any],
    example: Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int],
    charge: int = 0,
    spin: int = 1,
    verbose: bool = False,
    whole_system_files: Optional[List[str]] = None,
) -> Path:
    """Compile every stage of ``module`` (an unscripted export module with the ``dd_*`` methods) and
    its VJP into the package ``path``, with ``whole_system_files`` (of
    :func:`allscaip_export.aoti.compile_whole_system`) as its model ``"model"`` when given; the
    package's metadata is :func:`staged_metadata` of ``metadata``. ``example``: (positions, numbers,
    cell, owner_rank, nranks) of a periodic system; the stages are compiled on the inputs they meet
    on rank 0, whose sizes must be generic (see :func:`compile_stage`, :func:`generic_example`)."""
    stages = stage_functions(module, charge, spin)
    eager = stage_vjps(stages)
    met: Dict[str, tuple] = {}

    def recording(name: str):
        def call(inputs, cotangents, constants=()):
            met.setdefault(name, (tuple(inputs), tuple(constants), tuple(cotangents)))
            return eager[name](inputs, cotangents, constants)

        return call

    dd_vjp_evaluate(module, *example, charge=charge, spin=spin, backward={k: recording(k) for k in eager})
    files: Dict[str, List[str]] = {"model": list(whole_system_files)} if whole_system_files else {}
    with tempfile.TemporaryDirectory() as work:
        for number, (name, (inputs, constants, cotangents)) in enumerate(met.items(), start=1):
            k, c = len(inputs), len(constants)
            fn, vjp_fn = stages[name], eager[name]
            files[name] = compile_stage(lambda *a, fn=fn: fn(*a), inputs + constants, Path(work) / name)
            files[name + "_vjp"] = compile_stage(
                lambda *a, f=vjp_fn, k=k, c=c: f(a[:k], a[k + c :], a[k : k + c]),
                inputs + constants + cotangents,
                Path(work) / (name + "_vjp"),
            )
            if verbose:
                print(f"[allscaip-export] compiled stage {number}/{len(met)}: {name} and its VJP", flush=True)
        meta = staged_metadata(metadata, charge, spin, whole_system=bool(whole_system_files))
        return package_stages(path, files, meta)


def export_staged(
    model, path: str | Path, metadata: Dict[str, Any], example_atoms, charge: int = 0, spin: int = 1
) -> Path:
    """The staged package of ``model`` (an :class:`~allscaip.model.AllScAIP` in its export dtype, on
    the CPU) at ``path``: its whole-system model and every stage with its VJP, compiled on a
    generic slab split of the periodic ``example_atoms`` (:func:`generic_example`). What
    ``allscaip-export --format aoti --staged`` writes; ``export_staged.seconds`` holds the time."""
    from allscaip_export.aoti import compile_whole_system
    from allscaip_export.torchscript import ExportedAllScAIP

    if model.use_encoding:
        raise StagedExportError(
            f"the model has a node encoding ({model.cfg.node_encoding}), which the staged .pt2 does not cover; "
            "export it without --staged, or as TorchScript (.pt), which runs domain-decomposed"
        )
    t0 = time.perf_counter()
    meta = staged_metadata(metadata, charge, spin, whole_system=True)
    module = ExportedAllScAIP(model.eval(), dumps(meta))
    example = generic_example(module, example_atoms)
    files = compile_whole_system(model, meta, "cpu", verbose=True)
    tmp = Path(path).with_name(Path(path).stem + ".tmp.pt2")
    compile_staged(module, tmp, meta, example, charge, spin, verbose=True, whole_system_files=files)
    tmp.replace(path)
    export_staged.seconds = time.perf_counter() - t0  # type: ignore[attr-defined]
    return Path(path)


export_staged.seconds = 0.0  # type: ignore[attr-defined]


def _contiguous(tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """The stages were compiled for contiguous inputs (:func:`compile_stage`)."""
    return [t.contiguous() for t in tensors]


def load_staged(path: str | Path, num_layers: int, device_index: int = -1) -> Tuple[Dict, Dict]:
    """(stages, VJPs) of a package of :func:`compile_staged`, with the signatures of the eager ones."""
    names = ["prepare", "readout"] + [f"{s}_{i}" for i in range(num_layers) for s in ("local_project", "finish")]
    stages, vjps = {}, {}
    for name in names:
        run, run_vjp = load_stage(path, name, device_index), load_stage(path, name + "_vjp", device_index)
        if name == "prepare":
            stages[name] = lambda *a, run=run: (lambda o: (tuple(o[0]), o[1]))(run(*_contiguous(a)))  # as traced
        else:
            stages[name] = lambda *a, run=run: tuple(run(*_contiguous(a)))
        vjps[name] = lambda inputs, cotangents, constants=(), run=run_vjp: tuple(
            run(*_contiguous((*inputs, *constants, *cotangents)))
        )
    return stages, vjps
