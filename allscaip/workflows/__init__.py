"""Simulation workflows built on allscaip models (``allscaip <workflow> ...``).

* :mod:`allscaip.workflows.liquid`: liquid density and heat of vaporization.
* :mod:`allscaip.workflows.electrolyte`: the aqueous-NaCl models against the teacher (docs/electrolyte.md).
"""
