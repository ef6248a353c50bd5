"""allscaip-export: deployable TorchScript / AOTInductor artefacts with embedded metadata."""

from allscaip_export.metadata import INTERFACE_VERSION, build_metadata
from allscaip_export.torchscript import ExportedAllScAIP, export_torchscript, load_torchscript

__all__ = ["INTERFACE_VERSION", "build_metadata", "ExportedAllScAIP", "export_torchscript", "load_torchscript"]
