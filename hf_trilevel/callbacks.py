"""Trainer callbacks: example-level pruning, the token keep-rate warm-up and the token-scorer temperature.

Both are passed as `Trainer(callbacks=[...])` and are training techniques (`hf_trilevel.training_technique`).
Example pruning also needs per-example losses and a sampler, which the stock `Trainer` cannot hand to a callback, so
it runs under `hf_trilevel.TriLevelTrainer` (a drop-in `Trainer`); the keep-rate schedule works with any `Trainer`.
"""

import importlib
import math

import torch
import torch.distributed as dist
from transformers import TrainerControl, TrainerState, TrainingArguments

from .data_pruning import (
    POLICIES,
    ExamplePruner,
    ExampleStatistics,
    PrunedEpochSampler,
    PruningPolicy,
    find_pruning_sampler,
)
from .training_technique import TrainingBatch, TrainingTechnique, sum_across_processes
from .value_checks import check_fraction, check_keep_rate, check_number


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


def import_policy(spec: str) -> type[PruningPolicy]:
    """The `PruningPolicy` subclass `"package.module:ClassName"` names, so a script's `--example_pruning` flag can
    take a user's own policy without editing the script."""
    module_name, _, class_name = spec.partition(":")
    try:
        policy_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"`policy` {spec!r} cannot be imported ({error}); give 'package.module:ClassName'.") from None
    if not (isinstance(policy_class, type) and issubclass(policy_class, PruningPolicy)):
        raise ValueError(f"`policy` {spec!r} is not a PruningPolicy subclass.")
    return policy_class


class ExamplePruningCallback(TrainingTechnique):
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
            (built with the settings): your own policy.

    A training technique (`hf_trilevel.training_technique`): it records every training example's loss and
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
                "ExamplePruningCallback needs `TrainingArguments(remove_unused_columns=False)`: the trainer adds an "
                "`example_index` to each batch, which `remove_unused_columns=True` would drop."
            )
        if args.max_steps is not None and args.max_steps > 0:
            raise ValueError(
                f"ExamplePruningCallback plans every epoch, so `max_steps` {args.max_steps} cannot be honoured: give "
                "the run's length as a whole `num_train_epochs` and leave `max_steps` unset; the trainer then sets "
                "the exact max_steps from the planned epochs."
            )
        epochs = args.num_train_epochs
        if isinstance(epochs, bool) or not math.isfinite(epochs) or epochs != int(epochs) or epochs < 1:
            raise ValueError(
                "ExamplePruningCallback plans a whole number of epochs: `num_train_epochs` must be a whole number "
                f">= 1, got {epochs}."
            )
        self.policy.check_epochs(int(epochs))

    def setup(self, args: TrainingArguments, num_examples: int | None, device) -> ExamplePruner:
        """Called by the trainer before it builds the train dataloader: check the run, plan every epoch."""
        if num_examples is None:  # first: the Trainer asks unsized data for `max_steps`, refused below
            raise ValueError(
                "ExamplePruningCallback got streaming data (an `IterableDataset`, or another training set without a "
                "length), and streaming data cannot be index-pruned: each epoch serves a planned set of dataset "
                "positions. Use a map-style dataset (a `datasets.Dataset`, e.g. `load_dataset(...)` without "
                "`streaming=True`, or a torch `Dataset` with `__len__`), or train without example pruning."
            )
        self.check_arguments(args)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and args.world_size == 1:
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

    def card_settings(self) -> dict:
        return self.policy.config()

    def epoch_summary(self) -> dict[str, float | int | str]:
        return self.pruner.summary()

    def on_resume(self, epoch: int) -> None:
        # A checkpoint written at an epoch's last step precedes that epoch's end: finish it as the run would have.
        while self.pruner.plan_epoch < min(epoch, len(self.pruner.sizes) - 1):
            self.pruner.end_epoch(self.pruner.plan_epoch)

    def example_fraction_seen(self) -> float | None:
        """Share of (epochs x examples) that the planned epochs serve, or None before `setup`."""
        if self.pruner is None or not self.pruner.sizes:
            return None
        return sum(self.pruner.sizes) / (len(self.pruner.sizes) * self.pruner.num_examples)

    # -- Trainer events -----------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if self.pruner is None or find_pruning_sampler(train_dataloader) is None:
            raise RuntimeError(
                "ExamplePruningCallback needs per-example losses and its own sampler, which the stock Trainer cannot "
                "provide: use `hf_trilevel.TriLevelTrainer` (a drop-in replacement for `transformers.Trainer`)."
            )

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.pruner.end_epoch(self.pruner.plan_epoch)


def cosine_keep_rate(
    step: int, total_steps: int, target: float, warmup_fraction: float, decay_fraction: float
) -> float:
    """Keep rate at `step`: 1.0 during warm-up, then a cosine from 1.0 down to `target`, then `target`."""
    warmup_steps = warmup_fraction * total_steps
    decay_steps = max(decay_fraction * total_steps, 1.0)
    progress = min(max((step - warmup_steps) / decay_steps, 0.0), 1.0)
    return target + (1.0 - target) * 0.5 * (1.0 + math.cos(math.pi * progress))


class KeepRateScheduleCallback(TrainingTechnique):
    """Token keep-rate warm-up (Tri-Level E-ViT / EViT): train dense first, then drop tokens gradually.

    The rate is 1.0 for the first `warmup_fraction` of the optimizer steps, then follows a per-step cosine down to
    the target over the next `decay_fraction` of the steps, and stays there (paper: 10 and 100 of 300 epochs, the
    defaults). Evaluation and saved checkpoints always see the target: the scheduled rate is applied only between
    `on_step_begin` and `on_step_end`.

    Args:
        target_token_keep_rate: final rate in (0, 1]; default: the model's `config.token_keep_rate`.
        warmup_fraction: share of training at rate 1.0, in [0, 1).
        decay_fraction: share of training spent decaying, in (0, 1]; `warmup_fraction + decay_fraction <= 1`.

    Each distinct rate is a distinct token count, so a `torch.compile`d model recompiles as the rate moves; compile
    after the warm-up or accept the recompiles.
    """

    def __init__(
        self,
        target_token_keep_rate: float | None = None,
        warmup_fraction: float = 10 / 300,
        decay_fraction: float = 100 / 300,
    ):
        if target_token_keep_rate is not None:
            target_token_keep_rate = check_keep_rate("target_token_keep_rate", target_token_keep_rate)
        warmup_fraction = check_number("warmup_fraction", warmup_fraction, 0.0, 1.0, low_open=False, high_open=True)
        decay_fraction = check_fraction("decay_fraction", decay_fraction)
        if warmup_fraction + decay_fraction > 1 + 1e-9:
            raise ValueError(
                f"`warmup_fraction + decay_fraction` must be <= 1, got {warmup_fraction} + {decay_fraction}."
            )
        self.target_token_keep_rate = target_token_keep_rate
        self.warmup_fraction = float(warmup_fraction)
        self.decay_fraction = float(decay_fraction)
        self._target: float | None = None
        self._total_steps = 0

    name = "keep_rate_schedule"
    sets_keep_rates = True

    def card_settings(self) -> dict:
        return {
            "target_token_keep_rate": self._target or self.target_token_keep_rate,
            "warmup_fraction": round(self.warmup_fraction, 4),
            "decay_fraction": round(self.decay_fraction, 4),
        }

    def rate_at(self, step: int) -> float:
        return cosine_keep_rate(step, self._total_steps, self._target, self.warmup_fraction, self.decay_fraction)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None or not hasattr(model, "set_keep_rates"):
            raise ValueError(
                "KeepRateScheduleCallback needs a TriLevel model (one with `set_keep_rates`), got "
                f"{type(model).__name__}."
            )
        self._target = self.target_token_keep_rate or model.config.token_keep_rate
        self._total_steps = state.max_steps
        model.set_keep_rates(token_keep_rate=self._target)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        model.set_keep_rates(token_keep_rate=self.rate_at(state.global_step))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        model.set_keep_rates(token_keep_rate=self._target)

    def log_values(self, step: int) -> dict[str, float]:
        """The keep rate the logged step trained at (it ran with `global_step` one lower)."""
        return {} if self._target is None else {"token_keep_rate": round(self.rate_at(max(step - 1, 0)), 4)}

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Under a plain `Trainer` (no `log_values` hook) the rate still reaches the reporters this way.
        if logs is not None and "loss" in logs and "token_keep_rate" not in logs:
            logs.update(self.log_values(state.global_step))


def linear_temperature(step: int, total_steps: int, start: float, end: float) -> float:
    """Temperature at `step`: a straight line from `start` (step 0) to `end` (the last step)."""
    progress = min(max(step / max(total_steps - 1, 1), 0.0), 1.0)
    return start + (end - start) * progress


class TokenSelectorTemperatureCallback(TrainingTechnique):
    """Anneal the Gumbel temperature of learned token scores (SViTE+: linear from 10 to 0.1 over training).

    A high temperature makes the straight-through gates soft, so many tokens near the keep boundary get gradient
    while the scorer is still poor; a low one concentrates the gradient on the tokens at the boundary. As in
    Gumbel-softmax, the temperature shapes only the gradient: which tokens a training step keeps is a sample from
    the softmax of the scores at every temperature (evaluation keeps the top scores); only the noise scale below
    moves training toward evaluation's choice. Both are functions of the optimizer step alone, set before every
    step, so a resumed run trains as an uninterrupted one and there is no state to save. Works with any `Trainer`.

    `noise_start` / `noise_end` anneal the Gumbel noise scale (`token_selector_noise`) the same way; the default
    keeps it at 1.0 (a softmax sample every step). Ending at 0.0 makes the last steps keep the top scores, as
    evaluation does.

    Args:
        start: temperature at the first step, > 0.
        end: temperature at the last step, > 0.
        noise_start: Gumbel noise scale at the first step, in [0, 1].
        noise_end: Gumbel noise scale at the last step, in [0, 1].
    """

    name = "token_selector_temperature"

    def __init__(self, start: float = 10.0, end: float = 0.1, noise_start: float = 1.0, noise_end: float = 1.0):
        self.start = check_number("start", start, 0.0, math.inf, high_open=True)
        self.end = check_number("end", end, 0.0, math.inf, high_open=True)
        self.noise_start = check_number("noise_start", noise_start, 0.0, 1.0, low_open=False)
        self.noise_end = check_number("noise_end", noise_end, 0.0, 1.0, low_open=False)
        self._total_steps = 0

    def card_settings(self) -> dict:
        settings = {"start": self.start, "end": self.end, "schedule": "linear per step"}
        if (self.noise_start, self.noise_end) != (1.0, 1.0):
            settings.update(noise_start=self.noise_start, noise_end=self.noise_end)
        return settings

    def temperature_at(self, step: int) -> float:
        return linear_temperature(step, self._total_steps, self.start, self.end)

    def noise_at(self, step: int) -> float:
        return linear_temperature(step, self._total_steps, self.noise_start, self.noise_end)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "uses_learned_scores"):
            raise ValueError(f"TokenSelectorTemperatureCallback needs a TriLevel model, got {type(model).__name__}.")
        if not config.uses_learned_scores():
            raise ValueError(
                f"TokenSelectorTemperatureCallback anneals learned token scores, but the model's "
                f"`token_selector={config.token_selector!r}` (token_importance={config.token_importance!r}) has "
                "none: use `token_selector='learned'` (or 'adaptive' with token_importance='learned'), or drop the "
                "callback."
            )
        self._total_steps = state.max_steps

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        model.config.token_selector_temperature = self.temperature_at(state.global_step)
        model.config.token_selector_noise = self.noise_at(state.global_step)

    def log_values(self, step: int) -> dict[str, float]:
        """The temperature (and an annealed noise scale) the logged step trained at (`global_step` one lower)."""
        if not self._total_steps:
            return {}
        values = {"token_selector_temperature": round(self.temperature_at(step - 1), 4)}
        if (self.noise_start, self.noise_end) != (1.0, 1.0):
            values["token_selector_noise"] = round(self.noise_at(step - 1), 4)
        return values

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and "loss" in logs and "token_selector_temperature" not in logs:
            logs.update(self.log_values(state.global_step))
