"""`hf-trilevel export onnx FOLDER OUTPUT_DIR`: a saved TriLevel classifier as `model.onnx` (input `pixel_values`,
dynamic batch, output `logits`) with its config and image processor, checked against PyTorch before it reports.

    hf-trilevel export onnx outputs/digits outputs/digits-onnx

FOLDER may hold the classifier of any TriLevel family (`hf_trilevel.modeling.FAMILY_CLASSES`). What is exported and
checked: `hf_trilevel.serving` and docs/serving.md. A bad argument, a setting that does not export or match, and
missing ONNX packages all exit 2 with a message naming the argument or the setting.
"""

import argparse

from ..serving.folder import export_folder
from .errors import CommandError


def add_onnx_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s FOLDER OUTPUT_DIR [--overwrite]"
    parser.add_argument("folder", metavar="FOLDER", help="saved TriLevel classifier folder (weights, image processor)")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="where to write model.onnx (new or empty folder)")
    parser.add_argument("--overwrite", action="store_true", help="write into OUTPUT_DIR even if it holds files")


def run_onnx(args: argparse.Namespace) -> int:
    try:
        report = export_folder(args.folder, args.output_dir, overwrite=args.overwrite)
    except (ValueError, ImportError) as error:  # each names FOLDER, OUTPUT_DIR, the setting or the extra to install
        raise CommandError(str(error)) from None
    print(report)
    return 0
