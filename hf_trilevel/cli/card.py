"""`hf-trilevel card FOLDER`: the model card of a TriLevel folder saved earlier, from the files the folder holds.

    hf-trilevel card outputs/digits-trilevel --dataset-name "scikit-learn digits"
    hf-trilevel card outputs/run --output card.md --model-id you/run --dataset you/data

The card is built from `config.json`, the `*_results.json` files, `training_args.json` (what `TriLevelTrainer`
writes instead of a pickle) and `operating_points.json` (the operating-point table a dense/sparse run writes), through
the same plain-data renderer as a live run's card (`hf_trilevel.model_card.write_model_card`, which finds each
technique's section by its name in `hf_trilevel.model_card.techniques`). FOLDER may hold a classifier of any TriLevel
family (`hf_trilevel.modeling.FAMILY_CLASSES`); its config loads with the family's config class.
"""

import argparse
from pathlib import Path

from ..model_card.builder import DEFAULT_LICENSE
from ..model_card.folder import write_model_card
from .errors import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # One usage line however wide the terminal: a bad FOLDER is then two lines, the usage and the message.
    parser.usage = "%(prog)s FOLDER [--output PATH] [--model-name NAME] [--model-id ID] [--dataset ID] [options]"
    parser.add_argument("folder", metavar="FOLDER", help="saved checkpoint folder (config.json, *_results.json, ...)")
    parser.add_argument("--output", metavar="PATH", help="where to write the card; default: FOLDER/README.md")
    parser.add_argument("--model-name", metavar="NAME", help="card title; default: the folder's name")
    parser.add_argument("--model-id", metavar="ID", help="Hub id the usage snippet loads; default: the model name")
    parser.add_argument("--dataset", metavar="ID", help="Hub id or loader name of the evaluation data")
    parser.add_argument("--dataset-name", metavar="NAME", help="readable name of the evaluation data")
    parser.add_argument("--license", metavar="ID", default=DEFAULT_LICENSE, help="license identifier")


def run(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    if not (folder / "config.json").is_file():
        raise CommandError(f"FOLDER must be a saved TriLevel checkpoint folder with a config.json, got {folder}.")
    if args.output is not None and not Path(args.output).expanduser().resolve().parent.is_dir():
        raise CommandError(f"--output {args.output}: the folder {Path(args.output).resolve().parent} does not exist.")
    try:
        path = write_model_card(
            folder,
            output=args.output,
            model_name=args.model_name,
            model_id=args.model_id,
            dataset=args.dataset,
            dataset_name=args.dataset_name,
            license=args.license,
        )
    except (ValueError, OSError) as error:  # a config.json that is not JSON or not a valid config, an unreadable file
        raise CommandError(f"{folder}: {error}") from None
    print(f"wrote {path}")
    return 0
