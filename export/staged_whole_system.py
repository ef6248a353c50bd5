"""The whole-system call of a TorchScript export with a node encoding, with memory linear in atoms.

A scripted module cannot hold the blocked attention (a custom autograd Function), so the export's
own ``forward`` evaluates encoded node attention densely: O(heads N^2) per layer. This wrapper
gives the ASE calculator and OpenMM's PythonForce the same call, run instead through the staged
``dd_*`` methods (those the LAMMPS plugin uses under MPI) on one rank, with the attention between
``dd_encoding_pair_bias`` and ``dd_global_finish_heads`` evaluated in query blocks by
:func:`allscaip.model.node_encoding.blocked_pair_bias_attention`.

One rank owns every atom. A periodic image needs no ghost row: its node state is its atom's, so
each edge points at the atom itself and the lattice shift enters through the edge vector, as in
the eager model. Forces and virial are the derivatives of the energy with respect to the positions
and a homogeneous strain applied to positions and cell.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from allscaip.model.node_encoding import BLOCK_LOGITS_ELEMENTS, sorted_pairs
from allscaip.neighbors import pad_neighbors
from allscaip_export.dd_reference import staged_energies


def runs_staged(module) -> bool:
    """Does a loaded TorchScript export take the staged route? Yes for models with a node encoding
    whose export has ``dd_encoding_pair_bias`` and ``dd_global_finish_heads`` (older exports keep
    their dense whole-system call)."""
    return float(getattr(module, "encoding_range", 0.0)) > 0 and hasattr(module, "dd_global_finish_heads")


class StagedWholeSystem:
    """Callable with the export's whole-system signature and results (see
    :meth:`allscaip_export.torchscript.ExportedAllScAIP.forward`), evaluated through the staged
    methods of the scripted ``module``, in logits blocks of at most ``block_elements`` values.
    Attributes other than the call are the module's."""

    def __init__(self, module, block_elements: int = BLOCK_LOGITS_ELEMENTS) -> None:
        self.module = module
        self.block_elements = block_elements

    def __getattr__(self, name: str):
        return getattr(self.module, name)

    def __call__(
        self,
        positions: torch.Tensor,
        numbers: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        edge_index: torch.Tensor,
        cell_shifts: torch.Tensor,
        charge: torch.Tensor,
        spin: torch.Tensor,
        encoding_index: Optional[torch.Tensor] = None,
        encoding_shifts: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if encoding_index is None or encoding_shifts is None:
            raise ValueError(
                "this model has a node encoding: pass its pairs (encoding_index, encoding_shifts; "
                "allscaip.neighbors.whole_system_inputs with the metadata's encoding_range)"
            )
        n = positions.shape[0]
        dtype = positions.dtype
        index, shift, mask = pad_neighbors(edge_index[0], edge_index[1], cell_shifts.to(dtype), n)
        pair_index, pair_shift = sorted_pairs(encoding_index, encoding_shifts.to(dtype))
        rows, cols = pair_index[0], pair_index[1]
        with torch.enable_grad():
            x = positions.detach().requires_grad_(True)
            strain = torch.zeros((3, 3), dtype=dtype, device=positions.device, requires_grad=True)
            deform = torch.eye(3, dtype=dtype, device=positions.device) + strain
            x_strained = x @ deform
            cell_strained = cell.to(dtype) @ deform
            vec = x_strained[index] - x_strained.unsqueeze(1) + shift @ cell_strained
            pair_vec = x_strained[cols] - x_strained[rows] + pair_shift @ cell_strained
            rank = dict(
                owned=torch.arange(n, device=positions.device),
                ghost_atom=torch.zeros(0, dtype=torch.long, device=positions.device),
                index=index,
                mask=mask,
                vec=vec,
                z_all=numbers,
                pair_row=rows,
                pair_col=cols,
                pair_vec=pair_vec,
            )
            total, energies = staged_energies(self.module, [rank], n, int(charge), int(spin), self.block_elements)
            grad_x, grad_strain = torch.autograd.grad(total, (x, strain))
        return total.detach(), -grad_x, -grad_strain, energies
