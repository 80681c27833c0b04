"""`ExamplePruning`: the data level as a training technique, passed to `TriLevelTrainer(callbacks=[...])`.

It needs per-example losses and its own sampler, which the stock `Trainer` cannot hand to a callback, so it runs under
`hf_trilevel.TriLevelTrainer` (a drop-in `Trainer`). The policies that decide what each epoch serves live in
`policies.py`, the statistics they read in `statistics.py`, and the pruner and sampler that hold a run's state in
`pruner.py`.
"""

import importlib
import math

import torch
import torch.distributed as dist
from transformers import TrainerControl, TrainerState, TrainingArguments

from ..training.technique import TrainingBatch, TrainingTechnique, is_distributed, sum_across_processes
from .pruner import POLICIES, ExamplePruner, ExampleStatistics, PrunedEpochSampler, PruningPolicy, find_pruning_sampler


def build_policy(policy: str | PruningPolicy, **settings) -> PruningPolicy:
    """A policy object from its name (or `"module:Class"`) and settings, with errors that name the bad argument."""
    if isinstance(policy, PruningPolicy):
        if settings:
            raise ValueError(f"pass settings to the policy object itself, not alongside it: {sorted(settings)}.")
        return policy
    if isinstance(policy, str) and ":" in policy:
        policy_class = import_policy(policy)
    elif policy in POLICIES:
        policy_class = POLICIES[policy]
    else:
        raise ValueError(
            f"`policy` must be one of {sorted(POLICIES)}, a PruningPolicy, or 'module:Class' naming a PruningPolicy "
            f"subclass, got {policy!r}."
        )
    try:
        return policy_class(**settings)
    except TypeError as error:
        raise ValueError(f"unknown setting for the {policy!r} example pruning policy: {error}.") from None


def import_policy(spec: str, argument: str = "policy") -> type[PruningPolicy]:
    """The `PruningPolicy` subclass `"package.module:ClassName"` names, so a script's `--example_pruning` flag can
    take a user's own policy without editing the script; errors name `argument` (the flag, in a script)."""
    module_name, _, class_name = spec.partition(":")
    try:
        policy_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(
            f"`{argument}` {spec!r} cannot be imported ({error}); give 'package.module:ClassName', importable from "
            "PYTHONPATH."
        ) from None
    if not (isinstance(policy_class, type) and issubclass(policy_class, PruningPolicy)):
        raise ValueError(f"`{argument}` {spec!r} is not a PruningPolicy subclass.")
    return policy_class


class ExamplePruning(TrainingTechnique):
    """Prune the training set by example importance; every rank takes the same decision.

    Policies:
        `"forgetting"` (Tri-Level E-ViT): keep `keep_fraction` of the data; at swap epochs replace the
            `swap_fraction` kept examples with the lowest forgetting rates by random removed ones. Settings:
            `keep_fraction=0.8`, `swap_fraction=0.05`, `swap_epochs=None` (every tenth of training until half-way).
        `"loss"` (InfoBatch-style, unbiased): each pruned epoch skip `prune_ratio` of the lowest-loss half of the
            data and up-weight the rest of that half; full data for the first epoch and the final
            `full_data_fraction` of epochs. Settings: `prune_ratio=0.5`, `full_data_fraction=0.125`,
            `well_learned_fraction=0.5`, or `budget=X` (share of the run's examples served, full epochs counted,
            instead of `prune_ratio`).
        `"random"`: a fresh uniform `keep_fraction` of the data every epoch, the same size as `forgetting`'s kept
            set: the control an importance policy must beat. Settings: `keep_fraction=0.8`.
        `"none"`: every example every epoch.
        A `PruningPolicy` instance, or `"package.module:ClassName"` naming a subclass importable from `sys.path`
            (built with the settings): your own policy. Its `epoch_sizes` are checked before training (a whole
            number from 1 to the training set's size per epoch) and each epoch's plan against them; with several
            processes each plan's digest is compared across them, so a policy that plans differently on different
            processes (randomness not drawn from the `seed` it is given) stops the run with a `ValueError`.

    A training technique (`hf_trilevel.training.technique`): it records every training example's loss and
    correctness (`observe`), weights the losses (`loss_weights`), serves each epoch's kept set (`train_sampler`) and
    keeps its statistics and plan in every checkpoint (safetensors + JSON), restored on `resume_from_checkpoint` at any
    world size. Use with `TriLevelTrainer` and `TrainingArguments(remove_unused_columns=False)`. Each epoch logs
    `example_pruning/kept`, `.../kept_fraction` and `.../digest` (a fingerprint of the kept set) to the log history.

    Args:
        policy: a policy name or object.
        seed: seed of every pruning decision; default: the run's `TrainingArguments.seed`.
        **settings: the policy's settings listed above.
    """

    name = "example_pruning"
    needs_example_index = True

    def __init__(self, policy: str | PruningPolicy = "forgetting", seed: int | None = None, **settings):
        self.policy = build_policy(policy, **settings)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"`seed` must be a non-negative integer or None, got {seed!r}.")
        self.seed = seed
        self.pruner: ExamplePruner | None = None
        self._process_index = 0

    def check_arguments(self, args: TrainingArguments) -> None:
        """Refuse `TrainingArguments` this callback cannot train with; needs no data, so scripts call it first.

        Epochs are planned whole (each epoch's size and kept set are decided before it starts), so the run's length
        is a whole `num_train_epochs` and `max_steps` is refused: `TriLevelTrainer` replaces it by the exact sum of
        the planned epochs' steps, so a user's value could only be ignored (larger) or cut the plan short (smaller:
        the `loss` policy's final full-data epochs, which keep its gradient unbiased, would never run).
        """
        if args.remove_unused_columns:
            raise ValueError(
                "ExamplePruning needs `TrainingArguments(remove_unused_columns=False)`: the trainer adds an "
                "`example_index` to each batch, which `remove_unused_columns=True` would drop."
            )
        if args.max_steps is not None and args.max_steps > 0:
            raise ValueError(
                f"ExamplePruning plans every epoch, so `max_steps` {args.max_steps} cannot be honoured: give "
                "the run's length as a whole `num_train_epochs` and leave `max_steps` unset; the trainer then sets "
                "the exact max_steps from the planned epochs."
            )
        epochs = args.num_train_epochs
        if isinstance(epochs, bool) or not math.isfinite(epochs) or epochs != int(epochs) or epochs < 1:
            raise ValueError(
                "ExamplePruning plans a whole number of epochs: `num_train_epochs` must be a whole number "
                f">= 1, got {epochs}."
            )
        self.policy.check_epochs(int(epochs))

    def setup(self, args: TrainingArguments, num_examples: int | None, device) -> ExamplePruner:
        """Called by the trainer before it builds the train dataloader: check the run, plan every epoch."""
        if num_examples is None:  # first: the Trainer asks unsized data for `max_steps`, refused below
            raise ValueError(
                "ExamplePruning got streaming data (an `IterableDataset`, or another training set without a "
                "length), and streaming data cannot be index-pruned: each epoch serves a planned set of dataset "
                "positions. Use a map-style dataset (a `datasets.Dataset`, e.g. `load_dataset(...)` without "
                "`streaming=True`, or a torch `Dataset` with `__len__`), or train without example pruning."
            )
        self.check_arguments(args)
        if is_distributed() and args.world_size == 1:
            raise ValueError(
                f"torch.distributed runs {dist.get_world_size()} processes but the Trainer is not distributed, so "
                "every process would train its own copy on all the data. On machines without GPUs pass "
                "`use_cpu=True` (`--use_cpu`) to TrainingArguments for DDP over gloo."
            )
        self._process_index = args.process_index
        self.pruner = ExamplePruner(self.policy, self.seed if self.seed is not None else args.seed)
        self.pruner.begin(num_examples, int(args.num_train_epochs), device)
        return self.pruner

    # -- the loss seam ------------------------------------------------------------------------------------------
    def observe(self, batch: TrainingBatch) -> None:
        correct = batch.outputs["logits"].detach().argmax(-1) == batch.labels
        self.pruner.statistics.record(batch.example_index, batch.per_example_loss.detach(), correct)

    def loss_weights(self, batch: TrainingBatch) -> torch.Tensor | None:
        return self.pruner.loss_weights(batch.example_index.to(batch.per_example_loss.device))

    # -- the data seam ------------------------------------------------------------------------------------------
    def train_sampler(self, num_examples: int) -> PrunedEpochSampler:
        return PrunedEpochSampler(self.pruner)

    # -- the state seam -----------------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Running statistics and the plan (identical on every rank), and this epoch's buffers summed over ranks."""
        tensors = self.pruner.state_tensors()
        for name in ExampleStatistics.EPOCH:
            tensors[f"statistics.{name}"] = sum_across_processes(getattr(self.pruner.statistics, name)).cpu()
        return tensors

    def state_metadata(self) -> dict:
        return self.pruner.state_metadata()

    def load_state(self, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
        # The epoch buffers hold every rank's sum so far; one rank carries it, so the end-of-epoch sum is right at
        # any world size.
        if self._process_index != 0:
            for name in ExampleStatistics.EPOCH:
                tensors[f"statistics.{name}"] = torch.zeros_like(tensors[f"statistics.{name}"])
        self.pruner.load_state(tensors, metadata)

    def resume_settings(self) -> dict:
        """The policy's settings (`PruningPolicy.config`), and the class of a policy that is not a built-in one."""
        settings = dict(self.policy.config())
        policy_class = type(self.policy)
        if POLICIES.get(self.policy.name) is not policy_class:
            settings["policy_class"] = f"{policy_class.__module__}.{policy_class.__qualname__}"
        return settings

    def card_settings(self) -> dict:
        return self.policy.config()

    def epoch_summary(self) -> dict[str, float | int | str]:
        return self.pruner.summary()

    def on_resume(self, epoch: int) -> None:
        # A checkpoint written at an epoch's last step precedes that epoch's end: finish it as the run would have.
        while self.pruner.plan_epoch < min(epoch, len(self.pruner.sizes) - 1):
            self.pruner.end_epoch(self.pruner.plan_epoch)

    def summary_metrics(self) -> dict[str, float | int]:
        """`examples_seen` (presentations trained over the finished epochs, on every process) and its share of
        `epochs x examples`; what was trained, so `dataloader_drop_last`'s dropped batches are not counted."""
        if self.pruner is None or not self.pruner.sizes:
            return {}
        seen, total = self.pruner.examples_presented(), len(self.pruner.sizes) * self.pruner.num_examples
        return {"examples_seen": seen, "example_fraction_seen": seen / total}

    # -- Trainer events -----------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if self.pruner is None or find_pruning_sampler(train_dataloader) is None:
            raise RuntimeError(
                "ExamplePruning needs per-example losses and its own sampler, which the stock Trainer cannot "
                "provide: use `hf_trilevel.TriLevelTrainer` (a drop-in replacement for `transformers.Trainer`)."
            )

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.pruner.end_epoch(self.pruner.plan_epoch)
