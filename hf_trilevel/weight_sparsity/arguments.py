"""The example script's weight-sparsity flags (SViTE), their checks and the callback they build.

Kept out of `examples/run_image_classification.py` so the script stays a readable recipe. The flag checks need no
data and run first (`check_weight_sparsity_arguments`); the per-layer unit counts are checked against the model's
config as soon as it is built (`build_sparse_training`), before any data is transformed or any step is taken.
"""

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..cli.slim import slim_folder
from ..modeling.value_checks import check_fraction, check_int
from .masks import PATTERNS, nonzero_fraction
from .structured_units import unit_count
from .technique import WeightSparsity

WEIGHT_SPARSITY_MODES = ("none", "unstructured", "structured")


@dataclass
class WeightSparsityArguments:
    """SViTE: sparse weights within a fixed budget, by single weights or by whole heads and MLP neurons."""

    weight_sparsity: str = field(
        default="none",
        metadata={
            "help": "none; unstructured: single weights of every 2-D weight (ERK densities, prune-and-grow); "
            "structured: whole attention heads and MLP neurons (slimmable for real speed).",
            "choices": list(WEIGHT_SPARSITY_MODES),
        },
    )
    weight_density: float | None = field(
        default=None, metadata={"help": "unstructured: share of the 2-D weights kept, in (0, 1] (0.5)."}
    )
    head_density: float | None = field(
        default=None, metadata={"help": "structured: share of each layer's attention heads kept, in (0, 1] (0.5)."}
    )
    neuron_density: float | None = field(
        default=None, metadata={"help": "structured: share of each layer's MLP neurons kept, in (0, 1] (0.5)."}
    )
    sparsity_pattern: str = field(
        default="unstructured",
        metadata={
            "help": "unstructured: unstructured masks, or 2:4 (two of every four inputs: sparse tensor cores).",
            "choices": list(PATTERNS),
        },
    )
    sparse_update_interval: int = field(
        default=100, metadata={"help": "Optimizer steps between prune-and-grow updates of the masks."}
    )
    sparse_end_fraction: float = field(
        default=0.8, metadata={"help": "Share of training after which the masks stay fixed, in (0, 1]."}
    )
    sparse_one_shot: bool = field(
        default=False,
        metadata={
            "help": "Prune once after --sparse_update_interval dense steps (e.g. of a loaded checkpoint), then "
            "fine-tune with the masks fixed."
        },
    )
    slim_output_dir: str | None = field(
        default=None,
        metadata={
            "help": "structured: also save the model with its pruned heads and neurons removed here (the same "
            "logits, fewer FLOPs; loads anywhere with trust_remote_code=True)."
        },
    )

    def enabled(self) -> bool:
        return self.weight_sparsity != "none"


UNSTRUCTURED_ONLY = ("weight_density", "sparsity_pattern")
STRUCTURED_ONLY = ("head_density", "neuron_density", "slim_output_dir")


def check_weight_sparsity_arguments(
    args: WeightSparsityArguments, output_dir: str | None = None, overwrite: bool = False, do_train: bool = True
) -> None:
    """Refuse bad weight-sparsity flags before any data loads; each message names its flag. A `slim_output_dir`
    that holds files is refused unless `overwrite` (the script's `--overwrite_output_dir`)."""
    defaults = WeightSparsityArguments()
    given = [item.name for item in fields(args) if getattr(args, item.name) != getattr(defaults, item.name)]
    if args.weight_sparsity not in WEIGHT_SPARSITY_MODES:
        raise ValueError(
            f"`weight_sparsity` must be one of {list(WEIGHT_SPARSITY_MODES)}, got {args.weight_sparsity!r}."
        )
    if not args.enabled():
        if given:
            raise ValueError(
                f"`{given[0]}` is a setting of weight sparsity; pass `weight_sparsity` unstructured or structured too."
            )
        return
    if not do_train:
        raise ValueError(
            f"`weight_sparsity` {args.weight_sparsity} trains sparse weights and needs `do_train`; to slim a saved "
            "structured model without training use `hf-trilevel slim IN_DIR OUT_DIR`."
        )
    other = STRUCTURED_ONLY if args.weight_sparsity == "unstructured" else UNSTRUCTURED_ONLY
    misplaced = [name for name in other if name in given]
    if misplaced:
        needed = "structured" if args.weight_sparsity == "unstructured" else "unstructured"
        raise ValueError(f"`{misplaced[0]}` is a setting of `weight_sparsity` {needed}, not {args.weight_sparsity}.")
    for name in ("weight_density", "head_density", "neuron_density"):
        if getattr(args, name) is not None:
            check_fraction(name, getattr(args, name))
    if args.sparsity_pattern == "2:4" and args.weight_density not in (None, 0.5):
        raise ValueError(
            f"`weight_density` must be 0.5 (or unset) with `sparsity_pattern` 2:4, which keeps two of every four "
            f"weights; got {args.weight_density}."
        )
    check_int("sparse_update_interval", args.sparse_update_interval, low=1)
    check_fraction("sparse_end_fraction", args.sparse_end_fraction)
    if args.slim_output_dir is not None and args.head_density == 1.0 and args.neuron_density == 1.0:
        raise ValueError(
            "`slim_output_dir` would have nothing to remove: `head_density` and `neuron_density` are both 1.0."
        )
    slim_dir = Path(args.slim_output_dir) if args.slim_output_dir is not None else None
    if slim_dir is not None and slim_dir.exists() and not slim_dir.is_dir():
        raise ValueError(f"`slim_output_dir` {str(slim_dir)!r} is a file, not a folder.")
    if slim_dir is not None and slim_dir.is_dir() and any(slim_dir.iterdir()) and not overwrite:
        raise ValueError(
            f"`slim_output_dir` {str(slim_dir)!r} already holds files; pass `overwrite_output_dir` to write into it."
        )
    same = args.slim_output_dir is not None and output_dir is not None
    if same and Path(args.slim_output_dir).resolve() == Path(output_dir).resolve():
        raise ValueError(
            "`slim_output_dir` must differ from `output_dir`: the masked model is saved there, the slimmed one here."
        )


def check_unit_counts(config, head_density: float, neuron_density: float) -> None:
    """Refuse densities that would leave a layer of `config` without a head or an MLP neuron."""
    for layer in range(config.num_hidden_layers):
        unit_count("head_density", head_density, config.layer_num_attention_heads(layer), layer)
        unit_count("neuron_density", neuron_density, config.layer_intermediate_size(layer), layer)


def build_sparse_training(args: WeightSparsityArguments, config) -> WeightSparsity | None:
    """The callback the flags ask for, checked against the model `config` (None without weight sparsity)."""
    if not args.enabled():
        return None
    settings = {"update_interval": args.sparse_update_interval, "end_fraction": args.sparse_end_fraction,
                "one_shot": args.sparse_one_shot}  # fmt: skip
    if args.weight_sparsity == "unstructured":
        settings |= {"density": args.weight_density, "pattern": args.sparsity_pattern}
    else:
        heads = 0.5 if args.head_density is None else args.head_density
        neurons = 0.5 if args.neuron_density is None else args.neuron_density
        check_unit_counts(config, heads, neurons)
        settings |= {"head_density": heads, "neuron_density": neurons}
    return WeightSparsity(args.weight_sparsity, **settings)


def optimizer_steps(training_args, num_examples: int) -> int:
    """The optimizer steps the Trainer will take on `num_examples` training examples (as `Trainer` counts them;
    example pruning, which plans smaller epochs, takes fewer)."""
    if training_args.max_steps is not None and training_args.max_steps > 0:
        return training_args.max_steps
    batch = training_args.per_device_train_batch_size * max(training_args.world_size, 1)
    batches = num_examples // batch if training_args.dataloader_drop_last else math.ceil(num_examples / batch)
    per_epoch = max(math.ceil(batches / training_args.gradient_accumulation_steps), 1)
    return math.ceil(training_args.num_train_epochs * per_epoch)


def save_slimmed_model(trainer, folder: str, dataset: str | None = None, dataset_name: str | None = None) -> None:
    """After structured training: the saved model (`output_dir`) with its pruned heads and neurons removed, saved
    into `folder` with the image processor, the run's results and a card naming the data set (Hub id `dataset`,
    readable `dataset_name`), as `hf-trilevel slim` does. The main process writes it."""
    card_kwargs = {"dataset": dataset, "dataset_name": dataset_name}
    try:
        if trainer.is_world_process_zero():
            summary = slim_folder(trainer.args.output_dir, folder, overwrite=True, card_kwargs=card_kwargs)
            print(f"\nslimmed model (pruned heads and neurons removed, the same logits):\n{summary}")
    finally:  # the other processes must not wait for ever on a failed slimming
        trainer.accelerator.wait_for_everyone()


def weight_sparsity_metrics(model) -> dict[str, float]:
    """`weight_density`: the share of non-zero entries in the weights weight sparsity masks."""
    return {"weight_density": nonzero_fraction(model)}


# Callback argument names as the script's flags (for `name_flags`).
CALLBACK_FLAGS = {
    "density": "weight_density",
    "pattern": "sparsity_pattern",
    "update_interval": "sparse_update_interval",
    "end_fraction": "sparse_end_fraction",
}

__all__ = [
    "CALLBACK_FLAGS",
    "WEIGHT_SPARSITY_MODES",
    "WeightSparsityArguments",
    "build_sparse_training",
    "check_unit_counts",
    "check_weight_sparsity_arguments",
    "optimizer_steps",
    "save_slimmed_model",
    "weight_sparsity_metrics",
]
