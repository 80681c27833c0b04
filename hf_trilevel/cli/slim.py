"""`hf-trilevel slim IN_DIR OUT_DIR`: a saved TriLevel folder with its pruned heads and MLP neurons removed.

    hf-trilevel slim outputs/digits-structured outputs/digits-slim

IN_DIR may hold a model of any TriLevel family (`hf_trilevel.modeling.FAMILY_CLASSES`). What is saved, and why the
run's results carry over: `hf_trilevel.recipe.slimmed_folder`. IN_DIR is only read.
"""

import argparse

from ..recipe.slimmed_folder import slim_folder
from .errors import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s IN_DIR OUT_DIR [--overwrite]"
    parser.add_argument("in_dir", metavar="IN_DIR", help="saved TriLevel folder whose pruned units are zeros")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="where to save the slimmed model (new or empty folder)")
    parser.add_argument("--overwrite", action="store_true", help="write into OUT_DIR even if it holds files")


def run(args: argparse.Namespace) -> int:
    try:
        summary = slim_folder(args.in_dir, args.out_dir, overwrite=args.overwrite)
    except ValueError as error:  # every message names IN_DIR or OUT_DIR
        raise CommandError(str(error)) from None
    print(summary)
    return 0
