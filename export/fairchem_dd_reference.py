"""Reference (single-process) domain-decomposed evaluation of an exported fairchem AllScAIP.

The executable specification of the multi-rank algorithm of docs/fairchem.md (*Multi-rank
evaluation*): it runs the staged methods of the export's ``stages``
(:class:`allscaip.model.fairchem_staged.FairchemStages`) rank by rank as an engine would under MPI,
with every communication emulated by indexing, so that autograd provides the communications of the
backward pass. Per rank r (owned atoms first, then ghosts = periodic images and other ranks' atoms
within ``pair_cutoff`` of an owned atom):

  vec = x_all[index] - x_owned[:, None]                 (leaf, requires grad)
  top = nearest(vec, mask);  top_all = [top ; owners' top of ghosts]           forward comm
  column, kept, bias = rows(vec, mask, index, top_all);  W = max over ranks    all-reduce (max)
  tokens, src_bias, desc = prepare(vec, column, kept, bias, Z_owned, charge, spin, W)
  desc_all = [desc ; owners' desc of ghosts]                                   forward comm (no grad)
  dst_row, dst_slot, dst_bias = destinations(vec, mask, index, top_all, desc_all)
  for layer l:
      t = source_attention(l, tokens, src_bias)
      out = destination_attention(l, [t ; owners' t of ghosts], dst_row, dst_slot, dst_bias)   forward comm
      tokens = out[:Nc] + sum over every rank's ghost copies of the owned atoms of out[ghost]  reverse comm (sum)
      q, k, v = node_project(l, tokens);  K, V = all-gather(k, v)                all-gather
      tokens = node_finish(l, tokens, q, K, V)
  e_owned = readout(tokens, Z_owned, N);  E_rank = e_owned.sum()
backward: dE/dvec -> forces f_i += dE/dvec_ij, f_j -= dE/dvec_ij; virial W = -sum vec (x) dE/dvec,
symmetrised, (W + W^T)/2: fairchem's model is not rotation invariant, so W is not symmetric, and the
whole-system virial (the derivative by a symmetric strain, as fairchem's stress) is its symmetric part.
The backward of a forward communication is a reverse (summing) one and vice versa; of the
all-gather, a reduce-scatter of the key and value gradients.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch

from allscaip_export.dd_reference import ghost_layouts as rank_layouts  # each rank's owned atoms, ghosts, layout


def _forward_comm(owned_rows: List[torch.Tensor], ranks: List[dict], n: int) -> List[torch.Tensor]:
    """Every rank's rows followed by the owners' rows of its ghosts (autograd: reverse sum backward)."""
    shape = [n] + list(owned_rows[0].shape[1:])
    whole = torch.zeros(shape, dtype=owned_rows[0].dtype)
    for rk, rows in zip(ranks, owned_rows):
        whole = whole.index_put((rk["owned"],), rows)
    return [torch.cat([rows, whole[rk["ghost_atom"]]]) for rk, rows in zip(ranks, owned_rows)]


def _reverse_sum(all_rows: List[torch.Tensor], ranks: List[dict], n: int) -> List[torch.Tensor]:
    """Every rank's owned rows plus the ghost rows of every rank that copy them (summed)."""
    nc = [len(rk["owned"]) for rk in ranks]
    whole = torch.zeros([n] + list(all_rows[0].shape[1:]), dtype=all_rows[0].dtype)
    for rk, rows, c in zip(ranks, all_rows, nc):
        whole = whole.index_add(0, rk["ghost_atom"], rows[c:])
    return [rows[:c] + whole[rk["owned"]] for rk, rows, c in zip(ranks, all_rows, nc)]


def fairchem_staged_energy(stages, ranks: List[dict], n: int, charge: int, spin: int):
    """The staged calls over the ranks (module docstring): (total energy [] under autograd, per-atom
    energies [n] detached)."""
    top = _forward_comm([stages.nearest(rk["vec"], rk["mask"]) for rk in ranks], ranks, n)
    rows = [stages.rows(rk["vec"], rk["mask"], rk["index"], t) for rk, t in zip(ranks, top)]
    width = max(int(r[0].shape[1]) for r in rows)  # all-reduce (max)
    prepared = [
        stages.prepare(rk["vec"], col, kept, bias, rk["numbers"], charge, spin, width)
        for rk, (col, kept, bias) in zip(ranks, rows)
    ]
    tokens = [p[0] for p in prepared]
    desc = _forward_comm([p[2] for p in prepared], ranks, n)
    dst = [stages.destinations(rk["vec"], rk["mask"], rk["index"], t, d) for rk, t, d in zip(ranks, top, desc)]
    # The layer loop is written twice: here (one process) and, under MPI, in the LAMMPS plugin once it
    # runs fairchem models on many ranks; FairchemAllScAIP.node_tokens is the whole-system form.
    for layer in range(int(stages.num_layers)):
        attended = [stages.source_attention(layer, t, p[1]) for t, p in zip(tokens, prepared)]
        rows_all = _forward_comm(attended, ranks, n)
        out = [stages.destination_attention(layer, a, *d) for a, d in zip(rows_all, dst)]
        tokens = _reverse_sum(out, ranks, n)
        projected = [stages.node_project(layer, t) for t in tokens]
        k_all = torch.cat([p[1] for p in projected], 1)  # all-gather
        v_all = torch.cat([p[2] for p in projected], 1)
        tokens = [stages.node_finish(layer, t, p[0], k_all, v_all) for t, p in zip(tokens, projected)]
    energies = torch.zeros(n, dtype=torch.float64)
    total = torch.zeros((), dtype=torch.float64)
    for rk, t in zip(ranks, tokens):
        e = stages.readout(t, rk["numbers"], n)
        energies = energies.index_put((rk["owned"],), e.detach())
        total = total + e.sum()
    return total, energies


def fairchem_dd_evaluate(
    stages,
    positions: np.ndarray,
    numbers: np.ndarray,
    cell: np.ndarray,
    owner_rank: np.ndarray,
    nranks: int,
    charge: int = 0,
    spin: int = 1,
    pbc: Sequence[bool] = (True, True, True),
) -> Dict[str, torch.Tensor]:
    """Energy, forces, virial (eV), per-atom energies of a system split over ``nranks``
    (``owner_rank`` per atom; :func:`allscaip_export.dd_reference.split_slabs` cuts slabs)."""
    n = len(numbers)
    ranks = rank_layouts(positions, np.asarray(numbers), cell, pbc, owner_rank, nranks, float(stages.pair_cutoff))
    total, energies = fairchem_staged_energy(stages, ranks, n, charge, spin)
    grads = torch.autograd.grad(total, [rk["vec"] for rk in ranks], allow_unused=True)
    forces = torch.zeros((n, 3), dtype=torch.float64)
    virial = torch.zeros((3, 3), dtype=torch.float64)
    for rk, g in zip(ranks, grads):
        if g is None:
            continue
        g = g * rk["mask"].unsqueeze(-1)
        slot_atom = torch.cat([rk["owned"], rk["ghost_atom"]])
        forces = forces.index_add(0, rk["owned"], g.sum(1))
        forces = forces.index_add(0, slot_atom[rk["index"]].reshape(-1), -g.reshape(-1, 3))
        virial = virial - torch.einsum("ika,ikb->ab", rk["vec"].detach(), g)
    virial = 0.5 * (virial + virial.transpose(0, 1))
    return {"energy": total.detach(), "forces": forces, "virial": virial, "energies": energies}
