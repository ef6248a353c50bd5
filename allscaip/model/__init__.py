"""The AllScAIP model and its energy/forces/stress evaluation."""

from allscaip.model.allscaip import AllScAIP
from allscaip.model.evaluate import UnknownElementError, compute_properties, frozen

__all__ = ["AllScAIP", "compute_properties", "UnknownElementError", "frozen"]
