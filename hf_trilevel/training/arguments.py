"""The contract of the technique folders' argument dataclasses, written once.

Each technique folder carries a dataclass of its flags for `transformers.HfArgumentParser` (`example_pruning`,
`token_training`, `weight_sparsity`). Its field names are the flags, so a message naming a field names the flag as
the user typed it; fields are checked in `__post_init__`, against the run in `check_training_arguments` (before any
data loads), and `build(context)` returns the technique, or None when the flags leave it off. A script then builds
every technique the same way: `[args.build(context) for args in technique_args]`.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

from transformers import PretrainedConfig, TrainingArguments

from .technique import TrainingTechnique


@dataclass(frozen=True)
class TechniqueContext:
    """What building a technique may need beyond its own flags.

    Attributes:
        config: the model's config (the checkpoint's or `config_name`'s, with the sparsity flags applied).
        training_args: the run's `TrainingArguments` (a technique is built only when `do_train`).
        num_train_examples: the training set's size after limits, when known: lets a technique check that the run
            is long enough for it before the first step.
        technique_args: every technique's argument dataclass of the run, for the few that depend on another (the
            keep-rate warm-up goes to dense/sparse training when both are on).
        hub_kwargs: `cache_dir`, `revision` and `token`, for a technique that loads a checkpoint (a teacher).
    """

    config: PretrainedConfig
    training_args: TrainingArguments
    num_train_examples: int | None = None
    technique_args: Sequence[object] = ()
    hub_kwargs: dict = field(default_factory=dict)


class TechniqueArguments:
    """Base of the technique folders' argument dataclasses: the two methods every one of them has."""

    def check_training_arguments(self, training_args: TrainingArguments) -> None:
        """Check these flags against the run before any data loads (raise `ValueError` naming the flag); by default
        nothing in the run constrains them."""

    def build(self, context: TechniqueContext) -> TrainingTechnique | None:
        """The technique these flags ask for, or None when they leave it off (or the run does not train)."""
        raise NotImplementedError


def given_flags(*arguments) -> str:
    """The flags a user set in these argument dataclasses, as a command line (`--name value`, lists space-separated):
    what a message quotes to say how a technique was asked for."""
    words = []
    for group in arguments:
        for name in given_fields(group):
            value = getattr(group, name)
            values = value if isinstance(value, (list, tuple)) else [value]
            words += [f"--{name}", *(str(item) for item in values)]
    return " ".join(words)


def given_fields(arguments) -> list[str]:
    """The names of a dataclass's fields whose value differs from the field's default, in field order: the flags a
    user set, for notices about flags that have no effect."""
    return [item.name for item in fields(arguments) if getattr(arguments, item.name) != item.default]


__all__ = ["TechniqueArguments", "TechniqueContext", "given_fields", "given_flags"]
