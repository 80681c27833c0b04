"""Reading the recipe's arguments: every argument group in one `HfArgumentParser`, from flags or one JSON file.

The groups are the recipe's own (`hf_trilevel.recipe.arguments`), each technique's (from its folder) and
`TrainingArguments`, whose transformers defaults suit fine-tuning, not training a small ViT from scratch: the tuned
recipe (`TRAINING_DEFAULTS`) replaces them for unset flags, in a JSON file too. docs/flags.md lists every flag.
"""

import json
from collections.abc import Callable
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


def build_parser() -> HfArgumentParser:
    """Every argument group, with `TRAINING_DEFAULTS` replacing transformers' defaults for unset flags."""
    parser = HfArgumentParser(ARGUMENT_GROUPS)
    parser.usage = "%(prog)s [--help] [--option value ...] | %(prog)s arguments.json"  # errors stay readable
    parser.allow_abbrev = False  # `--token_keep 0.5` is a typo to report, not `--token_keep_rate 0.5`
    parser.set_defaults(**TRAINING_DEFAULTS)
    return parser


def resolve_defaults(values: dict) -> dict:
    """Fill the defaults that depend on other arguments or on how the script was launched: `output_dir` is
    `outputs/<data set name>-trilevel`, and `use_cpu` turns on when several processes are launched on a machine
    without GPUs (transformers would otherwise run every process as an independent copy)."""
    values = dict(values)
    if values.get("output_dir") is None:
        source = values.get("dataset_name") or values.get("train_dir") or values.get("validation_dir")
        values["output_dir"] = f"outputs/{Path(source.rstrip('/')).name if source else 'digits'}-trilevel"
    if values.get("use_cpu") is None:
        values["use_cpu"] = launched_on_several_processes() and not torch.accelerator.is_available()
    return values


def parse_flags_or_json(
    parser: HfArgumentParser, argv: list[str], fill_defaults: Callable[[dict], dict] | None = None
) -> tuple:
    """Flags, or a single `.json` file of them, into the parser's dataclasses (`ValueError` for unknown names, and
    for values a dataclass's `__post_init__` refuses).

    Both forms start from the parser's defaults (`parser.set_defaults` included), so a JSON file gets a script's
    tuned recipe too (transformers' `parse_json_file` would use the dataclass defaults instead). `fill_defaults`
    then completes values that depend on other values.
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
    return parser.parse_dict(fill_defaults(values) if fill_defaults else values)


__all__ = [
    "ARGUMENT_GROUPS",
    "TECHNIQUE_ARGUMENTS",
    "TRAINING_DEFAULTS",
    "build_parser",
    "parse_flags_or_json",
    "resolve_defaults",
]
