"""Simulation workflows built on allscaip models (``allscaip <workflow> ...``).

* :mod:`allscaip.workflows.liquid`: liquid density and heat of vaporization.
"""
