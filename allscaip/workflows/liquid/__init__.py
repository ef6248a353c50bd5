"""Liquid density and heat of vaporization of an allscaip model (and of the water teacher).

``allscaip liquid --model model.pt --molecule water`` packs a box, minimises, equilibrates and
samples it at constant pressure, simulates one molecule in the gas phase, and reports
ρ and ΔHvap = <U_gas> - <U_liq>/N + RT with standard errors from decorrelated time series,
next to experiment when the liquid is known and next to the teacher with ``--teacher``.

Modules: :mod:`.build` (molecules, checks, packing), :mod:`.engine_openmm`,
:mod:`.engine_lammps`, :mod:`.analysis`, :mod:`.report`, :mod:`.runner` (segmented,
resumable protocol), :mod:`.experimental`, :mod:`.settings`, :mod:`.cli`.
"""
