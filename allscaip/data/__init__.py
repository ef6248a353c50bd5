"""Data: batches of atomic systems, readers, references and samplers."""
from allscaip.data.batch import AtomsBatch, atoms_to_batch

__all__ = ["AtomsBatch", "atoms_to_batch"]
