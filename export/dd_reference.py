"""Reference (single-process) implementation of the domain-decomposed evaluation.

It runs the staged ``dd_*`` methods of an exported model exactly as the LAMMPS plugin does
under MPI, with the communications emulated by indexing, so that autograd provides the
reverse communications. It is the executable specification of the multi-rank algorithm:

per rank r (owned atoms first, then ghosts = periodic images within one cutoff):
  vec = x_all[index] - x_owned[:, None]            (leaf, requires grad)
  index, bias, P, h, E = dd_prepare(vec, mask, index, Z_all, charge, spin)
  for layer l:
      h_all = [h_owned ; h of each ghost's owner]   forward comm   (reverse comm in backward)
      h, E = dd_local(l, h_all, E, index, P, bias)
      q, k, v = dd_global_project(l, h)
      K, V = all-gather(k, v) over ranks             (all-reduce of their grads in backward)
      h = dd_global_finish(l, h, q, K, V)
  e_owned = dd_readout(h, Z_owned) + dd_core(vec, mask, index, Z_all);  E_rank = e_owned.sum()
backward: dE/dvec -> forces f_i += dE/dvec_ij, f_j -= dE/dvec_ij; virial W = -sum vec (x) dE/dvec.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np
import torch

from allscaip.neighbors import system_neighbor_pairs


def split_slabs(frac_x: np.ndarray, nranks: int) -> np.ndarray:
    """Rank of each atom when the cell is cut into ``nranks`` slabs along a (fractional x)."""
    return np.minimum((np.mod(frac_x, 1.0) * nranks).astype(int), nranks - 1)


def dd_evaluate(
    module,
    positions: np.ndarray,
    numbers: np.ndarray,
    cell: np.ndarray,
    owner_rank: np.ndarray,
    nranks: int,
    charge: int = 0,
    spin: int = 1,
) -> Dict[str, torch.Tensor]:
    """Energy, forces, virial, per-atom energies of a periodic system split over ``nranks``."""
    cutoff = float(module.cutoff)
    dtype = torch.float64
    n = len(numbers)
    ci, cj, cs = system_neighbor_pairs(positions, cell, np.array([True] * 3), cutoff)
    pos = torch.tensor(positions, dtype=dtype)
    cell_t = torch.tensor(cell, dtype=dtype)
    ranks: List[dict] = []
    for r in range(nranks):
        owned = np.nonzero(owner_rank == r)[0]
        local_of = {int(a): k for k, a in enumerate(owned)}
        ghosts: List[tuple] = []
        ghost_of: Dict[tuple, int] = {}
        rows: List[List[int]] = [[] for _ in owned]
        for e in np.nonzero(np.isin(ci, owned))[0]:
            i, j, s = int(ci[e]), int(cj[e]), tuple(int(v) for v in cs[e])
            if s == (0, 0, 0) and j in local_of:
                slot = local_of[j]
            else:
                key = (j, s)
                if key not in ghost_of:
                    ghost_of[key] = len(owned) + len(ghosts)
                    ghosts.append(key)
                slot = ghost_of[key]
            rows[local_of[i]].append(slot)
        kmax = max([len(x) for x in rows] + [1])
        index = torch.zeros((len(owned), kmax), dtype=torch.long)
        mask = torch.zeros((len(owned), kmax), dtype=torch.bool)
        for c, row in enumerate(rows):
            index[c] = c
            index[c, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[c, : len(row)] = True
        gatom = torch.tensor([g[0] for g in ghosts], dtype=torch.long)
        gshift = torch.tensor([g[1] for g in ghosts], dtype=dtype).reshape(-1, 3)
        x_all = torch.cat([pos[torch.tensor(owned, dtype=torch.long)], pos[gatom] + gshift @ cell_t])
        vec = (x_all[index] - x_all[: len(owned)].unsqueeze(1)).detach().requires_grad_(True)
        z_all = torch.tensor(np.concatenate([numbers[owned], numbers[gatom.numpy()]]), dtype=torch.long)
        ranks.append(
            dict(
                owned=torch.tensor(owned, dtype=torch.long),
                ghost_atom=gatom,
                index=index,
                mask=mask,
                vec=vec,
                z_all=z_all,
            )
        )

    state = []
    for rk in ranks:
        idx, bias, P, h, E = module.dd_prepare(rk["vec"], rk["mask"], rk["index"], rk["z_all"], charge, spin)
        state.append([idx, bias, P, h, E])
    # The layer loop is written three times: here (the staged calls, one process),
    # allscaip.model.AllScAIP.forward (whole systems) and lammps_plugin/allscaip_staged.cpp (evaluate_staged)
    # (these calls under MPI). A change here goes to all three.
    for layer in range(int(module.num_layers)):
        h_global = torch.zeros((n, int(module.hidden)), dtype=dtype)
        for rk, st in zip(ranks, state):
            h_global = h_global.index_put((rk["owned"],), st[3])
        ks, vs = [], []
        for rk, st in zip(ranks, state):
            h_all = torch.cat([st[3], h_global[rk["ghost_atom"]]])  # forward communication
            st[3], st[4] = module.dd_local(layer, h_all, st[4], st[0], st[2], st[1])
        qs = []
        for st in state:
            q, k, v = module.dd_global_project(layer, st[3])
            qs.append(q)
            ks.append(k)
            vs.append(v)
        k_all = torch.cat(ks, 1)  # all-gather over ranks
        v_all = torch.cat(vs, 1)
        for st, q in zip(state, qs):
            st[3] = module.dd_global_finish(layer, st[3], q, k_all, v_all)
    energies = torch.zeros(n, dtype=dtype)
    total = torch.zeros((), dtype=dtype)
    for rk, st in zip(ranks, state):
        e = module.dd_readout(st[3], rk["z_all"][: len(rk["owned"])])
        if hasattr(module, "dd_core"):
            e = e + module.dd_core(rk["vec"], rk["mask"], rk["index"], rk["z_all"])
        energies = energies.index_put((rk["owned"],), e.detach())
        total = total + e.sum()
    grads = torch.autograd.grad(total, [rk["vec"] for rk in ranks], allow_unused=True)
    forces = torch.zeros((n, 3), dtype=dtype)
    virial = torch.zeros((3, 3), dtype=dtype)
    for rk, g in zip(ranks, grads):
        if g is None:
            continue
        g = g * rk["mask"].unsqueeze(-1)
        # the neighbour of an edge: owned slot or ghost slot -> global atom
        slot_atom = torch.cat([rk["owned"], rk["ghost_atom"]])
        nbr_atom = slot_atom[rk["index"]]
        forces = forces.index_add(0, rk["owned"], g.sum(1))
        forces = forces.index_add(0, nbr_atom.reshape(-1), -g.reshape(-1, 3))
        virial = virial - torch.einsum("ika,ikb->ab", rk["vec"].detach(), g)
    return {"energy": total.detach(), "forces": forces, "virial": virial, "energies": energies}
