"""A saved TriLevel classifier folder as an ONNX serving folder: `hf-trilevel export onnx FOLDER OUTPUT_DIR`.

OUTPUT_DIR receives `model.onnx` (see `onnx_export.py`), and FOLDER's `config.json` (labels, sizes, the settings
the graph was exported with) and `preprocessor_config.json` (what turns an image into `pixel_values`), copied
unchanged. Every check of the arguments runs before the model loads, and nothing is written to OUTPUT_DIR unless the
exported graph matched PyTorch. FOLDER is only read. FOLDER may hold the classifier of any TriLevel family
(`hf_trilevel.modeling.FAMILY_CLASSES`); it loads with its family's classifier class, found by the `model_type` of
its `config.json` (a DeiT or DINOv2 folder loaded as ViT would miss weights, and the graph would match that wrong
model).
"""

import shutil
from pathlib import Path

import torch

from ..modeling import FAMILY_CLASSES, FamilyClasses
from ..training.weight_files import WeightFileError, folder_weight_shapes, read_trilevel_config
from .onnx_export import ExportReport, export_onnx, require_onnx

ONNX_FILE = "model.onnx"
CONFIG_FILE = "config.json"
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"


def export_folder(folder: str | Path, output_dir: str | Path, *, overwrite: bool = False) -> ExportReport:
    """Export the classifier saved in `folder` to `output_dir` (model.onnx, config.json, preprocessor_config.json).

    Bad arguments raise `ValueError` naming FOLDER or OUTPUT_DIR; a setting that does not export or match raises
    `OnnxExportError` naming it; missing ONNX packages raise `ImportError` naming `hf-trilevel[onnx]`.
    """
    folder, output_dir = Path(folder), Path(output_dir)
    family = check_folder(folder)
    check_output_dir(folder, output_dir, overwrite)
    require_onnx()
    model = family.classifier_class.from_pretrained(folder, dtype=torch.float32).eval()
    report = export_onnx(model, output_dir / ONNX_FILE)
    for name in (CONFIG_FILE, IMAGE_PROCESSOR_FILE):
        shutil.copy2(folder / name, output_dir / name)
    return report


def check_folder(folder: Path) -> FamilyClasses:
    """FOLDER must be a saved TriLevel image classifier (of any family) with readable weights and an image processor.
    Returns its family."""
    if not folder.is_dir():
        raise ValueError(f"FOLDER {folder} is not a folder; give the folder a TriLevel model was saved to.")
    config_file = folder / CONFIG_FILE
    if not config_file.is_file():
        raise ValueError(f"FOLDER {folder} holds no config.json; it is not a saved model folder.")
    config = read_trilevel_config(config_file, "FOLDER", folder, model_types=FAMILY_CLASSES)
    family = FAMILY_CLASSES[config["model_type"]]
    architectures = config.get("architectures") or []
    if family.classifier_class.__name__ not in architectures:
        raise ValueError(
            f"FOLDER {folder} holds {architectures or 'no architectures'}, not an image classifier; the ONNX graph "
            f"outputs `logits`, so export a {family.classifier_class.__name__} folder."
        )
    try:
        shapes = folder_weight_shapes(folder)
    except WeightFileError as error:
        raise ValueError(f"FOLDER {folder}: {error}. Save, copy or download the model again.") from None
    if shapes is None:
        raise ValueError(f"FOLDER {folder} holds no model.safetensors (or sharded safetensors index): no weights.")
    if not (folder / IMAGE_PROCESSOR_FILE).is_file():
        raise ValueError(
            f"FOLDER {folder} holds no {IMAGE_PROCESSOR_FILE}; the ONNX model takes processed `pixel_values`, so "
            "save the image processor into FOLDER first (`ViTImageProcessor(...).save_pretrained(FOLDER)`)."
        )
    return family


def check_output_dir(folder: Path, output_dir: Path, overwrite: bool) -> None:
    if output_dir.resolve() == folder.resolve():
        raise ValueError(f"OUTPUT_DIR must differ from FOLDER ({folder}): FOLDER is only read, never replaced.")
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"OUTPUT_DIR {output_dir} is a file, not a folder.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ValueError(f"OUTPUT_DIR {output_dir} already holds files; pass --overwrite to write into it anyway.")


__all__ = ["ONNX_FILE", "check_folder", "check_output_dir", "export_folder"]
