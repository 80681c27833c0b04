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

    python examples/run_image_classification.py                       # digits -> outputs/digits-trilevel
    python examples/run_image_classification.py --train_dir data/train --validation_dir data/val \\
        --output_dir outputs/my-model                                  # image folders, one sub-folder per class
    python examples/run_image_classification.py --dataset_name path/or/hub-id --image_column_name img \\
        --model_name_or_path path/to/vit-checkpoint --ignore_mismatched_sizes --token_keep_rate 0.7 \\
        --learning_rate 5e-5 --num_train_epochs 3                      # fine-tune a ViT/DeiT checkpoint
    accelerate launch --multi_gpu --num_processes 2 examples/run_image_classification.py --example_pruning forgetting
    python examples/run_image_classification.py --token_selector adaptive --token_keep_mass 0.9   # per-image counts
    python examples/run_image_classification.py --token_selector learned   # a trained scorer, temperature 10 -> 0.1
    python examples/run_image_classification.py --dense_sparse_keep_rates 1.0 0.7 0.5   # one checkpoint, 3 rates
    python examples/run_image_classification.py --weight_sparsity structured --slim_output_dir outputs/slim

Token selectors (`--token_selector`): `class_attention` (default, Tri-Level E-ViT), `learned` (a small scorer per
pruning layer trained end to end; `--token_selector_temperature_start/_end` anneal its Gumbel temperature through
`SelectorTemperatureSchedule`, added whenever the model trains learned scores) and `adaptive` (each image keeps
the fewest patches whose importance mass reaches `--token_keep_mass`, between `--token_min_keep_rate` and
`--token_keep_rate` of its patches; `--token_importance learned` ranks by learned scores). After the final evaluation
`eval_results.json` also holds the mean patch tokens an image kept after each pruning layer on the validation set
(`eval_kept_tokens_layer_<i>`, from the model's `kept_token_counts`) and the FLOPs per image those counts give
(`eval_measured_gflops_per_image`, `eval_measured_flops_speedup_limit`); the model card quotes them for `adaptive`.

Dense/sparse training (`--dense_sparse_keep_rates 1.0 0.7 0.5`, SaiT): one checkpoint for several token keep rates,
each step running the densest pass and a sparse pass of the same batch with shared weights, the sparse pass taught by
`--distillation` (`self`: the dense pass, the default; `teacher`: `--teacher_model_name_or_path`; `none`) with
`--distillation_temperature` and `--distillation_weight`, and optionally `--token_importance_distillation_weight`
(see docs/dense_sparse.md). `--keep_rate_schedule` then warms every sparse rate up. After training the script
measures accuracy and images/s at every trained rate and writes `operating_points.json`, which the card shows.

Weight sparsity (`--weight_sparsity unstructured|structured`, SViTE; see docs/weight_sparsity.md): sparse weights
within a fixed budget, prune-and-grow every `--sparse_update_interval` steps. `unstructured` keeps
`--weight_density` of the 2-D weights (ERK per layer; `--sparsity_pattern 2:4` for sparse tensor cores); `structured`
keeps `--head_density` of each layer's heads and `--neuron_density` of its MLP neurons, and `--slim_output_dir`
saves the model with the pruned units removed (the same logits, fewer FLOPs: the speedup on any hardware).
`--sparse_one_shot` prunes a loaded checkpoint once instead, then fine-tunes.

Defaults that depend on other flags: the model shape and keep rates come from the checkpoint or `--config_name`
(from scratch: the digits model below, token_keep_rate 0.7, attention_keep_rate 0.5); `--output_dir` is
`outputs/<data set name>-trilevel`; `--use_cpu` turns on by itself when several processes are launched on a machine
without GPUs (transformers would otherwise run every process as an independent copy).

Bad input stops the run before training with exit status 2 and a message naming the flag: a sparsity or selector
field the config refuses (an unknown `--token_selector`, a `--token_keep_mass` outside (0, 1], `learned` without
pruning layers; checked against the checkpoint's or `--config_name`'s config before any data loads), a missing image
or label column, float or list labels (integer and string labels are encoded into a ClassLabel, with a notice),
training data of one class (a `--train_dir` with a single class sub-folder), a checkpoint that is not a ViT, a
`config.json` field of the wrong type, a classifier of another size without `--ignore_mismatched_sizes`, an
`--output_dir` that is a file or holds a saved model without `--overwrite_output_dir` (or
`--resume_from_checkpoint`), and with `--example_pruning` a fractional `--num_train_epochs`, any `--max_steps`
(pruning plans whole epochs) or `--swap_epochs` outside the run; the checks that need no data run before the data
loads. Unreadable image files are dropped with a warning and a count (`--check_images False` skips that check). The
checks live in `hf_trilevel.image_data`, `hf_trilevel.recipe.run_support`, `hf_trilevel.recipe.model` and
`ExamplePruning.check_arguments`.
`examples_seen` counts the examples trained (with `--dataloader_drop_last`, fewer than planned).
"""

import json
import logging
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from datasets import DatasetDict
from transformers import HfArgumentParser, TrainingArguments, ViTImageProcessorPil, set_seed

from hf_trilevel import (
    DenseSparseTraining,
    ExamplePruning,
    KeepRateSchedule,
    SelectorTemperatureSchedule,
    TriLevelTrainer,
    TriLevelViTConfig,
    TriLevelViTForImageClassification,
)
from hf_trilevel.evaluation.metrics import build_compute_metrics, sparsity_metrics
from hf_trilevel.evaluation.token_counts import collect_kept_token_counts, fixed_kept_token_counts, kept_token_metrics
from hf_trilevel.image_data import (
    DIGIT_NAMES,
    LABEL,
    REDUNDANT_DIGITS,
    TRAIN_AUGMENTATIONS,
    RandomSource,
    attach_transforms,
    check_splits,
    collate,
    encode_labels,
    eval_transforms,
    limit_and_check_splits,
    load_digits_dataset,
    load_image_dataset,
    load_redundant_digits_dataset,
    select_image_and_label,
    split_off_validation,
    train_transforms,
)
from hf_trilevel.model_card.sections import KEPT_TOKENS_METRIC
from hf_trilevel.modeling.value_checks import as_pair, check_fraction, check_int, check_number, num_patches
from hf_trilevel.recipe.model import (
    build_image_processor,
    build_trilevel_config,
    check_config_overrides,
    load_trilevel_model,
    selector_text,
)
from hf_trilevel.recipe.run_support import (
    check_output_dir,
    check_output_dir_is_a_folder,
    check_training_arguments,
    end_distributed,
    examples_trained_per_epoch,
    launched_on_several_processes,
    name_flags,
    parse_flags_or_json,
    resolve_resume_checkpoint,
)
from hf_trilevel.token_training.arguments import (
    DenseSparseArguments,
    build_dense_sparse_training,
    check_dense_sparse_arguments,
    remove_stale_operating_points,
    write_operating_point_table,
)
from hf_trilevel.training.checkpoints import remove_checkpoints
from hf_trilevel.weight_sparsity.arguments import (
    CALLBACK_FLAGS,
    WeightSparsityArguments,
    build_sparse_training,
    check_weight_sparsity_arguments,
    optimizer_steps,
    save_slimmed_model,
    weight_sparsity_metrics,
)
from hf_trilevel.weight_sparsity.technique import WeightSparsity

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
# Config fields a flag may set, over a checkpoint's or `--config_name`'s values too; the config validates them.
SPARSITY_FIELDS = (
    "token_keep_rate",
    "token_prune_layers",
    "token_fusion",
    "attention_keep_rate",
    "token_selector",
    "token_keep_mass",
    "token_min_keep_rate",
    "token_importance",
    "token_count_buckets",
)
TOKEN_SELECTORS = ("class_attention", "learned", "adaptive")
TOKEN_IMPORTANCES = ("class_attention", "learned")


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
        metadata={"help": "Share of patch tokens kept at each pruning layer, in (0, 1] (default: 0.7 from scratch)."},
    )
    token_prune_layers: list[int] | None = field(
        default=None,
        metadata={"help": "0-indexed pruning layers, e.g. `1 3 4` (default: 1/4, 1/2 and 3/4 of the depth)."},
    )
    token_fusion: bool | None = field(
        default=None,
        metadata={
            "help": "Fuse the dropped tokens into one extra token instead of discarding them (default: off).",
            "nargs": "?",
            "const": True,
        },
    )
    attention_keep_rate: float | None = field(
        default=None,
        metadata={"help": "Share of attention connections kept per query, in (0, 1]; 1 is dense (scratch: 0.5)."},
    )
    # No argparse `choices` for the next two: the config checks them, so flags and a JSON file get one message.
    token_selector: str | None = field(
        default=None,
        metadata={
            "help": "What picks the kept tokens: class_attention (Tri-Level E-ViT, the default), learned (a small "
            "scorer per pruning layer, trained end to end) or adaptive (a per-image count from --token_keep_mass).",
            "metavar": "{" + ",".join(TOKEN_SELECTORS) + "}",
        },
    )
    token_keep_mass: float | None = field(
        default=None,
        metadata={
            "help": "adaptive: each image keeps its fewest patches whose importance mass reaches this share, in "
            "(0, 1]; --token_keep_rate caps the count (default 1.0: the fixed rate)."
        },
    )
    token_min_keep_rate: float | None = field(
        default=None,
        metadata={"help": "adaptive: the fewest patches an image keeps, as a share of its patches, in (0, 1] (0.25)."},
    )
    token_importance: str | None = field(
        default=None,
        metadata={
            "help": "adaptive: the scores it ranks and sums, class_attention (default) or learned.",
            "metavar": "{" + ",".join(TOKEN_IMPORTANCES) + "}",
        },
    )
    token_count_buckets: int | None = field(
        default=None,
        metadata={"help": "adaptive: batch groups of similar kept counts, at most this many, >= 1 (default 4)."},
    )

    def hub_kwargs(self) -> dict:
        return {"cache_dir": self.cache_dir, "revision": self.model_revision, "token": self.token}


@dataclass
class DataArguments:
    """Which images to train and evaluate on, and how to augment them."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A data set: Hub id, local folder, or a folder written by `save_to_disk`. Default, with "
            "no --train_dir either: the digits bundled with scikit-learn. `digits-redundant`: those digits with "
            "their typical training images repeated as near-copies (10x; the same images for every --seed, the "
            "split by --split_seed), for data pruning."
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
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on a random subset of this size."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on a random subset of this size."})
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
    min_crop_scale: float = field(default=0.08, metadata={"help": "Smallest area share a random crop keeps, (0, 1]."})
    check_images: bool = field(
        default=True, metadata={"help": "Decode every image once first; drop unreadable files with a warning."}
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for --check_images."})

    def uses_digits(self) -> bool:
        """No data set named (or `digits-redundant`): the digits bundled with scikit-learn, built in memory."""
        named = self.dataset_name is not None and not self.uses_redundant_digits()
        return not named and self.train_dir is None and self.validation_dir is None

    def uses_redundant_digits(self) -> bool:
        """`--dataset_name digits-redundant` (`hf_trilevel.image_data.load_redundant_digits_dataset`)."""
        return self.dataset_name == REDUNDANT_DIGITS


@dataclass
class PruningArguments:
    """Example-level pruning, the token keep-rate warm-up and the learned scores' temperature schedule."""

    example_pruning: str = field(
        default="none",
        metadata={
            "help": "Drop training examples: none, forgetting (Tri-Level E-ViT), loss (InfoBatch), random (a "
            "fresh uniform --keep_fraction each epoch: the control an importance policy must beat), or your own "
            "PruningPolicy as package.module:ClassName (importable: on PYTHONPATH, e.g. PYTHONPATH=. for a file here), "
            "built with --example_pruning_settings."
        },
    )
    example_pruning_settings: str | None = field(
        default=None,
        metadata={
            "help": "A custom --example_pruning policy's settings as a JSON object, e.g. '{\"keep_fraction\": 0.5}'."
        },
    )
    keep_fraction: float = field(
        default=0.8, metadata={"help": "forgetting, random: share of the data served every epoch, (0, 1]."}
    )
    swap_fraction: float = field(default=0.05, metadata={"help": "forgetting: share swapped at each swap epoch."})
    swap_epochs: list[int] | None = field(
        default=None, metadata={"help": "forgetting: epochs that start with a swap; default every tenth until half."}
    )
    prune_ratio: float | None = field(
        default=None,
        metadata={"help": "loss: share of the pool (--well_learned_fraction) skipped, (0, 1); default 0.5."},
    )
    budget: float | None = field(
        default=None,
        metadata={
            "help": "loss: share of the run's examples served, full epochs counted, (0, 1): the cost --keep_fraction "
            "gives random and forgetting; decides how many are skipped (instead of --prune_ratio)."
        },
    )
    full_data_fraction: float = field(default=0.125, metadata={"help": "loss: final share of epochs on all data."})
    well_learned_fraction: float | None = field(
        default=None,
        metadata={
            "help": "loss: share of the data (lowest loss) forming the pool --prune_ratio skips from, (0, 1]; "
            "a pruned epoch serves 1 - prune_ratio x this. Default 0.5; with --budget, half of a pruned epoch's "
            "served examples are the highest losses."
        },
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
    token_selector_temperature_start: float = field(
        default=10.0,
        metadata={
            "help": "Learned scores (--token_selector learned, or adaptive with --token_importance learned): Gumbel "
            "temperature at the first step, > 0; annealed linearly per step."
        },
    )
    token_selector_temperature_end: float = field(
        default=0.1, metadata={"help": "Learned scores: the temperature at the last step, > 0."}
    )
    token_selector_noise_start: float = field(
        default=1.0, metadata={"help": "Learned scores: Gumbel noise scale at the first step, in [0, 1]."}
    )
    token_selector_noise_end: float = field(
        default=1.0,
        metadata={"help": "Learned scores: Gumbel noise scale at the last step, in [0, 1] (0: the top scores)."},
    )


@dataclass
class RunArguments:
    """Consent to replace an earlier run's results (transformers 5 dropped `overwrite_output_dir`)."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train into an --output_dir that holds a saved model, replacing it; a fresh run also deletes the "
            "earlier run's checkpoint-* folders there (not one it starts from)."
        },
    )


ARGUMENT_GROUPS = (
    ModelArguments, DataArguments, PruningArguments, DenseSparseArguments, WeightSparsityArguments, RunArguments,
    TrainingArguments,
)  # fmt: skip
# How the library's messages (argument names in backticks) become this script's flags, via `name_flags`. The config's
# own messages keep its field names (`token_keep_rate`), so the sparsity fields are left out.
FLAGS = {
    **{
        item.name: item.name
        for group in ARGUMENT_GROUPS[:6]
        for item in fields(group)
        if item.name not in SPARSITY_FIELDS
    },
    **{name: name for name in ("output_dir", "resume_from_checkpoint", "do_train", "do_eval", "eval_strategy")},
    **{name: name for name in ("remove_unused_columns", "use_cpu", "num_train_epochs", "max_steps")},
    "image_column": "image_column_name",
    "label_column": "label_column_name",
    "validation_fraction": "train_val_split",  # the digits' split
    **CALLBACK_FLAGS,
}


# The tuned recipe; transformers' own defaults (lr 5e-5, 3 epochs, checkpoints every 500 steps) suit fine-tuning,
# not training a small ViT from scratch. Flags and JSON files win. `None`: filled by `resolve_defaults`.
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


def build_parser() -> HfArgumentParser:
    """The argument groups, with `TRAINING_DEFAULTS` replacing transformers' defaults for unset flags."""
    parser = HfArgumentParser(ARGUMENT_GROUPS)
    parser.usage = "%(prog)s [--help] [--option value ...] | %(prog)s arguments.json"  # errors stay readable
    parser.allow_abbrev = False  # `--token_keep 0.5` is a typo to report, not `--token_keep_rate 0.5`
    parser.set_defaults(**TRAINING_DEFAULTS)
    return parser


def resolve_defaults(values: dict) -> dict:
    """Fill the defaults that depend on other arguments or on how the script was launched."""
    values = dict(values)
    if values.get("output_dir") is None:
        source = values.get("dataset_name") or values.get("train_dir") or values.get("validation_dir")
        values["output_dir"] = f"outputs/{Path(source.rstrip('/')).name if source else 'digits'}-trilevel"
    if values.get("use_cpu") is None:
        values["use_cpu"] = launched_on_several_processes() and not torch.accelerator.is_available()
    return values


def check_arguments(
    model_args: ModelArguments, data_args: DataArguments, run_args: RunArguments, training_args: TrainingArguments
) -> None:
    """Refuse settings that would fail deep inside the model, the data or the Trainer."""
    check_training_arguments(training_args, model_name_or_path=model_args.model_name_or_path)
    shape_given = [name for name in SCRATCH_SHAPE if getattr(model_args, name) is not None]
    if shape_given and (model_args.model_name_or_path or model_args.config_name):
        raise ValueError(
            f"`{shape_given[0]}` shapes a model trained from scratch; with `model_name_or_path` or `config_name` "
            "the shape comes from that checkpoint or config."
        )
    counts = {name: getattr(model_args, name) for name in shape_given}
    counts.update(max_train_samples=data_args.max_train_samples, max_eval_samples=data_args.max_eval_samples)
    for name, value in counts.items():
        if value is not None:
            check_int(name, value, low=1)
    if data_args.train_val_split is not None:
        check_fraction("train_val_split", data_args.train_val_split, allow_zero=True, allow_one=False)
    check_fraction("min_crop_scale", data_args.min_crop_scale)
    check_output_dir_is_a_folder(training_args.output_dir)  # before `latest` looks inside it
    training_args.resume_from_checkpoint = resolve_resume_checkpoint(
        training_args.resume_from_checkpoint, training_args.output_dir
    )
    check_output_dir(
        training_args.output_dir,
        do_train=training_args.do_train,
        overwrite_output_dir=run_args.overwrite_output_dir,
        resume_from_checkpoint=training_args.resume_from_checkpoint,
    )
    # The config's own checks of the fields given here (an unknown selector, a mass outside (0, 1], a learned selector
    # without pruning layers) against the config they change, so they fail before any data loads, not after.
    check_config_overrides(
        config_overrides(model_args),
        model_name_or_path=model_args.model_name_or_path,
        config_name=model_args.config_name,
        scratch=scratch_config(model_args),
        **model_args.hub_kwargs(),
    )


def custom_policy_settings(pruning_args: PruningArguments) -> dict:
    """`--example_pruning_settings` as keyword arguments (a JSON object), refused by name when it is not one."""
    if pruning_args.example_pruning_settings is None:
        return {}
    try:
        settings = json.loads(pruning_args.example_pruning_settings)
    except json.JSONDecodeError as error:
        raise ValueError(f"`--example_pruning_settings` is not JSON: {error}.") from None
    if not isinstance(settings, dict):
        raise ValueError(
            f"`--example_pruning_settings` must be a JSON object, got {pruning_args.example_pruning_settings!r}."
        )
    return settings


def build_callbacks(
    pruning_args: PruningArguments,
    training_args: TrainingArguments | None = None,
    dense_sparse_args: DenseSparseArguments | None = None,
) -> list:
    """The example-pruning and keep-rate callbacks the arguments ask for (settings are validated here).

    With `training_args`, example pruning's checks that need no data (whole epochs, no `--max_steps`, swap epochs
    within the run) run here too, before any data is loaded. With dense/sparse training the keep-rate warm-up is
    applied by `DenseSparseTraining` to every sparse rate (`build_dense_sparse_training`), not by its own callback.
    """
    callbacks = []
    if pruning_args.example_pruning == "forgetting":
        settings = {"keep_fraction": pruning_args.keep_fraction, "swap_fraction": pruning_args.swap_fraction}
        callbacks.append(ExamplePruning("forgetting", swap_epochs=pruning_args.swap_epochs, **settings))
    elif pruning_args.example_pruning == "random":
        callbacks.append(ExamplePruning("random", keep_fraction=pruning_args.keep_fraction))
    elif pruning_args.example_pruning == "loss":
        names = ("prune_ratio", "full_data_fraction", "well_learned_fraction", "budget")
        settings = {name: getattr(pruning_args, name) for name in names}
        callbacks.append(ExamplePruning("loss", **settings))
    elif ":" in pruning_args.example_pruning:
        callbacks.append(ExamplePruning(pruning_args.example_pruning, **custom_policy_settings(pruning_args)))
    elif pruning_args.example_pruning != "none":
        raise ValueError(
            "`--example_pruning` must be none, random, forgetting, loss or package.module:ClassName (a PruningPolicy), "
            f"got {pruning_args.example_pruning!r}."
        )
    loss_only = [
        f"--{name}"
        for name in ("prune_ratio", "budget", "well_learned_fraction")
        if getattr(pruning_args, name) is not None
    ]
    if loss_only and pruning_args.example_pruning != "loss":
        raise ValueError(
            f"{', '.join(loss_only)} configure --example_pruning loss only, not {pruning_args.example_pruning!r}."
        )
    if pruning_args.example_pruning_settings is not None and ":" not in pruning_args.example_pruning:
        raise ValueError("`--example_pruning_settings` configures a package.module:ClassName --example_pruning only.")
    if callbacks and training_args is not None and training_args.do_train:
        callbacks[0].check_arguments(training_args)  # the ExamplePruning: nothing else is in the list yet
    dense_sparse = dense_sparse_args is not None and dense_sparse_args.enabled()
    if dense_sparse_args is not None:
        check_dense_sparse_arguments(dense_sparse_args)
    if pruning_args.keep_rate_schedule and not dense_sparse:
        warmup, decay = pruning_args.keep_rate_warmup_fraction, pruning_args.keep_rate_decay_fraction
        callbacks.append(KeepRateSchedule(warmup_fraction=warmup, decay_fraction=decay))
    for name in TEMPERATURE_FLAGS:  # checked here, before the data; the callback joins once the config is known
        if "noise" in name:
            check_number(name, getattr(pruning_args, name), 0.0, 1.0, low_open=False)
        else:
            check_number(name, getattr(pruning_args, name), 0.0, math.inf, high_open=True)
    return callbacks


TEMPERATURE_FLAGS = (
    "token_selector_temperature_start",
    "token_selector_temperature_end",
    "token_selector_noise_start",
    "token_selector_noise_end",
)


def build_temperature_callback(pruning_args: PruningArguments, config: TriLevelViTConfig) -> list:
    """`[SelectorTemperatureSchedule]` when the model trains learned scores, else `[]` (with a notice when a
    temperature flag was set for a selector that has no temperature).

    Called once the config is built: the selector may come from a checkpoint or `--config_name`, not a flag.
    """
    start, end, noise_start, noise_end = (getattr(pruning_args, name) for name in TEMPERATURE_FLAGS)
    if config.uses_learned_scores():
        return [SelectorTemperatureSchedule(start, end, noise_start=noise_start, noise_end=noise_end)]
    defaults = {item.name: item.default for item in fields(PruningArguments)}
    changed = [name for name in TEMPERATURE_FLAGS if getattr(pruning_args, name) != defaults[name]]
    if changed:
        logger.warning(
            "--%s is ignored: token_selector %r with token_importance %r trains no learned scores.",
            changed[0], config.token_selector, getattr(config, "token_importance", "class_attention"),
        )  # fmt: skip
    return []


def dense_sparse_callbacks(
    dense_sparse_args: DenseSparseArguments,
    pruning_args: PruningArguments,
    label_names: list[str],
    config: TriLevelViTConfig,
    training_args: TrainingArguments,
    model_args: ModelArguments,
) -> list:
    """`[DenseSparseTraining]` when `--dense_sparse_keep_rates` is given (with the keep-rate warm-up, if asked, for
    every sparse rate), else `[]`. A teacher's classes are checked here, from its config, before the data loads."""
    if not dense_sparse_args.enabled() or not training_args.do_train:  # the technique only trains
        return []
    warmup = None
    if pruning_args.keep_rate_schedule:
        warmup = (pruning_args.keep_rate_warmup_fraction, pruning_args.keep_rate_decay_fraction)
    technique = build_dense_sparse_training(
        dense_sparse_args, label_names, config, warmup=warmup, device=training_args.device, **model_args.hub_kwargs()
    )
    return [technique]


def scratch_config(model_args: ModelArguments) -> dict:
    """Config fields of a model trained from scratch: the shape flags (or the digits model) and its keep rates."""
    shape = {name: getattr(model_args, name) or default for name, default in SCRATCH_SHAPE.items()}
    return {**shape, **SCRATCH_SPARSITY}


def config_overrides(model_args: ModelArguments) -> dict:
    """The sparsity and selector fields given as flags; they win over a checkpoint's or config's values."""
    return {name: getattr(model_args, name) for name in SPARSITY_FIELDS if getattr(model_args, name) is not None}


def build_config(model_args: ModelArguments, label_names: list[str]) -> TriLevelViTConfig:
    """The config from the checkpoint, `--config_name` or the scratch shape, with any sparsity fields given here."""
    return build_trilevel_config(
        label_names,
        model_name_or_path=model_args.model_name_or_path,
        config_name=model_args.config_name,
        scratch=scratch_config(model_args),
        overrides=config_overrides(model_args),
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        **model_args.hub_kwargs(),
    )


def load_user_dataset(data_args: DataArguments, model_args: ModelArguments) -> DatasetDict:
    """The user's data as `{"train", "validation"}` splits with `image` and ClassLabel `label` columns."""
    dataset = load_image_dataset(
        data_args.dataset_name, data_args.dataset_config_name, data_args.train_dir, data_args.validation_dir,
        cache_dir=model_args.cache_dir, token=model_args.token,
    )  # fmt: skip
    split = 0.15 if data_args.train_val_split is None else data_args.train_val_split
    dataset = split_off_validation(dataset, split, data_args.split_seed)
    dataset = select_image_and_label(dataset, data_args.image_column_name, data_args.label_column_name)
    dataset, notice = encode_labels(dataset, data_args.label_column_name)
    if notice:
        logger.warning(name_flags(notice, FLAGS))
    return dataset


@dataclass
class Setup:
    """Everything the Trainer needs, built and checked before training starts."""

    model_args: ModelArguments
    data_args: DataArguments
    training_args: TrainingArguments
    model: TriLevelViTForImageClassification
    image_processor: ViTImageProcessorPil
    dataset: dict  # transformed splits (`pixel_values`, `labels`); train is an `AugmentedSplit`
    callbacks: list
    augmentation: str
    slim_output_dir: str | None = None


def prepare(argv: list[str]) -> Setup:
    """Parse and check the arguments, load and check the data, build the model: every bad setting stops here,
    before training, with a message naming the flag (`parser.error`: usage line, message, exit status 2)."""
    parser = build_parser()
    try:
        parsed = parse_flags_or_json(parser, argv, resolve_defaults)
        model_args, data_args, pruning_args, dense_sparse_args, sparsity_args, run_args, training_args = parsed
        configure_logging(training_args)
        check_weight_sparsity_arguments(
            sparsity_args, training_args.output_dir, run_args.overwrite_output_dir, training_args.do_train
        )
        check_arguments(model_args, data_args, run_args, training_args)
        callbacks = build_callbacks(pruning_args, training_args, dense_sparse_args)
        digits = data_args.uses_digits()
        with training_args.main_process_first(desc="loading the data"):  # rank 0 fills the datasets cache first
            dataset = None if digits else load_user_dataset(data_args, model_args)
            label_names = DIGIT_NAMES if digits else next(iter(dataset.values())).features[LABEL].names
            config = build_config(model_args, label_names)
            callbacks += build_temperature_callback(pruning_args, config)
            callbacks += dense_sparse_callbacks(dense_sparse_args, pruning_args, label_names, config, training_args,
                                                model_args)  # fmt: skip
            sparse_training = build_sparse_training(sparsity_args, config)
            if sparse_training is not None and training_args.do_train:
                callbacks.append(sparse_training)
            if digits:
                fraction = 0.2 if data_args.train_val_split is None else data_args.train_val_split
                load = load_redundant_digits_dataset if data_args.uses_redundant_digits() else load_digits_dataset
                dataset = load(max(as_pair(config.image_size)), fraction, data_args.split_seed)
            needs_validation = training_args.do_eval or training_args.eval_strategy != "no"
            check_splits(dataset, need_train=training_args.do_train, need_validation=needs_validation)
            limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
            dataset, warnings = limit_and_check_splits(
                dataset, limits, data_args.split_seed,
                check_images=data_args.check_images and not digits, num_proc=data_args.preprocessing_num_workers,
            )  # fmt: skip
            if sparse_training is not None and training_args.do_train:  # before the first step, not at it
                sparse_training.check_run_length(optimizer_steps(training_args, len(dataset["train"])))
        for warning in warnings:
            logger.warning(warning)
        image_processor, notice = build_image_processor(
            config, model_args.image_processor_name, model_args.model_name_or_path,
            trust_remote_code=model_args.trust_remote_code, **model_args.hub_kwargs(),
        )  # fmt: skip
        if notice:
            logger.warning(notice)
        augmentation = data_args.augmentation
        if augmentation == "auto":  # flips and crops would turn a 6 into a 2 or cut a 7 in half
            augmentation = "affine" if digits else "crop_flip"
        size = as_pair(config.image_size)
        random = RandomSource(training_args.seed)  # keyed per (epoch, example): resumes reproduce
        transforms = {
            "train": train_transforms(augmentation, size, random, data_args.min_crop_scale),
            "validation": eval_transforms(size),
        }
        set_seed(training_args.seed)
        model = load_trilevel_model(
            config, model_args.model_name_or_path,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, **model_args.hub_kwargs(),
        )  # fmt: skip
    except ValueError as error:
        parser.error(name_flags(str(error), FLAGS))
    dataset = attach_transforms(dataset, image_processor, transforms, random)
    return Setup(model_args, data_args, training_args, model, image_processor, dataset, callbacks, augmentation,
                 sparsity_args.slim_output_dir if training_args.do_train else None)  # fmt: skip


def configure_logging(training_args: TrainingArguments) -> None:
    """This script's notices on stderr, from the main process only (every process reaches the same ones)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[run_image_classification] %(levelname)s: %(message)s"))
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO if training_args.process_index == 0 else logging.ERROR)


def describe(setup: Setup) -> str:
    """One paragraph on what is about to run: model, sparsity, data, augmentation, processes."""
    config, training_args = setup.model.config, setup.training_args
    sizes = " / ".join(f"{len(data)} {split}" for split, data in setup.dataset.items())
    text = (
        f"TriLevel ViT: {setup.model.num_parameters():,} parameters, {config.num_hidden_layers} layers, "
        f"hidden {config.hidden_size}, {num_patches(config.image_size, config.patch_size)} patches; "
        f"token_keep_rate={config.token_keep_rate} at layers {config.token_prune_layers} "
        f"(fusion {'on' if config.token_fusion else 'off'}, {selector_text(config)}), "
        f"attention_keep_rate={config.attention_keep_rate}; "
        f"{config.num_labels} classes, {sizes} images; augmentation {setup.augmentation}."
    )
    if training_args.world_size > 1:
        backend = " on CPU over gloo (--use_cpu)" if training_args.use_cpu else ""
        text += f" {training_args.world_size} processes, {training_args.parallel_mode.value}{backend}."
    return text


def examples_seen_metrics(trainer: TriLevelTrainer, num_train_examples: int) -> dict[str, float]:
    """How many examples the run trained on (over every process), and their share of `epochs x data`.

    What was trained, not what was planned: with `--dataloader_drop_last` each epoch's last partial batch (and
    accelerate's last incomplete round of batches over the processes) is not trained. Example pruning counts the
    examples it observed; without it the count follows from the dataloader's batching.
    """
    technique_metrics = trainer.technique_metrics()
    if "examples_seen" in technique_metrics:
        return {key: technique_metrics[key] for key in ("examples_seen", "example_fraction_seen")}
    args, epochs = trainer.args, trainer.state.epoch or 0.0
    per_epoch = examples_trained_per_epoch(
        num_train_examples, args.train_batch_size, args.world_size, args.dataloader_drop_last
    )
    seen = round(epochs * per_epoch)
    total = epochs * num_train_examples
    return {"examples_seen": seen, "example_fraction_seen": seen / total if total else 0.0}


def measured_kept_tokens(trainer: TriLevelTrainer, eval_dataset) -> dict[str, float]:
    """`eval_kept_tokens_layer_<i>` (the mean patch tokens an image keeps after pruning layer `i`) and the FLOPs per
    image those counts give (`eval_measured_gflops_per_image`, `eval_measured_flops_speedup_limit`).

    The adaptive selector's counts differ per image: they are measured on the validation set from the model's
    `kept_token_counts`, in one extra pass sharded like the Trainer's evaluation, gathered over the processes and
    under the Trainer's autocast. Fixed-count selectors keep the schedule in every image, so no pass is needed.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    counts = fixed_kept_token_counts(model.config)
    if counts is None:
        counts = collect_kept_token_counts(
            model,
            trainer.get_eval_dataloader(eval_dataset),
            gather=trainer.accelerator.gather_for_metrics,
            context=trainer.autocast_smart_context_manager,
        )
    return kept_token_metrics(model.config, counts)


def kept_token_keys(config: TriLevelViTConfig) -> list[str]:
    """The metric names `measured_kept_tokens` writes, in pruning-layer order."""
    return ["eval_" + KEPT_TOKENS_METRIC.format(layer=layer) for layer in config.token_prune_layers]


def digits_name(data_args: DataArguments) -> str:
    if data_args.uses_redundant_digits():
        return "scikit-learn digits, redundant variant (typical images repeated as near-copies)"
    return "scikit-learn digits"


def model_card_kwargs(model_args: ModelArguments, data_args: DataArguments) -> dict:
    """What transformers' example passes to `push_to_hub` / `create_model_card`."""
    kwargs = {
        "finetuned_from": model_args.model_name_or_path,
        "tasks": "image-classification",
        "dataset": digits_name(data_args) if data_args.uses_digits() else data_args.dataset_name or "imagefolder",
        "tags": ["image-classification", "vision", "trilevel-vit"],
    }
    if data_args.dataset_name and not data_args.uses_digits() and not Path(data_args.dataset_name).exists():  # Hub id
        kwargs["dataset_tags"] = data_args.dataset_name
    return kwargs


def remove_earlier_checkpoints(trainer: TriLevelTrainer, model_args: ModelArguments) -> None:
    """Before a fresh run trains into a folder it had consent to replace, delete the earlier run's `checkpoint-*`
    folders (not one this run starts from): after a crash of this run, `--resume_from_checkpoint latest` would
    otherwise continue the earlier run. The main process deletes while the others wait."""
    if trainer.is_world_process_zero():
        sources = (model_args.model_name_or_path, model_args.config_name, model_args.image_processor_name)
        removed = remove_checkpoints(trainer.args.output_dir, keep=sources)
        if removed:
            logger.warning("removed the earlier run's %s from %s.", ", ".join(removed), trainer.args.output_dir)
    trainer.accelerator.wait_for_everyone()


def run(argv: list[str] | None = None) -> tuple[TriLevelTrainer, dict[str, float]]:
    """Check everything, train, evaluate, save and write the model card; return the trainer and the metrics."""
    setup = prepare(sys.argv[1:] if argv is None else list(argv))
    training_args, model, dataset = setup.training_args, setup.model, setup.dataset
    if training_args.process_index == 0:
        print(describe(setup))
        if model.config.token_keep_rate == 1.0 and model.config.attention_keep_rate == 1.0:
            logger.warning("token and attention sparsity are off (keep rates 1.0); see --token_keep_rate.")
    trainer = TriLevelTrainer(  # a transformers.Trainer that can also feed ExamplePruning
        model=model,
        args=training_args,
        train_dataset=dataset.get("train") if training_args.do_train else None,
        eval_dataset=dataset.get("validation"),
        data_collator=collate,
        processing_class=setup.image_processor,  # save_model() then also writes preprocessor_config.json
        compute_metrics=build_compute_metrics(),  # top-1 and top-5 accuracy, an `evaluate` metric shipped offline
        callbacks=setup.callbacks,
    )

    metrics = {}
    if training_args.do_train:
        if training_args.resume_from_checkpoint is None:
            remove_stale_operating_points(trainer)
            remove_earlier_checkpoints(trainer, setup.model_args)
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
        if any(isinstance(callback, WeightSparsity) for callback in setup.callbacks):
            eval_metrics.update(weight_sparsity_metrics(trainer.model))
        eval_metrics.update(measured_kept_tokens(trainer, dataset["validation"]))
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    if (
        training_args.do_train
        and "validation" in dataset
        and any(isinstance(callback, DenseSparseTraining) for callback in setup.callbacks)
    ):
        write_operating_point_table(trainer, dataset["validation"])  # before the card, which shows it

    kwargs = model_card_kwargs(setup.model_args, setup.data_args)
    if training_args.push_to_hub:
        trainer.push_to_hub(**kwargs)
    elif training_args.do_train:
        trainer.create_model_card(**kwargs)
    if setup.slim_output_dir is not None:
        save_slimmed_model(trainer, setup.slim_output_dir, kwargs.get("dataset_tags"), kwargs["dataset"])
    if trainer.is_world_process_zero():
        if "eval_accuracy" in metrics:
            top5 = f"  (top-5: {metrics['eval_top5_accuracy']:.4f})" if "eval_top5_accuracy" in metrics else ""
            print(f"\nvalidation accuracy: {metrics['eval_accuracy']:.4f}{top5}")
            gflops, limit = metrics["eval_gflops_per_image"], metrics["flops_speedup_limit"]
            if "eval_measured_gflops_per_image" in metrics:  # per-image counts: the config gives an upper bound
                gflops, limit = metrics["eval_measured_gflops_per_image"], metrics["eval_measured_flops_speedup_limit"]
            print(f"forward GFLOPs per image: {gflops:.4g} ({limit:.2f}x fewer than dense)")
            if "weight_density" in metrics:
                print(f"non-zero share of the 2-D weights: {metrics['weight_density']:.3f}")
            kept = [metrics[key] for key in kept_token_keys(model.config) if key in metrics]
            if kept:
                total = num_patches(model.config.image_size, model.config.patch_size)
                print(f"patch tokens kept per image after each pruning layer (mean): "
                      f"{' -> '.join(f'{count:.4g}' for count in kept)} of {total}")  # fmt: skip
        print(f"saved to {training_args.output_dir}")
    return trainer, metrics


def main(argv: list[str] | None = None) -> dict[str, float]:
    return run(argv)[1]


if __name__ == "__main__":
    succeeded = False
    try:
        main()
        succeeded = True
    finally:
        end_distributed(wait_for_all=succeeded)
