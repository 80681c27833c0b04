"""What both `visualize` commands read: option types, the checkpoint with its image processor, and the images.

Errors are `CommandError`s naming the flag, which the command line turns into a usage message and exit status 2.
"""

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch

from ...modeling.value_checks import as_pair, check_keep_rate
from ...recipe.model import CHECKPOINT_MODEL_TYPES
from ..errors import CommandError

DATA_SOURCES = ("digits", "imagefolder")


def bounded_int(flag: str, low: int, high: int) -> Callable[[str], int]:
    """An argparse `type` for an integer option in `[low, high]`, so bad input fails while parsing."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer in [{low}, {high}], got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{flag} must be in [{low}, {high}], got {value}")
        return value

    return parse


def keep_rate(flag: str) -> Callable[[str], float]:
    """An argparse `type` for a keep rate, checked by `value_checks.check_keep_rate`."""

    def parse(text: str) -> float:
        try:
            return check_keep_rate(flag, float(text))
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{flag} must be a number in (0, 1], got {text!r}") from error

    return parse


def add_checkpoint_and_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="saved TriLevel (or ViT) folder with preprocessor_config.json")
    parser.add_argument(
        "--data",
        choices=DATA_SOURCES,
        default="digits",
        help="validation images: the bundled digits or an image folder",
    )
    parser.add_argument(
        "--data-dir", help="with --data imagefolder: a folder of <label>/<image> (or <split>/<label>/<image>)"
    )
    parser.add_argument("--split", default="validation", help="split to read (an image folder with one split uses it)")


def png_path(text: str) -> Path:
    """`--output` as a path ending in .png, its folder created."""
    path = Path(text)
    if path.suffix.lower() != ".png":
        raise CommandError(f"--output must be a .png file, got {text!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def load_checkpoint(folder: str):
    """The model (eval mode) and its saved image processor, with errors that say which file is missing."""
    from transformers import AutoImageProcessor

    from ...modeling.modeling_trilevel_vit import TriLevelViTForImageClassification

    path = Path(folder)
    if not (path / "config.json").is_file():
        raise CommandError(f"--model must be a saved checkpoint folder with a config.json, got {folder!r}.")
    if not (path / "preprocessor_config.json").is_file():
        raise CommandError(
            f"--model {folder} has no preprocessor_config.json, so its preprocessing is unknown; save the image "
            "processor with the model (`processor.save_pretrained(folder)`, or Trainer(processing_class=...))."
        )
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type not in CHECKPOINT_MODEL_TYPES:
        raise CommandError(f"--model {folder} holds a {model_type!r} model; expected a TriLevel or ViT checkpoint.")
    try:
        model = TriLevelViTForImageClassification.from_pretrained(path).eval()
        processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise CommandError(f"--model {folder} does not load as a TriLevel (or ViT) image classifier: {error}") from None
    return model, processor


def load_examples(
    args: argparse.Namespace, limit: int | None, need_labels: bool, image_size: int = 32
) -> tuple[list, torch.Tensor | None]:
    """The first `limit` images (and labels) of the requested split; digits are built at `image_size` pixels."""
    if args.data == "digits":
        if args.data_dir is not None:
            raise CommandError("--data-dir goes with --data imagefolder; the digits are bundled.")
        from ...image_data.digits import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, load_digits_dataset

        splits = load_digits_dataset(image_size=min(max(image_size, MIN_IMAGE_SIZE), MAX_IMAGE_SIZE))
    else:
        if args.data_dir is None or not Path(args.data_dir).is_dir():
            raise CommandError(f"--data imagefolder needs --data-dir, an existing folder; got {args.data_dir!r}.")
        from datasets import load_dataset

        splits = load_dataset("imagefolder", data_dir=args.data_dir)
    if args.split in splits:
        dataset = splits[args.split]
    elif len(splits) == 1:
        dataset = next(iter(splits.values()))
    else:
        raise CommandError(f"--split {args.split!r} is not in the data; available splits: {sorted(splits)}.")
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    if need_labels and "label" not in dataset.column_names:
        raise CommandError(f"the data has no `label` column (columns: {dataset.column_names}); accuracy needs labels.")
    labels = torch.tensor(list(dataset["label"])) if "label" in dataset.column_names else None
    return list(dataset["image"]), labels


def preprocess(processor, images: list, config) -> torch.Tensor:
    """`pixel_values` from the checkpoint's own processor, checked against the model's input size."""
    pixel_values = torch.cat(
        [
            processor([image.convert("RGB") for image in images[start : start + 256]], return_tensors="pt")[
                "pixel_values"
            ]
            for start in range(0, len(images), 256)
        ]
    )
    expected = as_pair(config.image_size)
    if tuple(pixel_values.shape[-2:]) != expected:
        raise CommandError(
            f"the saved image processor makes {tuple(pixel_values.shape[-2:])} images but the model expects "
            f"image_size={expected}; save a processor with size={{'height': {expected[0]}, 'width': {expected[1]}}}."
        )
    return pixel_values
