"""Data: batches of atomic systems, readers, references and samplers."""

from allscaip.data.batch import AtomsBatch, atoms_to_batch
from allscaip.data.dataset import StructureDataset
from allscaip.data.readers import (
    DataError,
    iter_structures,
    list_data_files,
    read_structures,
    validate_structure,
)
from allscaip.data.references import (
    energy_rms_after_references,
    fit_element_references,
    fit_references_and_rms,
)
from allscaip.data.sampler import MaxAtomsBatchSampler, make_loader

__all__ = [
    "AtomsBatch",
    "atoms_to_batch",
    "StructureDataset",
    "DataError",
    "iter_structures",
    "list_data_files",
    "read_structures",
    "validate_structure",
    "energy_rms_after_references",
    "fit_element_references",
    "fit_references_and_rms",
    "MaxAtomsBatchSampler",
    "make_loader",
]
