"""Train or fine-tune a Tri-Level ViT for image classification with `transformers.Trainer`, offline by default.

The arguments are those of transformers' `examples/pytorch/image-classification/run_image_classification.py`
(`--dataset_name`, `--train_dir`, `--model_name_or_path`, every `TrainingArguments` flag, ...) plus the Tri-Level
ones (token and attention keep rates, keep-rate warm-up, example pruning). A JSON file of arguments works too:
`python examples/run_image_classification.py args.json`.

With no arguments (about 2 minutes on 2 CPU cores) it trains a small TriLevel ViT from scratch on the 1797 digits
bundled with scikit-learn (32x32 RGB, 80/20 stratified split), with token sparsity (30% of the patch tokens dropped
at each of three pruning layers) and attention sparsity (half of each query's connections kept), small random
rotations, scalings and shifts as augmentation, and the tuned recipe in `TRAINING_DEFAULTS`. It prints the
validation accuracy and saves a self-contained folder (weights, config with label names, the model's code, the image
processor, `train_results.json`, `eval_results.json`, `all_results.json`, a model card) that loads anywhere with
`pipeline("image-classification", model="outputs/digits-trilevel", trust_remote_code=True)`.

Command lines::

    python examples/run_image_classification.py                       # digits -> outputs/digits-trilevel
    python examples/run_image_classification.py --train_dir data/train --validation_dir data/val \\
        --output_dir outputs/my-model                                  # image folders, one sub-folder per class
    python examples/run_image_classification.py --dataset_name path/or/hub-id --image_column_name img \\
        --model_name_or_path path/to/vit-checkpoint --ignore_mismatched_sizes --token_keep_rate 0.7 \\
        --learning_rate 5e-5 --num_train_epochs 3                      # fine-tune a ViT/DeiT checkpoint
    accelerate launch --multi_gpu --num_processes 2 examples/run_image_classification.py --example_pruning forgetting
    python examples/run_image_classification.py --help                # every option

Where a value comes from when a flag is not given:

* model shape: the checkpoint (`--model_name_or_path`) or `--config_name`; from scratch, `--image_size` etc.
  (defaults: the digits model below);
* keep rates, pruning layers, token fusion: the checkpoint or config; from scratch without `--config_name`,
  token_keep_rate 0.7 and attention_keep_rate 0.5;
* training flags: `TRAINING_DEFAULTS` (tuned for training a small ViT from scratch), then transformers' defaults;
* `--output_dir`: `outputs/digits-trilevel` for the digits, `outputs/<data set name>-trilevel` otherwise;
* `--use_cpu`: on by itself when several processes are launched on a machine without GPUs (transformers would
  otherwise run every process as an independent copy).

How bad input is handled (each stops the run before training, exit status 2, with a message naming the argument):
a missing image or label column; a label column of floats or lists (integer and string labels are encoded into a
ClassLabel, with a notice); a checkpoint or config that is not a ViT; a classifier with a different number of
labels unless `--ignore_mismatched_sizes`; an `--output_dir` that holds a saved model unless `--overwrite_output_dir`
(or `--resume_from_checkpoint`). Images of any mode are converted to RGB. Unreadable image files are dropped with a
warning and a count (`--check_images False` skips the check, one decode per image, for large clean data sets).
"""

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from datasets import DatasetDict
from transformers import (
    AutoImageProcessor,
    HfArgumentParser,
    PretrainedConfig,
    TrainingArguments,
    ViTImageProcessorPil,
    set_seed,
)

from hf_trilevel import (
    ExamplePruningCallback,
    KeepRateScheduleCallback,
    TriLevelTrainer,
    TriLevelViTConfig,
    TriLevelViTForImageClassification,
)
from hf_trilevel.digits import DIGIT_NAMES, load_digits_dataset
from hf_trilevel.flops import num_patches
from hf_trilevel.image_datasets import (
    IMAGE,
    LABEL,
    drop_unreadable_images,
    encode_labels,
    is_missing_local_path,
    load_image_dataset,
    select_image_and_label,
    split_off_validation,
    take_samples,
)
from hf_trilevel.image_transforms import (
    TRAIN_AUGMENTATIONS,
    RandomSource,
    eval_transforms,
    image_size_of,
    train_transforms,
)
from hf_trilevel.metrics import compute_metrics, sparsity_metrics
from hf_trilevel.trainer import check_hub_strategy

logger = logging.getLogger("run_image_classification")

# The digits model, used when training from scratch without --config_name.
SCRATCH_SHAPE = {
    "image_size": 32,
    "patch_size": 4,
    "hidden_size": 128,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "intermediate_size": 256,
}
SCRATCH_SPARSITY = {"token_keep_rate": 0.7, "attention_keep_rate": 0.5}
SPARSITY_FIELDS = ("token_keep_rate", "token_prune_layers", "token_fusion", "attention_keep_rate")
# Files that mark a folder as holding the results of an earlier run.
SAVED_RUN_FILES = (
    "config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "trainer_state.json",
    "all_results.json",
    "train_results.json",
    "eval_results.json",
)


@dataclass
class ModelArguments:
    """Which model to start from: a checkpoint, a config, or a new model of the shape given here."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A TriLevel checkpoint, or a plain ViT/DeiT checkpoint (converted on load), as a folder or a Hub "
            "id. Omit it to train from scratch (from --config_name, or the shape below)."
        },
    )
    config_name: str | None = field(
        default=None, metadata={"help": "A ViT or TriLevel config (folder, config.json or Hub id) to use instead."}
    )
    image_processor_name: str | None = field(
        default=None,
        metadata={"help": "Image processor whose mean and std to use (default: the checkpoint's, or 0.5)."},
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache Hub downloads."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of a Hub checkpoint."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private checkpoints and data sets."})
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Allow custom code of the image processor. The model always runs this package's TriLevel "
            "classes, never a checkpoint's code."
        },
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Replace a checkpoint's classifier whose number of labels differs from the data's."},
    )
    image_size: int | None = field(default=None, metadata={"help": "From scratch: input side in pixels (32)."})
    patch_size: int | None = field(default=None, metadata={"help": "From scratch: patch side; divides image_size (4)."})
    hidden_size: int | None = field(default=None, metadata={"help": "From scratch: transformer width (128)."})
    num_hidden_layers: int | None = field(default=None, metadata={"help": "From scratch: number of layers (6)."})
    num_attention_heads: int | None = field(
        default=None, metadata={"help": "From scratch: attention heads; divides hidden_size (4)."}
    )
    intermediate_size: int | None = field(default=None, metadata={"help": "From scratch: MLP hidden width (256)."})
    token_keep_rate: float | None = field(
        default=None,
        metadata={
            "help": "Share of patch tokens kept at each pruning layer, in (0, 1]. Default: from the "
            "checkpoint/config; 0.7 from scratch."
        },
    )
    token_prune_layers: list[int] | None = field(
        default=None,
        metadata={
            "help": "0-indexed pruning layers, e.g. `1 3 4`. Default: from the checkpoint/config; a quarter, "
            "half and 3/4 of the depth from scratch."
        },
    )
    token_fusion: bool | None = field(
        default=None,
        metadata={
            "help": "Fuse the dropped tokens into one extra token instead of discarding them. Default: from the "
            "checkpoint/config; off from scratch.",
            "nargs": "?",
            "const": True,
        },
    )
    attention_keep_rate: float | None = field(
        default=None,
        metadata={
            "help": "Share of attention connections kept per query, in (0, 1]; 1 is dense. Default: from "
            "the checkpoint/config; 0.5 from scratch."
        },
    )


@dataclass
class DataArguments:
    """Which images to train and evaluate on, and how to augment them."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A data set: Hub id, local folder, or a folder written by `save_to_disk`. Default, with "
            "no --train_dir either: the digits bundled with scikit-learn."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The data set's configuration name."})
    train_dir: str | None = field(default=None, metadata={"help": "Image folder of training data (class sub-folders)."})
    validation_dir: str | None = field(default=None, metadata={"help": "Image folder of validation data."})
    train_val_split: float | None = field(
        default=None,
        metadata={
            "help": "Share of train held out for validation when there is no validation split (0.15; the "
            "digits: 0.2, stratified). 0 keeps none."
        },
    )
    split_seed: int = field(
        default=0, metadata={"help": "Seed of that split and of sample limits; apart from --seed so runs compare."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on a random subset of this many examples (quick runs and tests)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on a random subset of this many examples."}
    )
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the labels."})
    augmentation: str = field(
        default="auto",
        metadata={
            "help": "Training augmentation: crop_flip (random resized crop + horizontal flip), crop (no flip: "
            "digits, text), affine (small rotation/scale/shift), none. auto: affine for the digits, crop_flip else.",
            "choices": ["auto", *TRAIN_AUGMENTATIONS],
        },
    )
    min_crop_scale: float = field(
        default=0.08, metadata={"help": "Smallest area share a random resized crop keeps, in (0, 1]."}
    )
    check_images: bool = field(
        default=True,
        metadata={"help": "Decode every image once before training and drop unreadable files with a warning."},
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for the image check (--check_images)."}
    )


@dataclass
class PruningArguments:
    """Example-level pruning and the token keep-rate warm-up."""

    example_pruning: str = field(
        default="none",
        metadata={
            "help": "Drop training examples by importance: none, forgetting (Tri-Level E-ViT) or loss (InfoBatch).",
            "choices": ["none", "forgetting", "loss"],
        },
    )
    keep_fraction: float = field(default=0.8, metadata={"help": "forgetting: share of the data kept every epoch."})
    swap_fraction: float = field(
        default=0.05, metadata={"help": "forgetting: share of the data swapped in and out at each swap epoch."}
    )
    swap_epochs: list[int] | None = field(
        default=None,
        metadata={"help": "forgetting: epochs that start with a swap; default every tenth until half-way."},
    )
    prune_ratio: float = field(
        default=0.5, metadata={"help": "loss: share of the lowest-loss half skipped each pruned epoch, in (0, 1)."}
    )
    full_data_fraction: float = field(
        default=0.125, metadata={"help": "loss: final share of the epochs trained on all the data."}
    )
    keep_rate_schedule: bool = field(
        default=False, metadata={"help": "Warm token_keep_rate up from 1.0 to its target (per-step cosine)."}
    )
    keep_rate_warmup_fraction: float = field(
        default=10 / 300, metadata={"help": "Share of training at token_keep_rate 1.0 before the decay starts."}
    )
    keep_rate_decay_fraction: float = field(
        default=100 / 300, metadata={"help": "Share of training over which the rate decays to its target."}
    )


@dataclass
class RunArguments:
    """Consent to replace an earlier run's results (transformers 5 dropped `overwrite_output_dir`)."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into an --output_dir that already holds a saved model or results, replacing them."},
    )


# The tuned recipe; transformers' own defaults (lr 5e-5, 3 epochs, checkpoints every 500 steps) suit fine-tuning,
# not training a small ViT from scratch. Any flag given on the command line or in the JSON file wins. `None` marks
# defaults that depend on other arguments (`resolve_defaults`).
TRAINING_DEFAULTS = {
    "output_dir": None,
    "do_train": True,
    "do_eval": True,
    "num_train_epochs": 30,
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 256,
    "learning_rate": 1e-3,
    "weight_decay": 0.05,
    "warmup_steps": 0.1,
    "lr_scheduler_type": "cosine",
    "eval_strategy": "epoch",
    "save_strategy": "no",
    "logging_steps": 50,
    "report_to": "none",
    "seed": 0,
    "remove_unused_columns": False,
    "dataloader_num_workers": 0,
    "dataloader_pin_memory": False,  # CPU training; avoids a warning per epoch
    "use_cpu": None,
}
ARGUMENT_GROUPS = (ModelArguments, DataArguments, PruningArguments, RunArguments, TrainingArguments)


# --- arguments --------------------------------------------------------------------------------------------------------


def build_parser() -> HfArgumentParser:
    """The argument groups, with `TRAINING_DEFAULTS` replacing transformers' defaults for unset flags."""
    parser = HfArgumentParser(ARGUMENT_GROUPS)
    parser.usage = "%(prog)s [--help] [--option value ...] | %(prog)s arguments.json"  # errors stay readable
    parser.allow_abbrev = False  # `--token_keep 0.5` is a typo to report, not `--token_keep_rate 0.5`
    parser.set_defaults(**TRAINING_DEFAULTS)
    return parser


def parse_arguments(parser: HfArgumentParser, argv: list[str]) -> tuple:
    """Flags, or a single JSON file of them, into the argument dataclasses (`ValueError` for unknown arguments).

    Both forms go through the parser's defaults, so a JSON file gets the tuned recipe too (transformers'
    `parse_json_file` would use the dataclass defaults instead).
    """
    if len(argv) == 1 and argv[0].endswith(".json"):
        path = Path(argv[0])
        if not path.is_file():
            raise ValueError(f"the arguments file {argv[0]!r} does not exist.")
        try:
            given = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"the arguments file {argv[0]!r} is not valid JSON: {error}") from error
        if not isinstance(given, dict):
            raise ValueError(f"the arguments file {argv[0]!r} must hold a JSON object of argument names and values.")
        values = {**vars(parser.parse_args([])), **given}
    else:
        namespace, unknown = parser.parse_known_args(argv)
        if unknown:
            raise ValueError(f"unrecognized arguments: {' '.join(unknown)}")
        values = vars(namespace)
    return parser.parse_dict(resolve_defaults(values))


def resolve_defaults(values: dict) -> dict:
    """Fill the defaults that depend on other arguments or on how the script was launched."""
    values = dict(values)
    if values.get("output_dir") is None:
        source = values.get("dataset_name") or values.get("train_dir") or values.get("validation_dir")
        name = Path(source.rstrip("/")).name if source else "digits"
        values["output_dir"] = f"outputs/{name}-trilevel"
    if values.get("use_cpu") is None:
        values["use_cpu"] = launched_on_several_processes() and not torch.accelerator.is_available()
    return values


def launched_on_several_processes() -> bool:
    """True under `accelerate launch --num_processes N` / `torchrun --nproc_per_node N` with N > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def uses_digits(data_args: DataArguments) -> bool:
    """No data set named: train on the digits bundled with scikit-learn."""
    return data_args.dataset_name is None and data_args.train_dir is None and data_args.validation_dir is None


def check_arguments(
    model_args: ModelArguments, data_args: DataArguments, run_args: RunArguments, training_args: TrainingArguments
) -> None:
    """Raise `ValueError` for settings that would otherwise fail deep inside the model, the data or the Trainer."""
    check_hub_strategy(training_args)
    if not (training_args.do_train or training_args.do_eval):
        raise ValueError("--do_train and --do_eval are both False: there is nothing to do.")
    if not training_args.do_train and model_args.model_name_or_path is None:
        raise ValueError("--do_train False evaluates a trained model: give it with --model_name_or_path.")
    shape_given = [name for name in SCRATCH_SHAPE if getattr(model_args, name) is not None]
    if shape_given and (model_args.model_name_or_path or model_args.config_name):
        raise ValueError(
            f"--{shape_given[0]} shapes a model trained from scratch; with --model_name_or_path or --config_name the "
            "shape comes from that checkpoint or config."
        )
    for name in shape_given:
        if getattr(model_args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(model_args, name)}.")
    for name in ("max_train_samples", "max_eval_samples"):
        value = getattr(data_args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be a positive integer (or omitted for all examples), got {value}.")
    if data_args.train_val_split is not None and not 0 <= data_args.train_val_split < 1:
        raise ValueError(f"--train_val_split must be in [0, 1), got {data_args.train_val_split}.")
    if not 0 < data_args.min_crop_scale <= 1:
        raise ValueError(f"--min_crop_scale must be in (0, 1], got {data_args.min_crop_scale}.")
    if training_args.remove_unused_columns:
        raise ValueError(
            "--remove_unused_columns must stay False: the on-the-fly transform reads the `image` column, "
            "which the Trainer would otherwise drop."
        )
    check_distribution(training_args)
    check_output_dir(training_args, run_args.overwrite_output_dir)


def check_distribution(training_args: TrainingArguments) -> None:
    """Refuse several launched processes that the Trainer would not connect (each would train its own copy)."""
    if launched_on_several_processes() and training_args.world_size == 1:
        raise ValueError(
            f"{os.environ['WORLD_SIZE']} processes were launched but the Trainer does not distribute them (no GPU, "
            "--use_cpu False), so each would train its own copy. Pass --use_cpu for DDP over gloo on CPU."
        )


def check_output_dir(training_args: TrainingArguments, overwrite_output_dir: bool) -> None:
    """Refuse to train into a folder that holds an earlier run's model or results without consent.

    `--resume_from_checkpoint` continues the run in that folder, so it counts as consent; its path must exist.
    """
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is not None and not Path(checkpoint).is_dir():
        raise ValueError(f"--resume_from_checkpoint {checkpoint!r} is not a directory (e.g. OUTPUT/checkpoint-500).")
    if not training_args.do_train or overwrite_output_dir or checkpoint is not None:
        return
    found = saved_run_files(Path(training_args.output_dir))
    if found:
        raise ValueError(
            f"--output_dir {training_args.output_dir!r} already holds {', '.join(found[:4])}: pass "
            "--overwrite_output_dir to replace them, --resume_from_checkpoint to continue a run saved there, or "
            "choose another --output_dir."
        )


def saved_run_files(output_dir: Path) -> list[str]:
    """Names in `output_dir` that an earlier run saved (model, results, Trainer checkpoints)."""
    if not output_dir.is_dir():
        return []
    found = [name for name in SAVED_RUN_FILES if (output_dir / name).exists()]
    return found + sorted(path.name for path in output_dir.glob("checkpoint-*") if path.is_dir())


def build_callbacks(pruning_args: PruningArguments) -> list:
    """The example-pruning and keep-rate callbacks the arguments ask for (settings are validated here)."""
    callbacks = []
    if pruning_args.example_pruning == "forgetting":
        settings = {"keep_fraction": pruning_args.keep_fraction, "swap_fraction": pruning_args.swap_fraction}
        callbacks.append(ExamplePruningCallback("forgetting", swap_epochs=pruning_args.swap_epochs, **settings))
    elif pruning_args.example_pruning == "loss":
        settings = {"prune_ratio": pruning_args.prune_ratio, "full_data_fraction": pruning_args.full_data_fraction}
        callbacks.append(ExamplePruningCallback("loss", **settings))
    if pruning_args.keep_rate_schedule:
        callbacks.append(
            KeepRateScheduleCallback(
                warmup_fraction=pruning_args.keep_rate_warmup_fraction,
                decay_fraction=pruning_args.keep_rate_decay_fraction,
            )
        )
    return callbacks


# --- data -------------------------------------------------------------------------------------------------------------


def load_user_dataset(data_args: DataArguments, model_args: ModelArguments, seed: int) -> DatasetDict:
    """The user's data as `{"train", "validation"}` splits with `image` and ClassLabel `label` columns."""
    dataset = load_image_dataset(
        data_args.dataset_name,
        data_args.dataset_config_name,
        data_args.train_dir,
        data_args.validation_dir,
        cache_dir=model_args.cache_dir,
        token=model_args.token,
    )
    train_val_split = 0.15 if data_args.train_val_split is None else data_args.train_val_split
    dataset = split_off_validation(dataset, train_val_split, seed)
    dataset = select_image_and_label(dataset, data_args.image_column_name, data_args.label_column_name)
    dataset, notice = encode_labels(dataset, data_args.label_column_name)
    if notice:
        logger.warning(notice)
    return dataset


def load_digits(data_args: DataArguments, image_size: int) -> DatasetDict:
    """The bundled digits at `image_size`, split 80/20 (or `--train_val_split`) by class."""
    fraction = 0.2 if data_args.train_val_split is None else data_args.train_val_split
    try:
        return load_digits_dataset(image_size, fraction, data_args.split_seed)
    except ValueError as error:
        raise ValueError(f"--train_val_split / --image_size for the digits: {error}") from error


def check_splits(dataset: DatasetDict, training_args: TrainingArguments) -> None:
    """The splits the run needs exist and are not empty."""
    needs_validation = training_args.do_eval or training_args.eval_strategy != "no"
    for split, needed, hint in (
        ("train", training_args.do_train, "give --train_dir or a data set with a train split"),
        ("validation", needs_validation, "give --validation_dir or --train_val_split > 0, or pass --do_eval False "
         "--eval_strategy no"),
    ):  # fmt: skip
        if needed and (split not in dataset or len(dataset[split]) == 0):
            raise ValueError(f"there is no {split} data ({hint}).")


def finish_splits(dataset: DatasetDict, data_args: DataArguments, check_images: bool) -> DatasetDict:
    """Apply `--max_train_samples` / `--max_eval_samples`, then drop unreadable images (warning with a count)."""
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    finished = {}
    for split, data in dataset.items():
        data = take_samples(data, limits.get(split), data_args.split_seed)
        if check_images:
            data, dropped = drop_unreadable_images(data, data_args.preprocessing_num_workers)
            if dropped:
                listed = "; ".join(f"{path} ({reason})" for path, reason in dropped[:5])
                logger.warning(
                    f"skipped {len(dropped)} of {len(data) + len(dropped)} {split} images that cannot be read: "
                    f"{listed}{' ...' if len(dropped) > 5 else ''}"
                )
            if len(data) == 0:
                raise ValueError(f"none of the {split} images can be read.")
        finished[split] = data
    return DatasetDict(finished)


def preprocess(batch: dict, transform, image_processor: ViTImageProcessorPil) -> dict:
    """A batch of `image`/`label` -> `pixel_values` `[batch, 3, height, width]` and `labels`.

    The image processor saved with the model does the final rescale and normalisation, exactly as `pipeline` will.
    """
    images = [transform(image) for image in batch[IMAGE]]
    pixel_values = image_processor(images, return_tensors="pt")["pixel_values"]
    return {"pixel_values": pixel_values, "labels": batch[LABEL]}


def attach_transforms(
    dataset: DatasetDict, image_processor: ViTImageProcessorPil, train_transform, eval_transform
) -> DatasetDict:
    """Preprocess on the fly (`with_transform`: nothing cached, fresh augmentations every epoch)."""
    transforms = {"train": train_transform, "validation": eval_transform}
    return DatasetDict(
        {
            split: data.with_transform(
                partial(preprocess, transform=transforms[split], image_processor=image_processor)
            )
            for split, data in dataset.items()
        }
    )


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack the per-example `pixel_values` tensors and `labels` ints that the transformed datasets yield."""
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example["labels"] for example in examples], dtype=torch.long),
    }


# --- model ------------------------------------------------------------------------------------------------------------


def hub_kwargs(model_args: ModelArguments) -> dict:
    return {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token}


def read_vit_config(source: str, argument: str, model_args: ModelArguments) -> dict:
    """The raw `config.json` of `source`, which must describe a ViT or TriLevel ViT."""
    if is_missing_local_path(source):
        raise ValueError(f"--{argument} {source!r}: no such folder or file.")
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(source, **hub_kwargs(model_args))
    except (OSError, ValueError) as error:
        raise ValueError(f"--{argument} {source!r}: cannot read its config: {error}") from error
    model_type = config_dict.get("model_type")
    if model_type is None:
        raise ValueError(f"--{argument} {source!r} has no config.json with a `model_type`; is it a model folder?")
    if model_type not in ("vit", TriLevelViTConfig.model_type):
        raise ValueError(
            f"--{argument} {source!r} is a {model_type!r} model; this example trains TriLevel ViTs, which start from "
            f"a TriLevel or a plain ViT/DeiT checkpoint (model_type 'trilevel_vit' or 'vit')."
        )
    return config_dict


def build_config(model_args: ModelArguments, label_names: list[str]) -> TriLevelViTConfig:
    """The model's config: from the checkpoint, `--config_name` or the scratch shape, with the data's label names
    (saved with the checkpoint and used by pipelines) and any keep rates given on the command line."""
    labels = {  # num_labels follows from id2label
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: index for index, name in enumerate(label_names)},
    }
    sparsity = {name: getattr(model_args, name) for name in SPARSITY_FIELDS if getattr(model_args, name) is not None}
    if model_args.model_name_or_path is not None:
        checkpoint = read_vit_config(model_args.model_name_or_path, "model_name_or_path", model_args)
        check_classifier_size(checkpoint, len(label_names), model_args.ignore_mismatched_sizes)
    if model_args.config_name is None and model_args.model_name_or_path is None:
        shape = {name: getattr(model_args, name) or default for name, default in SCRATCH_SHAPE.items()}
        check_scratch_shape(shape)
        return TriLevelViTConfig(**shape, **{**SCRATCH_SPARSITY, **sparsity}, **labels)
    source, argument = (
        (model_args.config_name, "config_name") if model_args.config_name else (model_args.model_name_or_path, "")
    )
    if argument:
        read_vit_config(source, argument, model_args)
    config = TriLevelViTConfig.from_pretrained(source, **hub_kwargs(model_args), **labels, **sparsity)
    config.check_trilevel_fields()  # from_pretrained sets keyword arguments after the config validated itself
    return config


def check_scratch_shape(shape: dict[str, int]) -> None:
    if shape["image_size"] % shape["patch_size"]:
        raise ValueError(
            f"--patch_size must divide --image_size, got patch_size={shape['patch_size']} and "
            f"image_size={shape['image_size']}."
        )
    if shape["hidden_size"] % shape["num_attention_heads"]:
        raise ValueError(
            f"--num_attention_heads must divide --hidden_size, got num_attention_heads="
            f"{shape['num_attention_heads']} and hidden_size={shape['hidden_size']}."
        )


def check_classifier_size(checkpoint: dict, num_labels: int, ignore_mismatched_sizes: bool) -> None:
    """A checkpoint's classifier must fit the data's labels unless the user agrees to replace it."""
    has_classifier = any("ForImageClassification" in name for name in checkpoint.get("architectures") or [])
    checkpoint_labels = len(checkpoint.get("id2label") or {}) or checkpoint.get("num_labels")
    if has_classifier and checkpoint_labels != num_labels and not ignore_mismatched_sizes:
        raise ValueError(
            f"--model_name_or_path has a classifier for {checkpoint_labels} labels but the data has {num_labels}; "
            "pass --ignore_mismatched_sizes to train a new classifier."
        )


def build_model(model_args: ModelArguments, config: TriLevelViTConfig) -> TriLevelViTForImageClassification:
    """A new model for `config`, or the checkpoint's weights in this package's TriLevel classes."""
    if model_args.model_name_or_path is None:
        return TriLevelViTForImageClassification(config)
    try:
        return TriLevelViTForImageClassification.from_pretrained(
            model_args.model_name_or_path,
            config=config,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            **hub_kwargs(model_args),
        )
    except OSError as error:
        raise ValueError(
            f"--model_name_or_path {model_args.model_name_or_path!r}: cannot load weights: {error}"
        ) from error


def build_image_processor(model_args: ModelArguments, config: TriLevelViTConfig) -> ViTImageProcessorPil:
    """A ViT image processor at the model's resolution with the named (or checkpoint's) normalisation.

    It must resize to the model's `image_size`: `pipeline` resizes to the processor's size, and a processor at
    another size (a default one resizes to 224) makes the model refuse its input.
    """
    settings = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "rescale_factor": 1 / 255}
    source = model_args.image_processor_name or model_args.model_name_or_path
    if source is not None:
        try:
            loaded = AutoImageProcessor.from_pretrained(
                source, trust_remote_code=model_args.trust_remote_code, **hub_kwargs(model_args)
            )
        except (OSError, ValueError) as error:
            if model_args.image_processor_name:
                raise ValueError(f"--image_processor_name {source!r}: cannot load it: {error}") from error
            logger.warning(f"{source} has no image processor; normalising with mean = std = 0.5.")
        else:
            settings = {name: _value_or(getattr(loaded, name, None), default) for name, default in settings.items()}
    height, width = image_size_of(config.image_size)
    return ViTImageProcessorPil(
        do_resize=True, size={"height": height, "width": width}, do_rescale=True, do_normalize=True, **settings
    )


def _value_or(value, default):
    return default if value is None else value


# --- results ----------------------------------------------------------------------------------------------------------


def examples_seen_metrics(trainer: TriLevelTrainer, num_train_examples: int) -> dict[str, float]:
    """How many examples the run trained on, and their share of `epochs x data`."""
    pruner = trainer.example_pruner
    if pruner is not None:
        seen = sum(pruner.sizes)
        return {"examples_seen": seen, "example_fraction_seen": seen / (len(pruner.sizes) * pruner.num_examples)}
    return {"examples_seen": round(trainer.state.epoch * num_train_examples), "example_fraction_seen": 1.0}


def describe(setup: "Setup") -> str:
    """One paragraph on what is about to run: model, sparsity, data, augmentation, processes."""
    config, training_args = setup.model.config, setup.training_args
    sizes = " / ".join(f"{len(data)} {split}" for split, data in setup.dataset.items())
    text = (
        f"TriLevel ViT: {setup.model.num_parameters():,} parameters, {config.num_hidden_layers} layers, "
        f"hidden {config.hidden_size}, {num_patches(config)} patches; "
        f"token_keep_rate={config.token_keep_rate} at layers {config.token_prune_layers} "
        f"(fusion {'on' if config.token_fusion else 'off'}), attention_keep_rate={config.attention_keep_rate}; "
        f"{config.num_labels} classes, {sizes} images; augmentation {setup.augmentation}."
    )
    if training_args.world_size > 1:
        backend = " on CPU over gloo (--use_cpu)" if training_args.use_cpu else ""
        text += f" {training_args.world_size} processes, {training_args.parallel_mode.value}{backend}."
    return text


def model_card_kwargs(model_args: ModelArguments, data_args: DataArguments) -> dict:
    """What transformers' example passes to `push_to_hub` / `create_model_card`."""
    dataset = "scikit-learn digits" if uses_digits(data_args) else data_args.dataset_name or "imagefolder"
    kwargs = {
        "finetuned_from": model_args.model_name_or_path,
        "tasks": "image-classification",
        "dataset": dataset,
        "tags": ["image-classification", "vision", "trilevel-vit"],
    }
    if data_args.dataset_name and not Path(data_args.dataset_name).exists():  # a Hub id
        kwargs["dataset_tags"] = data_args.dataset_name
    return kwargs


# --- main -------------------------------------------------------------------------------------------------------------


def configure_logging(training_args: TrainingArguments) -> None:
    """This script's notices on stderr, from the main process only (every process reaches the same ones)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[run_image_classification] %(levelname)s: %(message)s"))
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO if training_args.process_index == 0 else logging.ERROR)


@dataclass
class Setup:
    """Everything the Trainer needs, built and checked before training starts."""

    model_args: ModelArguments
    data_args: DataArguments
    training_args: TrainingArguments
    model: TriLevelViTForImageClassification
    image_processor: ViTImageProcessorPil
    dataset: DatasetDict  # transformed splits: `pixel_values` and `labels`
    callbacks: list
    augmentation: str


def prepare(argv: list[str]) -> Setup:
    """Parse and check the arguments, load and check the data, build the model: every bad setting stops here,
    before training, with a message naming the argument (`parser.error`: usage line, message, exit status 2)."""
    parser = build_parser()
    try:
        model_args, data_args, pruning_args, run_args, training_args = parse_arguments(parser, argv)
        configure_logging(training_args)
        check_arguments(model_args, data_args, run_args, training_args)
        callbacks = build_callbacks(pruning_args)
        digits = uses_digits(data_args)
        with training_args.main_process_first(desc="loading the data"):  # rank 0 fills the datasets cache first
            dataset = None if digits else load_user_dataset(data_args, model_args, data_args.split_seed)
            label_names = DIGIT_NAMES if digits else next(iter(dataset.values())).features[LABEL].names
            config = build_config(model_args, label_names)
            if digits:
                dataset = load_digits(data_args, max(image_size_of(config.image_size)))
            check_splits(dataset, training_args)
            dataset = finish_splits(dataset, data_args, data_args.check_images and not digits)
        image_processor = build_image_processor(model_args, config)
        augmentation = data_args.augmentation
        if augmentation == "auto":  # flips and crops would turn a 6 into a 2 or cut a 7 in half
            augmentation = "affine" if digits else "crop_flip"
        size = image_size_of(config.image_size)
        random = RandomSource(training_args.seed, stream=training_args.process_index)
        train_transform = train_transforms(augmentation, size, random, data_args.min_crop_scale)
        set_seed(training_args.seed)
        model = build_model(model_args, config)
    except ValueError as error:
        parser.error(str(error))
    dataset = attach_transforms(dataset, image_processor, train_transform, eval_transforms(size))
    return Setup(model_args, data_args, training_args, model, image_processor, dataset, callbacks, augmentation)


def train_and_evaluate(trainer: TriLevelTrainer, setup: Setup) -> dict[str, float]:
    """Train (saving the model, state and `train_results.json`), then evaluate (`eval_results.json`)."""
    training_args, dataset = setup.training_args, setup.dataset
    metrics = {}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()  # TriLevelTrainer writes training_args.json, not the training_args.bin pickle
        train_metrics = {**train_result.metrics, "train_samples": len(dataset["train"])}
        train_metrics.update(examples_seen_metrics(trainer, len(dataset["train"])))
        trainer.log_metrics("train", train_metrics)
        trainer.save_metrics("train", train_metrics)
        trainer.save_state()
        metrics.update(train_metrics)
    if training_args.do_eval:
        eval_metrics = {**trainer.evaluate(), "eval_samples": len(dataset["validation"])}
        eval_metrics.update(sparsity_metrics(trainer.model.config))
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    return metrics


def print_summary(metrics: dict[str, float], output_dir: str) -> None:
    if "eval_accuracy" in metrics:
        top5 = f"  (top-5: {metrics['eval_top5_accuracy']:.4f})" if "eval_top5_accuracy" in metrics else ""
        print(f"\nvalidation accuracy: {metrics['eval_accuracy']:.4f}{top5}")
        print(
            f"forward GFLOPs per image: {metrics['eval_gflops_per_image']:.4g} "
            f"({metrics['flops_speedup_limit']:.2f}x fewer than dense)"
        )
    print(f"saved to {output_dir}")


def run(argv: list[str] | None = None) -> tuple[TriLevelTrainer, dict[str, float]]:
    """Check everything, train, evaluate, save and write the model card; return the trainer and the metrics."""
    setup = prepare(sys.argv[1:] if argv is None else list(argv))
    training_args, model = setup.training_args, setup.model
    if training_args.process_index == 0:
        print(describe(setup))
        if model.config.token_keep_rate == 1.0 and model.config.attention_keep_rate == 1.0:
            logger.warning("token and attention sparsity are off (keep rates 1.0); see --token_keep_rate.")
    trainer = TriLevelTrainer(  # a transformers.Trainer that can also feed ExamplePruningCallback
        model=model,
        args=training_args,
        train_dataset=setup.dataset.get("train") if training_args.do_train else None,
        eval_dataset=setup.dataset.get("validation"),
        data_collator=collate,
        processing_class=setup.image_processor,  # save_model() then also writes preprocessor_config.json
        compute_metrics=compute_metrics,
        callbacks=setup.callbacks,
    )
    metrics = train_and_evaluate(trainer, setup)
    kwargs = model_card_kwargs(setup.model_args, setup.data_args)
    if training_args.push_to_hub:
        trainer.push_to_hub(**kwargs)
    elif training_args.do_train:
        trainer.create_model_card(**kwargs)
    if trainer.is_world_process_zero():
        print_summary(metrics, training_args.output_dir)
    return trainer, metrics


def main(argv: list[str] | None = None) -> dict[str, float]:
    return run(argv)[1]


def end_distributed(wait_for_all: bool = True) -> None:
    """Tear the process group down, after a barrier when every rank finished normally.

    Without the teardown gloo processes intermittently abort at exit (SIGABRT). Without the barrier, a rank that
    finishes first (rank 0 still writes the model card) can hang in it. After an error there is no barrier: the
    other ranks may be stuck in a collective, and the launcher stops them when this process exits.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if wait_for_all:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    succeeded = False
    try:
        main()
        succeeded = True
    finally:
        end_distributed(wait_for_all=succeeded)
