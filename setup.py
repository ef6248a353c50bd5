"""Package list for setuptools (metadata lives in pyproject.toml).

Three import packages come from this one repository:
  allscaip         <- allscaip/       (and every subpackage with an __init__.py)
  allscaip_export  <- export/
  allscaip_openmm  <- openmm_plugin/
The directory names of the last two differ from their import names, which
`[tool.setuptools.packages.find]` cannot express, so the list is built here
from an explicit package-dir mapping.  Works for `pip install -e .` and wheels.
"""

from setuptools import find_packages, setup

PACKAGE_DIR = {
    "allscaip": "allscaip",
    "allscaip_export": "export",
    "allscaip_openmm": "openmm_plugin",
}

packages = []
for name, directory in PACKAGE_DIR.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(where=directory)]

setup(packages=packages, package_dir=PACKAGE_DIR)
