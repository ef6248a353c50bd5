"""Executable specification of a staged evaluation without autograd across stages (a staged ``.pt2``).

An AOTInductor package has no autograd, so a domain-decomposed ``.pt2`` (docs/export.md, *The
staged .pt2*) must carry, for every stage between two communications, a forward function and its
vector-Jacobian product (VJP), and the engine must run the reverse pass itself. This module is
that algorithm in one process, with the communications emulated by indexing as in
:mod:`allscaip_export.dd_reference` (same rank layouts, same tally of dE/dvec). Only the stage
functions of :func:`stage_functions` touch the model; each is what one compiled model of the
package would hold.

Stages of one rank (L layers; a model without a node encoding):
  prepare(vec; mask, index, Z)      -> bias, legendre_p, h, edges   (aux: pruned index)
  local_project[l](h_all, edges, legendre_p, bias) -> h, edges, q, k, v
  finish[l](h, q, K, V)             -> h
  readout(h, vec; mask, index, Z)   -> per-atom energies (readout + core repulsion)
and for each its VJP: (primal inputs, output cotangents) -> input cotangents, which recomputes the
stage's forward from its inputs (so no activation crosses a stage boundary).

Forward: prepare; per layer h_all = [h ; ghost rows] (forward comm), local_project, K, V =
all-gather(k, v), finish; readout.
Reverse, with the communications reversed, layer L-1 down to 0:
  g_h, g_vec = VJP readout(ones)
  per layer: g_h', g_q, g_K, g_V = VJP finish[l](g_h)
             g_k, g_v = reduce-scatter(g_K, g_V)            (sum over ranks, own rows kept)
             g_h_all, g_edges, g_P, g_bias = VJP local_project[l](g_h', g_edges, g_q, g_k, g_v)
             g_h = g_h_all[:Nc] + reverse comm(g_h_all[Nc:])  (ghost rows summed into owners)
  g_vec += VJP prepare(g_bias, g_P, g_h, g_edges)    (g_P, g_bias summed over layers)
Node-encoding models are not covered (their pair bias and blocked attention would be two more
stages per layer). A rank that owns no atom runs every stage here on zero rows, which the eager
stages accept and compiled ones refuse (their sizes are compiled from 1 up): the plugin's copy
(lammps_plugin/allscaip_staged_pt2.cpp) skips such a rank's stages and runs only its
communications, with empty node states and zero gradients, which is what the zero-row stages
compute.

The layer loop below is one of five copies (allscaip.model.AllScAIP.forward,
allscaip_export.dd_reference.staged_energies, lammps_plugin/allscaip_staged.cpp evaluate_staged,
lammps_plugin/allscaip_staged_pt2.cpp evaluate_staged_pt2 (this algorithm under MPI) and this one); a
change to one goes to all five.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.func import vjp

from allscaip_export.dd_reference import rank_layouts, tally_gradients

Stage = Callable[..., tuple]


def vjp_function(stage: Stage, has_aux: bool = False) -> Callable[..., tuple]:
    """The VJP of ``stage``: (primal inputs, output cotangents, constants) -> cotangents of the
    inputs. ``constants`` (integer tensors such as the pruned neighbour index) are passed to the
    stage after its inputs and get no cotangent; with ``has_aux`` the stage returns
    (outputs, aux) and the aux gets none either."""

    def backward(inputs: tuple, cotangents: tuple, constants: tuple = ()) -> tuple:
        out = vjp(lambda *x: stage(*x, *constants), *inputs, has_aux=has_aux)
        return out[1](tuple(cotangents))

    return backward


def stage_functions(module, charge: int, spin: int) -> Dict[str, Stage]:
    """The forward stages as functions of tensors, the same for every rank (what a package would
    compile): float inputs first, then the integer/bool constants of the rank's layout (mask,
    neighbour index, atomic numbers; the pruned index that ``prepare`` returns as aux), which
    get no cotangent. ``charge`` and ``spin`` are fixed here (a compiled stage would take them as
    two more constants)."""

    def prepare(vec, mask, index, z_all):
        idx, bias, legendre_p, h, edges = module.dd_prepare(vec, mask, index, z_all, charge, spin)
        return (bias, legendre_p, h, edges), idx

    def local_project(layer: int):
        def run(h_all, edges, legendre_p, bias, pruned_index):
            h, edges = module.dd_local(layer, h_all, edges, pruned_index, legendre_p, bias)
            q, k, v = module.dd_global_project(layer, h)
            return h, edges, q, k, v

        return run

    def finish(layer: int):
        def run(h, q, k_all, v_all):
            return (module.dd_global_finish(layer, h, q, k_all, v_all),)

        return run

    def readout(h, vec, mask, index, z_all):
        e = module.dd_readout(h, z_all[: h.shape[0]])
        if hasattr(module, "dd_core"):
            e = e + module.dd_core(vec, mask, index, z_all)
        return (e,)

    stages: Dict[str, Stage] = {"prepare": prepare, "readout": readout}
    for layer in range(int(module.num_layers)):
        stages[f"local_project_{layer}"] = local_project(layer)
        stages[f"finish_{layer}"] = finish(layer)
    return stages


def stage_vjps(stages: Dict[str, Stage]) -> Dict[str, Callable[..., tuple]]:
    """The VJP of every stage, by the stage's name (``prepare`` returns its pruned index as aux)."""
    return {name: vjp_function(fn, has_aux=name == "prepare") for name, fn in stages.items()}


def _ghost_rows(h_owned: List[torch.Tensor], ranks: List[dict], n: int) -> List[torch.Tensor]:
    """Forward communication: each rank's ghost rows are their owners' node states."""
    h_global = torch.zeros((n, h_owned[0].shape[1]), dtype=h_owned[0].dtype)
    for rk, h in zip(ranks, h_owned):
        h_global = h_global.index_put((rk["owned"],), h)
    return [h_global[rk["ghost_atom"]] for rk in ranks]


def _reverse_ghost_rows(g_all: List[torch.Tensor], ranks: List[dict], n: int) -> List[torch.Tensor]:
    """Reverse communication: each rank's owned rows plus every ghost row's gradient summed into
    the owner's."""
    width = g_all[0].shape[1]
    g_global = torch.zeros((n, width), dtype=g_all[0].dtype)
    for rk, g in zip(ranks, g_all):
        g_global = g_global.index_add(0, rk["ghost_atom"], g[len(rk["owned"]) :])
    return [g[: len(rk["owned"])] + g_global[rk["owned"]] for rk, g in zip(ranks, g_all)]


def dd_vjp_evaluate(
    module,
    positions: np.ndarray,
    numbers: np.ndarray,
    cell: np.ndarray,
    owner_rank: np.ndarray,
    nranks: int,
    charge: int = 0,
    spin: int = 1,
    pbc: Sequence[bool] = (True, True, True),
    stage: Optional[Dict[str, Stage]] = None,
    backward: Optional[Dict[str, Callable[..., tuple]]] = None,
) -> Dict[str, torch.Tensor]:
    """Energy, forces, virial, per-atom energies as :func:`allscaip_export.dd_reference.dd_evaluate`,
    computed with the stage functions and their VJPs only (no autograd across stages): by default
    the module's (:func:`stage_functions`, :func:`stage_vjps`), or the given ``stage`` / ``backward``
    dicts of the same names and signatures (compiled ones: :mod:`allscaip_export.aoti_stages`)."""
    if float(getattr(module, "encoding_range", 0.0)) > 0:
        raise ValueError("the staged VJP specification covers models without a node encoding")
    ranks = rank_layouts(module, positions, numbers, cell, owner_rank, nranks, pbc)
    n, num_layers = len(numbers), int(module.num_layers)
    stage = stage if stage is not None else stage_functions(module, charge, spin)  # each rank passes its layout
    backward = backward if backward is not None else stage_vjps(stage_functions(module, charge, spin))
    dtype = next(module.parameters()).dtype  # the layouts are float64; a float32 model takes float32
    vecs = [rk["vec"].detach().to(dtype) for rk in ranks]
    layout = [(rk["mask"], rk["index"], rk["z_all"]) for rk in ranks]
    rows = np.cumsum([0] + [len(rk["owned"]) for rk in ranks])  # each rank's rows of K, V

    # ---- forward, keeping each stage's inputs for its VJP
    with torch.no_grad():
        prep = [stage["prepare"](vecs[r], *layout[r]) for r in range(nranks)]
        bias, legendre_p, h, edges = (list(x) for x in zip(*[p[0] for p in prep]))
        pruned = [(p[1],) for p in prep]
        saved: List[dict] = []
        for layer in range(num_layers):
            ghost = _ghost_rows(h, ranks, n)
            local_in = [(torch.cat([h[r], ghost[r]]), edges[r], legendre_p[r], bias[r]) for r in range(nranks)]
            out = [stage[f"local_project_{layer}"](*local_in[r], *pruned[r]) for r in range(nranks)]
            k_all = torch.cat([o[3] for o in out], 1)  # all-gather
            v_all = torch.cat([o[4] for o in out], 1)
            finish_in = [(o[0], o[2], k_all, v_all) for o in out]
            saved.append({"local": local_in, "finish": finish_in})
            edges = [o[1] for o in out]
            h = [stage[f"finish_{layer}"](*finish_in[r])[0] for r in range(nranks)]
        e = [stage["readout"](h[r], vecs[r], *layout[r])[0] for r in range(nranks)]

    # ---- reverse pass: the VJPs in reverse order, communications reversed
    g_h, g_vec = [], []
    for r in range(nranks):
        ones = (torch.ones_like(e[r]),)
        g_h_r, g_vec_r = backward["readout"]((h[r], vecs[r]), ones, layout[r])
        g_h.append(g_h_r)
        g_vec.append(g_vec_r)
    g_edges = [torch.zeros_like(x) for x in edges]
    g_p = [torch.zeros_like(x) for x in legendre_p]
    g_bias = [torch.zeros_like(x) for x in bias]
    for layer in reversed(range(num_layers)):
        fin = [backward[f"finish_{layer}"](saved[layer]["finish"][r], (g_h[r],)) for r in range(nranks)]
        # reduce-scatter: the sum of every rank's key/value gradient, each rank keeps its rows
        g_k_all = sum(f[2] for f in fin)
        g_v_all = sum(f[3] for f in fin)
        g_h_all = []
        for r in range(nranks):
            mine = slice(rows[r], rows[r + 1])
            cot = (fin[r][0], g_edges[r], fin[r][1], g_k_all[:, mine], g_v_all[:, mine])
            g_in = backward[f"local_project_{layer}"](saved[layer]["local"][r], cot, pruned[r])
            g_h_all.append(g_in[0])
            g_edges[r] = g_in[1]
            g_p[r] = g_p[r] + g_in[2]
            g_bias[r] = g_bias[r] + g_in[3]
        g_h = _reverse_ghost_rows(g_h_all, ranks, n)
    for r in range(nranks):
        cot = (g_bias[r], g_p[r], g_h[r], g_edges[r])
        (g_prep,) = backward["prepare"]((vecs[r],), cot, layout[r])
        g_vec[r] = g_vec[r] + g_prep

    forces, virial = tally_gradients(ranks, [g.to(ranks[0]["vec"].dtype) for g in g_vec], [], n)
    energies = torch.zeros(n, dtype=vecs[0].dtype)
    for rk, e_r in zip(ranks, e):
        energies = energies.index_put((rk["owned"],), e_r)
    return {"energy": sum(x.sum() for x in e), "forces": forces, "virial": virial, "energies": energies}
