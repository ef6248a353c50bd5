"""AOTInductor compilation of the stages of a staged evaluation: the building blocks of a staged
``.pt2`` (docs/export.md, *The staged .pt2*).

A stage (a function of tensors from :func:`allscaip_export.dd_vjp_reference.stage_functions`, or its
VJP from :func:`~allscaip_export.dd_vjp_reference.vjp_function`) is traced with
``make_fx(tracing_mode="symbolic")``, exported with every dimension left to ``Dim.AUTO`` (the
centre, row, kept-width and edge-token counts become dynamic; the sizes fixed by the model's
weights stay static) and compiled. Several compiled stages go into one archive under their names
and are loaded one by one (``load_stage``), in C++ with ``AOTIModelPackageLoader(path, name)``.

Not yet here: the whole package of 2(2L + 2) stages, the evaluation that runs it, and the plugin's
C++ reverse pass.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import torch
from torch import nn
from torch._inductor import aot_compile
from torch._inductor.package import load_package
from torch.export import Dim
from torch.export.pt2_archive._package import package_pt2
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.passes.runtime_assert import insert_deferred_runtime_asserts

from allscaip_export.metadata import dumps


class _Traced(nn.Module):
    """Holds a make_fx graph so that torch.export sees its positional inputs."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__()
        self.gm = gm

    def forward(self, *args):
        return self.gm(*args)


def compile_stage(fn: Callable[..., Any], example_args: Sequence[torch.Tensor]) -> List[str]:
    """Compile ``fn`` (tensors in, a tuple of tensors out) for the device of its inputs; returns the
    AOTInductor files for :func:`package_stages`. The example sizes must be generic: make_fx gives
    equal sizes one symbol, so every size that varies between ranks or steps must differ from every
    other size (and from the model's fixed sizes) and exceed 1. ``compile_stage.seconds`` holds
    (trace + export, compile) of the last call."""
    args = tuple(example_args)
    t0 = time.perf_counter()
    gm = make_fx(fn, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*args)
    insert_deferred_runtime_asserts(gm, gm.shape_env, "allscaip_stage")
    gm.recompile()
    dynamic = (tuple({d: Dim.AUTO for d in range(a.dim())} for a in args),)
    ep = torch.export.export(_Traced(gm), args, dynamic_shapes=dynamic, strict=False)
    t1 = time.perf_counter()
    files = aot_compile(ep.module(check_guards=False), args, {}, options={"aot_inductor.package": True})
    compile_stage.seconds = (t1 - t0, time.perf_counter() - t1)  # type: ignore[attr-defined]
    return files


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
