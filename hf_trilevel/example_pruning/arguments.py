"""The data level's flags: which examples each epoch serves (`ExamplePruningArguments`).

A dataclass for `transformers.HfArgumentParser` whose field names are the flags, so every message names the flag as
it is typed: the policy settings are the policies' own argument names, and the policy itself is `example_pruning`.
The fields are checked in `__post_init__`; `check_training_arguments` checks them against the run (whole epochs, swap
epochs within it, a reachable budget) before any data loads; `build` returns the `ExamplePruning` technique, or None.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..modeling.value_checks import check_fraction, check_int
from ..training.arguments import TechniqueArguments, TechniqueContext, given_fields, given_flags
from .policies import POLICIES, PruningPolicy
from .technique import ExamplePruning, import_policy

# The flags each built-in policy is built with (its constructor's arguments).
POLICY_SETTINGS = {
    "none": (),
    "random": ("keep_fraction",),
    "forgetting": ("keep_fraction", "swap_fraction", "swap_epochs"),
    "loss": ("prune_ratio", "full_data_fraction", "well_learned_fraction", "budget"),
}
# Every built-in policy's flag, in field order; a policy that does not read a given one refuses it.
POLICY_FLAGS = tuple(dict.fromkeys(name for settings in POLICY_SETTINGS.values() for name in settings))


@dataclass
class ExamplePruningArguments(TechniqueArguments):
    """Example-level pruning: drop training examples by importance (Tri-Level E-ViT, InfoBatch) or at random."""

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
    swap_fraction: float = field(
        default=0.05, metadata={"help": "forgetting: share swapped at each swap epoch, (0, 1]."}
    )
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
    full_data_fraction: float = field(
        default=0.125, metadata={"help": "loss: final share of epochs on all data, (0, 1]."}
    )
    well_learned_fraction: float | None = field(
        default=None,
        metadata={
            "help": "loss: share of the data (lowest loss) forming the pool --prune_ratio skips from, (0, 1]; "
            "a pruned epoch serves 1 - prune_ratio x this. Default 0.5; with --budget, half of a pruned epoch's "
            "served examples are the highest losses."
        },
    )

    def __post_init__(self):
        custom = ":" in self.example_pruning
        if self.example_pruning not in POLICY_SETTINGS and not custom:
            raise ValueError(
                "`example_pruning` must be none, random, forgetting, loss or package.module:ClassName (a "
                f"PruningPolicy), got {self.example_pruning!r}."
            )
        if self.example_pruning_settings is not None and not custom:
            raise ValueError("`example_pruning_settings` configures a package.module:ClassName `example_pruning` only.")
        self.custom_settings()
        check_fraction("keep_fraction", self.keep_fraction)
        check_fraction("swap_fraction", self.swap_fraction)
        if self.swap_epochs is not None:
            if isinstance(self.swap_epochs, (str, bytes)) or not isinstance(self.swap_epochs, Sequence):
                raise ValueError(f"`swap_epochs` must be a list of epoch numbers >= 1, got {self.swap_epochs!r}.")
            for epoch in self.swap_epochs:
                check_int("swap_epochs", epoch, low=1)
        if self.budget is not None and self.prune_ratio is not None:
            raise ValueError(
                "give `budget` (share of the run's examples served) or `prune_ratio` (share of the pool skipped), "
                "not both: a budget decides how many are skipped."
            )
        for name in ("prune_ratio", "budget"):
            if getattr(self, name) is not None:
                check_fraction(name, getattr(self, name), allow_one=False)
        check_fraction("full_data_fraction", self.full_data_fraction)
        if self.well_learned_fraction is not None:
            check_fraction("well_learned_fraction", self.well_learned_fraction)
        self.check_unread_flags()

    def check_unread_flags(self) -> None:
        """Refuse a policy flag set away from its default that the chosen policy does not read, so it cannot be
        silently ignored (`keep_fraction` with loss, `swap_fraction` with random, any of them with none)."""
        read = POLICY_SETTINGS.get(self.example_pruning, ())
        unread = [name for name in given_fields(self) if name in POLICY_FLAGS and name not in read]
        if not unread:
            return
        name = unread[0]
        users = " and ".join(policy for policy, settings in POLICY_SETTINGS.items() if name in settings)
        if self.example_pruning == "none":
            reason = "`example_pruning` is none (no example pruning), so it would have no effect"
        elif self.example_pruning in POLICY_SETTINGS:
            reason = f"{self.example_pruning!r} does not read it"
        else:
            reason = (
                f"{self.example_pruning!r} takes its settings from `example_pruning_settings` only (a JSON object, "
                f"e.g. '{{\"{name}\": {getattr(self, name)!r}}}')"
            )
        raise ValueError(
            f"`{name}` configures `example_pruning` {users} only; {reason}. Drop `{name}`, or pass `example_pruning` "
            f"{users.replace(' and ', ' or ')}."
        )

    def enabled(self) -> bool:
        return self.example_pruning != "none"

    def custom_settings(self) -> dict:
        """`example_pruning_settings` as keyword arguments (a JSON object), refused by name when it is not one."""
        if self.example_pruning_settings is None:
            return {}
        try:
            settings = json.loads(self.example_pruning_settings)
        except json.JSONDecodeError as error:
            raise ValueError(f"`example_pruning_settings` is not JSON: {error}.") from None
        if not isinstance(settings, dict):
            raise ValueError(
                f"`example_pruning_settings` must be a JSON object, got {self.example_pruning_settings!r}."
            )
        return settings

    def policy(self) -> PruningPolicy:
        """The policy `example_pruning` names, built with its settings (a custom one is imported first)."""
        if self.example_pruning in POLICY_SETTINGS:
            settings = {name: getattr(self, name) for name in POLICY_SETTINGS[self.example_pruning]}
            return POLICIES[self.example_pruning](**settings)
        policy_class = import_policy(self.example_pruning, argument="example_pruning")
        try:
            return policy_class(**self.custom_settings())
        except TypeError as error:
            raise ValueError(
                f"`example_pruning_settings` holds an unknown setting for {self.example_pruning!r}: {error}."
            ) from None

    def check_training_arguments(self, training_args: TrainingArguments) -> None:
        """The run must be whole epochs without `max_steps`, swap epochs within it, a budget within reach
        (`ExamplePruning.check_arguments`); checked before any data loads."""
        if self.enabled() and training_args.do_train:
            ExamplePruning(self.policy()).check_arguments(training_args)

    def build(self, context: TechniqueContext) -> ExamplePruning | None:
        """`ExamplePruning` with the policy asked for (seeded by the run's seed), or None for `none` or without
        training. The arguments are those every technique's `build` takes; pruning needs none of the model's."""
        if not self.enabled() or not context.training_args.do_train:
            return None
        return ExamplePruning(self.policy()).name_settings(
            {"policy": "example_pruning", "policy_class": None}, flags=given_flags(self)
        )


__all__ = ["ExamplePruningArguments"]
