"""Core repulsion: a physical wall where the training data has no atoms.

A network trained on thermal configurations has never seen two atoms closer than the data's
shortest contact, and nothing stops it from predicting a *hole* there. In MD the Boltzmann
weight then collects pairs into the hole (water models here grew intermolecular H–H "bonds"
at 0.6 Å; docs/validation.md). The prior adds, for every pair closer than a per-element-pair
radius ``r_c``, the Ziegler–Biersack–Littmark universal screened nuclear repulsion

    E_ZBL(r) = k_e Z_i Z_j / r * phi(r / a),  a = 0.8854 a_0 / (Z_i^0.23 + Z_j^0.23),
    phi(x) = 0.18175 e^{-3.19980 x} + 0.50986 e^{-0.94229 x} + 0.28022 e^{-0.40290 x}
             + 0.02817 e^{-0.20162 x}

times a switch that is 1 below ``r_c / 2`` and falls to 0 at ``r_c`` with zero first and second
derivatives (smoothstep of degree 5). ``r_c`` is set below the shortest distance of that element
pair in the training data, so the prior is exactly zero on every training configuration and
the trained model is unchanged there.
"""

from __future__ import annotations

import torch


def zbl_energy(r: torch.Tensor, z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
    """ZBL universal screened nuclear repulsion (eV) at distance ``r`` (Å, > 0)."""
    coulomb_ev_ang = 14.399645  # e^2 / (4 pi eps_0)
    screening_ang = 0.46850  # 0.8854 x Bohr radius
    a = screening_ang / (z_i.pow(0.23) + z_j.pow(0.23))
    x = r / a
    phi = (
        0.18175 * torch.exp(-3.19980 * x)
        + 0.50986 * torch.exp(-0.94229 * x)
        + 0.28022 * torch.exp(-0.40290 * x)
        + 0.02817 * torch.exp(-0.20162 * x)
    )
    return coulomb_ev_ang * z_i * z_j / r * phi


def core_switch(r: torch.Tensor, r_c: torch.Tensor) -> torch.Tensor:
    """1 for r <= r_c/2, 0 for r >= r_c, C2-smooth in between (r_c > 0)."""
    t = torch.clamp((r - 0.5 * r_c) / (0.5 * r_c), 0.0, 1.0)
    return 1.0 - t * t * t * (10.0 - 15.0 * t + 6.0 * t * t)


def core_repulsion_energy(
    vec: torch.Tensor,
    mask: torch.Tensor,
    species_c: torch.Tensor,
    species_n: torch.Tensor,
    core_radius: torch.Tensor,
    species_z: torch.Tensor,
) -> torch.Tensor:
    """Per-centre repulsion energies [Nc] (eV) of a padded full neighbour layout.

    vec [Nc, K, 3] edge vectors, mask [Nc, K] real edges, species_c [Nc] and species_n [Nc, K]
    model species of centres and neighbours, core_radius [S, S] (Å; 0 = no wall), species_z [S]
    atomic numbers (float). Every pair appears in both centres' rows of a full list, so each row
    carries half of the pair energy (also across domain-decomposition ranks).
    """
    sc = species_c.unsqueeze(1).expand_as(species_n)
    r_c = core_radius[sc, species_n]
    safe_vec = torch.where(mask.unsqueeze(-1), vec, torch.ones_like(vec))
    r = torch.linalg.vector_norm(safe_vec, dim=-1)
    active = mask & (r < r_c)
    r_safe = torch.where(active, r, torch.ones_like(r))
    rc_safe = torch.where(active, r_c, torch.full_like(r_c, 2.0))
    e = zbl_energy(r_safe, species_z[sc], species_z[species_n]) * core_switch(r_safe, rc_safe)
    return 0.5 * torch.where(active, e, torch.zeros_like(e)).sum(1)
