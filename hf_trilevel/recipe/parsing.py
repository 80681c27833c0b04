"""Reading the recipe's arguments: every argument group in one `HfArgumentParser`, from flags or one JSON file.

The groups are the recipe's own (`hf_trilevel.recipe.arguments`), each technique's (from its folder) and
`TrainingArguments`, whose transformers defaults suit fine-tuning, not training a small ViT from scratch: the tuned
recipe (`TRAINING_DEFAULTS`) replaces them for unset flags, in a JSON file too. Its `save_strategy` "no" keeps the
default run free of checkpoints; `resolve_defaults` turns saving by steps on when `--save_steps` or
`--save_total_limit` is given without `--save_strategy`, as transformers would. docs/flags.md lists every flag.
"""

import argparse
import json
from collections.abc import Callable, Collection
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainingArguments

from ..example_pruning.arguments import ExamplePruningArguments
from ..token_training.arguments import DenseSparseArguments, KeepRateScheduleArguments, SelectorTemperatureArguments
from ..weight_sparsity.arguments import WeightSparsityArguments
from .arguments import DataArguments, ModelArguments, RunArguments
from .processes import launched_on_several_processes

# In `parse_flags_or_json`'s order: the model, the data, the techniques (in the order they act on a step), the run.
TECHNIQUE_ARGUMENTS = (
    ExamplePruningArguments,
    KeepRateScheduleArguments,
    SelectorTemperatureArguments,
    DenseSparseArguments,
    WeightSparsityArguments,
)
ARGUMENT_GROUPS = (ModelArguments, DataArguments, *TECHNIQUE_ARGUMENTS, RunArguments, TrainingArguments)

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
# Checkpoint settings that only act when the run saves: given without `save_strategy`, the run saves by steps, as it
# would with transformers' own default ("steps"); given with `save_strategy` "no", they are refused.
SAVE_SETTINGS = ("save_steps", "save_total_limit")


def build_parser() -> HfArgumentParser:
    """Every argument group, with `TRAINING_DEFAULTS` replacing transformers' defaults for unset flags."""
    parser = HfArgumentParser(ARGUMENT_GROUPS)
    parser.usage = "%(prog)s [--help] [--option value ...] | %(prog)s arguments.json"  # errors stay readable
    parser.allow_abbrev = False  # `--token_keep 0.5` is a typo to report, not `--token_keep_rate 0.5`
    parser.set_defaults(**TRAINING_DEFAULTS)
    return parser


def resolve_defaults(values: dict, given: Collection[str] = frozenset()) -> dict:
    """Fill the defaults that depend on other arguments or on how the script was launched: `output_dir` is
    `outputs/<data set name>-trilevel`, and `use_cpu` turns on when several processes are launched on a machine
    without GPUs (transformers would otherwise run every process as an independent copy).

    `given` names the arguments the user set (flags or JSON keys; `parse_flags_or_json` passes them). The recipe
    saves no checkpoints by default (`save_strategy` "no"), so `save_steps` or `save_total_limit` given without
    `save_strategy` turn saving by steps on, as transformers' own default would; given with `save_strategy` "no"
    they are refused (`ValueError` naming both flags) instead of leaving a run that saves nothing to resume from.
    """
    values = dict(values)
    if values.get("output_dir") is None:
        source = values.get("dataset_name") or values.get("train_dir") or values.get("validation_dir")
        values["output_dir"] = f"outputs/{Path(source.rstrip('/')).name if source else 'digits'}-trilevel"
    if values.get("use_cpu") is None:
        values["use_cpu"] = launched_on_several_processes() and not torch.accelerator.is_available()
    save_settings = [name for name in SAVE_SETTINGS if name in given]
    if save_settings and "save_strategy" not in given:
        values["save_strategy"] = "steps"
    elif save_settings and str(values.get("save_strategy")) in ("no", "SaveStrategy.NO"):
        raise ValueError(
            f"`{save_settings[0]}` is given but `save_strategy` is 'no', so no checkpoint would be saved: pass "
            f"`save_strategy` steps (or leave `save_strategy` out, which then saves by steps), or drop "
            f"`{save_settings[0]}`."
        )
    return values


def given_arguments(parser: HfArgumentParser, argv: list[str]) -> frozenset[str]:
    """The argument names `argv` sets, whatever their values (a flag given at its default value counts too)."""
    unset = object()
    namespace = argparse.Namespace(**dict.fromkeys(vars(parser.parse_args([])), unset))
    parser.parse_known_args(argv, namespace=namespace)  # argparse leaves attributes already on the namespace alone
    return frozenset(name for name, value in vars(namespace).items() if value is not unset)


def parse_flags_or_json(
    parser: HfArgumentParser,
    argv: list[str],
    fill_defaults: Callable[[dict, frozenset[str]], dict] | None = None,
) -> tuple:
    """Flags, or a single `.json` file of them, into the parser's dataclasses (`ValueError` for unknown names, and
    for values a dataclass's `__post_init__` refuses).

    Both forms start from the parser's defaults (`parser.set_defaults` included), so a JSON file gets a script's
    tuned recipe too (transformers' `parse_json_file` would use the dataclass defaults instead). `fill_defaults`
    then completes values that depend on other values, given the values and the names the user set (the flags in
    `argv`, or the file's keys), e.g. `resolve_defaults`.
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
        values, given_names = {**vars(parser.parse_args([])), **given}, frozenset(given)
    else:
        namespace, unknown = parser.parse_known_args(argv)
        if unknown:
            raise ValueError(f"unrecognized arguments: {' '.join(unknown)}")
        values, given_names = vars(namespace), given_arguments(parser, argv)
    return parser.parse_dict(fill_defaults(values, given_names) if fill_defaults else values)


__all__ = [
    "ARGUMENT_GROUPS",
    "SAVE_SETTINGS",
    "TECHNIQUE_ARGUMENTS",
    "TRAINING_DEFAULTS",
    "build_parser",
    "given_arguments",
    "parse_flags_or_json",
    "resolve_defaults",
]
