"""The weight level's flags (SViTE): sparse weights within a fixed budget, by single weights or whole heads and
MLP neurons (`WeightSparsityArguments`).

A dataclass for `transformers.HfArgumentParser` whose field names are the flags, so every message names the flag as
it is typed. The fields are checked in `__post_init__`; `check_training_arguments` checks them against the run (it
must train; the slimmed copy goes to its own folder) before any data loads; `build` checks the per-layer unit counts
against the model's config and the update interval against the run's length, and returns the `WeightSparsity`
technique, or None. Saving the slimmed copy after training is the recipe's (`hf_trilevel.recipe.outputs`).
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments

from ..modeling.value_checks import check_fraction, check_int
from ..training.arguments import TechniqueArguments, TechniqueContext, given_fields, given_flags
from .masks import PATTERNS
from .structured_units import unit_count
from .technique import WeightSparsity

WEIGHT_SPARSITY_MODES = ("none", "unstructured", "structured")
UNSTRUCTURED_ONLY = ("weight_density", "sparsity_pattern")
STRUCTURED_ONLY = ("head_density", "neuron_density", "slim_output_dir")
# `WeightSparsity` settings whose flag has another name (messages about a resumed run's settings name the flag).
SETTING_FLAGS = {
    "sparsity": "weight_sparsity",
    "density": "weight_density",
    "pattern": "sparsity_pattern",
    "update_interval": "sparse_update_interval",
    "end_fraction": "sparse_end_fraction",
    "one_shot": "sparse_one_shot",
    "initial_mask": None,  # settings of the Python API that the example has no flag for
    "death_rate": None,
    "final_death_rate": None,
    "seed": None,
}


@dataclass
class WeightSparsityArguments(TechniqueArguments):
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

    def __post_init__(self):
        if self.weight_sparsity not in WEIGHT_SPARSITY_MODES:
            raise ValueError(
                f"`weight_sparsity` must be one of {list(WEIGHT_SPARSITY_MODES)}, got {self.weight_sparsity!r}."
            )
        given = given_fields(self)
        if not self.enabled():
            if given:
                needed = "structured" if given[0] in STRUCTURED_ONLY else "unstructured or structured"
                raise ValueError(f"`{given[0]}` is a setting of weight sparsity; pass `weight_sparsity` {needed} too.")
            return
        other = STRUCTURED_ONLY if self.weight_sparsity == "unstructured" else UNSTRUCTURED_ONLY
        misplaced = [name for name in other if name in given]
        if misplaced:
            needed = "structured" if self.weight_sparsity == "unstructured" else "unstructured"
            raise ValueError(
                f"`{misplaced[0]}` is a setting of `weight_sparsity` {needed}, not {self.weight_sparsity}."
            )
        if self.sparsity_pattern not in PATTERNS:
            raise ValueError(f"`sparsity_pattern` must be one of {list(PATTERNS)}, got {self.sparsity_pattern!r}.")
        for name in ("weight_density", "head_density", "neuron_density"):
            if getattr(self, name) is not None:
                check_fraction(name, getattr(self, name))
        if self.sparsity_pattern == "2:4" and self.weight_density not in (None, 0.5):
            raise ValueError(
                f"`weight_density` must be 0.5 (or unset) with `sparsity_pattern` 2:4, which keeps two of every four "
                f"weights; got {self.weight_density}."
            )
        check_int("sparse_update_interval", self.sparse_update_interval, low=1)
        check_fraction("sparse_end_fraction", self.sparse_end_fraction)
        if self.slim_output_dir is not None and self.head_density == 1.0 and self.neuron_density == 1.0:
            raise ValueError(
                "`slim_output_dir` would have nothing to remove: `head_density` and `neuron_density` are both 1.0."
            )

    def enabled(self) -> bool:
        return self.weight_sparsity != "none"

    def check_training_arguments(self, training_args: TrainingArguments) -> None:
        """Weight sparsity trains, and the slimmed copy needs a folder of its own beside `output_dir`; checked before
        any data loads. Consent to write into a slim folder that holds files is the recipe's
        (`hf_trilevel.recipe.checks`), beside the consent for `output_dir`."""
        if not self.enabled():
            return
        if not training_args.do_train:
            raise ValueError(
                f"`weight_sparsity` {self.weight_sparsity} trains sparse weights and needs `do_train`; to slim a saved "
                "structured model without training use `hf-trilevel slim IN_DIR OUT_DIR`."
            )
        if self.slim_output_dir is None:
            return
        slim_dir = Path(self.slim_output_dir)
        if slim_dir.exists() and not slim_dir.is_dir():
            raise ValueError(f"`slim_output_dir` {str(slim_dir)!r} is a file, not a folder.")
        if slim_dir.resolve() == Path(training_args.output_dir).resolve():
            raise ValueError(
                "`slim_output_dir` must differ from `output_dir`: the masked model is saved there, the slimmed one "
                "here."
            )

    def build(self, context: TechniqueContext) -> WeightSparsity | None:
        """`WeightSparsity` for the model `config`, or None without `weight_sparsity` or without training.

        Structured densities must leave every layer of `config` a head and an MLP neuron; with `num_train_examples`
        the update interval must fit the run's optimizer steps, so neither fails at the first step.
        """
        if not self.enabled() or not context.training_args.do_train:
            return None
        settings = {
            "update_interval": self.sparse_update_interval,
            "end_fraction": self.sparse_end_fraction,
            "one_shot": self.sparse_one_shot,
        }
        if self.weight_sparsity == "unstructured":
            settings |= {"density": self.weight_density, "pattern": self.sparsity_pattern}
        else:
            heads = 0.5 if self.head_density is None else self.head_density
            neurons = 0.5 if self.neuron_density is None else self.neuron_density
            check_unit_counts(context.config, heads, neurons)
            settings |= {"head_density": heads, "neuron_density": neurons}
        technique = WeightSparsity(self.weight_sparsity, **settings)
        technique.name_settings(SETTING_FLAGS, flags=given_flags(self))
        if context.num_train_examples is not None:  # before the first step, where the technique checks it again
            steps = optimizer_steps(context.training_args, context.num_train_examples)
            technique.check_run_length(steps, "sparse_update_interval", "sparse_end_fraction")
        return technique


def check_unit_counts(config, head_density: float, neuron_density: float) -> None:
    """Refuse densities that would leave a layer of `config` without a head or an MLP neuron."""
    for layer in range(config.num_hidden_layers):
        unit_count("head_density", head_density, config.layer_num_attention_heads(layer), layer)
        unit_count("neuron_density", neuron_density, config.layer_intermediate_size(layer), layer)


def optimizer_steps(training_args: TrainingArguments, num_examples: int) -> int:
    """The optimizer steps the Trainer will take on `num_examples` training examples (as `Trainer` counts them;
    example pruning, which plans smaller epochs, takes fewer)."""
    if training_args.max_steps is not None and training_args.max_steps > 0:
        return training_args.max_steps
    batch = training_args.per_device_train_batch_size * max(training_args.world_size, 1)
    batches = num_examples // batch if training_args.dataloader_drop_last else math.ceil(num_examples / batch)
    per_epoch = max(math.ceil(batches / training_args.gradient_accumulation_steps), 1)
    return math.ceil(training_args.num_train_epochs * per_epoch)


__all__ = [
    "WEIGHT_SPARSITY_MODES",
    "WeightSparsityArguments",
    "check_unit_counts",
    "optimizer_steps",
]
