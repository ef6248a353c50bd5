"""Experimental liquid densities and heats of vaporization at 298.15 K and 1 atm.

Values from ``shared/liquids.md``: densities from the ``thermo`` package's liquid-density
correlations (DIPPR/HEOS), ΔHvap from the CRC Handbook table in the ``chemicals`` package
(column Hvap298). A molecule is matched by name, by canonical SMILES (with RDKit) or, for
molecules read from files, by its Hill formula; formula matches are flagged as such because
isomers share a formula (ethanol and dimethyl ether are both C2H6O).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

REFERENCE_TEMPERATURE_K = 298.15
REFERENCE_PRESSURE_ATM = 1.0
SOURCE = "density: thermo (DIPPR/HEOS correlations); ΔHvap: CRC Handbook via chemicals (Hvap298); 298.15 K, 1 atm"


@dataclass(frozen=True)
class Liquid:
    name: str
    smiles: str
    formula: str  # Hill formula, as ase.Atoms.get_chemical_formula('hill')
    density_g_cm3: float
    hvap_kj_mol: float


LIQUIDS = (
    Liquid("water", "O", "H2O", 0.9971, 43.98),
    Liquid("methanol", "CO", "CH4O", 0.7863, 37.43),
    Liquid("ethanol", "CCO", "C2H6O", 0.7852, 42.32),
    Liquid("acetonitrile", "CC#N", "C2H3N", 0.7767, 32.94),
    Liquid("benzene", "c1ccccc1", "C6H6", 0.8738, 33.83),
    Liquid("acetone", "CC(C)=O", "C3H6O", 0.7848, 30.99),
    Liquid("n-hexane", "CCCCCC", "C6H14", 0.6550, 31.56),
    Liquid("toluene", "Cc1ccccc1", "C7H8", 0.8623, 38.01),
    Liquid("cyclohexane", "C1CCCCC1", "C6H12", 0.7741, 33.01),
    Liquid("tetrahydrofuran", "C1CCOC1", "C4H8O", 0.8801, 31.99),
    Liquid("carbon tetrachloride", "ClC(Cl)(Cl)Cl", "CCl4", 1.5837, 32.43),
    Liquid("ethyl acetate", "CCOC(C)=O", "C4H8O2", 0.8937, 35.60),
)

ALIASES = {
    "hexane": "n-hexane",
    "thf": "tetrahydrofuran",
    "ccl4": "carbon tetrachloride",
    "h2o": "water",
    "meoh": "methanol",
    "etoh": "ethanol",
    "mecn": "acetonitrile",
}


def by_name(name: str) -> Optional[Liquid]:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    for liq in LIQUIDS:
        if liq.name == key:
            return liq
    return None


def _canonical(smiles: str) -> Optional[str]:
    try:  # RDKit is optional at run time: without it, a SMILES is not matched to the table
        from rdkit import Chem, RDLogger
    except ImportError:
        return None
    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    return None if mol is None else Chem.MolToSmiles(mol)


def by_smiles(smiles: str) -> Optional[Liquid]:
    can = _canonical(smiles)
    if can is None:
        return None
    for liq in LIQUIDS:
        if _canonical(liq.smiles) == can:
            return liq
    return None


def by_formula(formula: str) -> Optional[Liquid]:
    """The table entry with this Hill formula (the first one: isomers are not told apart)."""
    for liq in LIQUIDS:
        if liq.formula == formula:
            return liq
    return None


def lookup(spec: str, formula: str, source: str) -> tuple[Optional[Liquid], str]:
    """``(entry, how)`` for a ``--molecule`` spec, its Hill formula and how the spec was read
    (``source``: 'name', 'smiles' or 'file'); ``how`` is 'name', 'smiles', 'formula' or ''."""
    if source == "name":
        liq = by_name(spec)
        if liq is not None:
            return liq, "name"
    if source == "smiles":
        liq = by_smiles(spec)
        if liq is not None:
            return liq, "smiles"
    liq = by_formula(formula)
    if liq is not None:
        return liq, "formula"
    return None, ""
