"""Serving TriLevel models outside PyTorch: ONNX export checked against PyTorch (`onnx_export.py`) and the serving
folder a saved checkpoint becomes (`folder.py`, `hf-trilevel export onnx`). See docs/serving.md.

The ONNX packages are the optional extra `hf-trilevel[onnx]`, imported only when an export runs.
"""

from .folder import export_folder
from .onnx_export import ExportReport, OnnxExportError, check_onnx_matches, export_onnx

__all__ = ["ExportReport", "OnnxExportError", "check_onnx_matches", "export_folder", "export_onnx"]
