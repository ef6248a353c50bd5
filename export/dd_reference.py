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

A model with a node encoding (``module.encoding_range`` R > 0) also needs, per rank, the pairs
(owned i, any atom j, owned or ghost image, within R; no self pair of zero shift):
  pair_vec = x_j - x_i                               (leaf, requires grad; ghosts out to max(cutoff, R))
  pair_row = i's owned row, pair_col = the row of j's owner in the gathered K, V (rank order)
  per layer, instead of dd_global_finish:
      bias = dd_encoding_pair_bias(l, pair_vec)                    [P, heads]
      o = attention of q over K, V with bias added at (pair_row, pair_col)   (the engine's; blocked)
      h = dd_global_finish_heads(l, h, o)
  (exports older than those two methods: basis = dd_encoding_basis(pair_vec) once, then
  h = dd_global_finish_encoded(l, h, q, K, V, basis, pair_row, pair_col) in one call per layer)
and dE/dpair_vec is tallied exactly like dE/dvec (forces on i and j, virial -pair_vec (x) g).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from allscaip.model.node_encoding import BLOCK_LOGITS_ELEMENTS, blocked_pair_bias_attention
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
    pbc: Sequence[bool] = (True, True, True),
) -> Dict[str, torch.Tensor]:
    """Energy, forces, virial, per-atom energies of a system (periodic along ``pbc``; a molecule:
    all False) split over ``nranks``."""
    ranks = rank_layouts(module, positions, numbers, cell, owner_rank, nranks, pbc)
    n = len(numbers)
    total, energies = staged_energies(module, ranks, n, charge, spin)
    leaves = [rk["vec"] for rk in ranks] + [rk["pair_vec"] for rk in ranks if "pair_vec" in rk]
    grads = torch.autograd.grad(total, leaves, allow_unused=True)
    forces, virial = tally_gradients(ranks, list(grads[: len(ranks)]), list(grads[len(ranks) :]), n)
    return {"energy": total.detach(), "forces": forces, "virial": virial, "energies": energies}


def ghost_layouts(
    positions: np.ndarray,
    numbers: np.ndarray,
    cell: np.ndarray,
    pbc: Sequence[bool],
    owner_rank: np.ndarray,
    nranks: int,
    cutoff: float,
    dtype: torch.dtype = torch.float64,
) -> List[dict]:
    """Each rank's atoms and padded neighbour layout as an engine builds them: ``owned`` (global atoms),
    ``ghost_atom`` (global atom of each ghost, one per periodic image), ``index``/``mask`` ``[Nc, K]``
    over owned + ghosts, the leaf ``vec`` ``[Nc, K, 3]`` (requires grad), the atomic numbers of owned
    + ghosts (``z_all``) and of the owned atoms (``numbers``)."""
    ci, cj, cs = system_neighbor_pairs(positions, cell, np.asarray(pbc, dtype=bool), cutoff)
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
        owned_t = torch.tensor(owned, dtype=torch.long)
        x_all = torch.cat([pos[owned_t], pos[gatom] + gshift @ cell_t])
        vec = (x_all[index] - x_all[: len(owned)].unsqueeze(1)).detach().requires_grad_(True)
        z_all = torch.tensor(np.concatenate([numbers[owned], numbers[gatom.numpy()]]), dtype=torch.long)
        ranks.append(
            dict(
                owned=owned_t,
                ghost_atom=gatom,
                index=index,
                mask=mask,
                vec=vec,
                z_all=z_all,
                numbers=z_all[: len(owned)],
            )
        )
    return ranks


def rank_layouts(
    module,
    positions: np.ndarray,
    numbers: np.ndarray,
    cell: np.ndarray,
    owner_rank: np.ndarray,
    nranks: int,
    pbc: Sequence[bool] = (True, True, True),
) -> List[dict]:
    """Each rank's layout as an engine builds it (see the module docstring): :func:`ghost_layouts` for
    the module's cutoff; with a node encoding also its pairs."""
    encoding_range = float(getattr(module, "encoding_range", 0.0))
    dtype = torch.float64
    ranks = ghost_layouts(positions, numbers, cell, pbc, owner_rank, nranks, float(module.cutoff), dtype)
    if encoding_range <= 0:
        return ranks
    n = len(numbers)
    pos = torch.tensor(positions, dtype=dtype)
    cell_t = torch.tensor(cell, dtype=dtype)
    # row of each atom in the gathered keys/values: ranks in order, each rank's owned atoms in order
    gathered_row = np.zeros(n, dtype=np.int64)
    gathered_row[np.concatenate([np.nonzero(owner_rank == r)[0] for r in range(nranks)])] = np.arange(n)
    pi, pj, ps = system_neighbor_pairs(positions, cell, np.asarray(pbc, dtype=bool), encoding_range)
    keep = (pi != pj) | (ps != 0).any(1)
    pi, pj, ps = pi[keep], pj[keep], ps[keep]
    for rank in ranks:
        owned = rank["owned"].numpy()
        local_of = {int(a): k for k, a in enumerate(owned)}
        mine = np.nonzero(np.isin(pi, owned))[0]
        # in ascending owned row, as the blocked attention needs (the plugin builds them so)
        mine = mine[np.argsort([local_of[int(a)] for a in pi[mine]], kind="stable")]
        i_atom = torch.tensor(pi[mine], dtype=torch.long)
        j_atom = torch.tensor(pj[mine], dtype=torch.long)
        # x_j of the ghost image (or owned atom) minus x_i: what an engine has on the rank
        x_j = pos[j_atom] + torch.tensor(ps[mine], dtype=dtype).reshape(-1, 3) @ cell_t
        rank.update(
            pair_i=i_atom,
            pair_j=j_atom,
            pair_row=torch.tensor([local_of[int(a)] for a in pi[mine]], dtype=torch.long),
            pair_col=torch.tensor(gathered_row[pj[mine]], dtype=torch.long),
            pair_vec=(x_j - pos[i_atom]).detach().requires_grad_(True),
        )
    return ranks


def tally_gradients(
    ranks: List[dict], vec_grads: List[Optional[torch.Tensor]], pair_grads: List[Optional[torch.Tensor]], n: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Forces [n, 3] and virial [3, 3] from each rank's dE/dvec (``vec_grads``, rank order; None: no
    dependence) and, for the ranks with encoding pairs, dE/dpair_vec (``pair_grads``):
    f_i += g, f_j -= g, W = -sum vec (x) g, as the plugin tallies them."""
    dtype = ranks[0]["vec"].dtype
    forces = torch.zeros((n, 3), dtype=dtype)
    virial = torch.zeros((3, 3), dtype=dtype)
    # encoding pairs: an edge gradient like any other, on i and on j's atom
    for rk, g in zip([rk for rk in ranks if "pair_vec" in rk], pair_grads):
        if g is None:
            continue
        forces = forces.index_add(0, rk["pair_i"], g)
        forces = forces.index_add(0, rk["pair_j"], -g)
        virial = virial - torch.einsum("pa,pb->ab", rk["pair_vec"].detach(), g)
    for rk, g in zip(ranks, vec_grads):
        if g is None:
            continue
        g = g * rk["mask"].unsqueeze(-1)
        # the neighbour of an edge: owned slot or ghost slot -> global atom
        slot_atom = torch.cat([rk["owned"], rk["ghost_atom"]])
        nbr_atom = slot_atom[rk["index"]]
        forces = forces.index_add(0, rk["owned"], g.sum(1))
        forces = forces.index_add(0, nbr_atom.reshape(-1), -g.reshape(-1, 3))
        virial = virial - torch.einsum("ika,ikb->ab", rk["vec"].detach(), g)
    return forces, virial


def staged_energies(
    module, ranks: List[dict], n: int, charge: int, spin: int, block_elements: int = BLOCK_LOGITS_ELEMENTS
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The staged calls over the ranks' layouts (see the module docstring for a rank's keys):
    (total energy [] under autograd, per-atom energies [n] detached). The communications are
    indexing: a ghost's state is its owner's, keys and values are concatenated in rank order.
    :mod:`allscaip_export.staged_whole_system` runs it on one rank whose periodic images are no
    ghosts but the atoms themselves (an empty ``ghost_atom``). ``block_elements``: the largest
    logits block of the encoded attention."""
    encoding = float(getattr(module, "encoding_range", 0.0)) > 0
    state = []
    for rk in ranks:
        idx, bias, P, h, E = module.dd_prepare(rk["vec"], rk["mask"], rk["index"], rk["z_all"], charge, spin)
        state.append([idx, bias, P, h, E])
        if encoding and not hasattr(module, "dd_global_finish_heads"):
            rk["basis"] = module.dd_encoding_basis(rk["pair_vec"])
    # The layer loop is written five times: here (the staged calls, one process),
    # allscaip.model.AllScAIP.forward and .layer (whole systems), lammps_plugin/allscaip_staged.cpp (evaluate_staged)
    # (these calls under MPI), allscaip_export.dd_vjp_reference (the same stages with a manual reverse
    # pass) and lammps_plugin/allscaip_staged_pt2.cpp (that pass under MPI). A change here goes to all five.
    for layer in range(int(module.num_layers)):
        h_global = torch.zeros((n, int(module.hidden)), dtype=state[0][3].dtype, device=state[0][3].device)
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
        for rk, st, q in zip(ranks, state, qs):
            if encoding and hasattr(module, "dd_global_finish_heads"):
                bias = module.dd_encoding_pair_bias(layer, rk["pair_vec"])
                o = blocked_pair_bias_attention(
                    q, k_all, v_all, bias, rk["pair_row"], rk["pair_col"], block_elements=block_elements
                )
                st[3] = module.dd_global_finish_heads(layer, st[3], o)
            elif encoding:
                st[3] = module.dd_global_finish_encoded(
                    layer, st[3], q, k_all, v_all, rk["basis"], rk["pair_row"], rk["pair_col"]
                )
            else:
                st[3] = module.dd_global_finish(layer, st[3], q, k_all, v_all)
    energies = torch.zeros(n, dtype=state[0][3].dtype, device=state[0][3].device)
    total = torch.zeros((), dtype=energies.dtype, device=energies.device)
    for rk, st in zip(ranks, state):
        e = module.dd_readout(st[3], rk["z_all"][: len(rk["owned"])])
        if hasattr(module, "dd_core"):
            e = e + module.dd_core(rk["vec"], rk["mask"], rk["index"], rk["z_all"])
        energies = energies.index_put((rk["owned"],), e.detach())
        total = total + e.sum()
    return total, energies
