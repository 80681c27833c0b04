"""SaiT's one checkpoint for every keep rate: dense and sparse passes of each batch share every weight.

A model trained at one token keep rate is good only near it (the digits checkpoint trained at 0.7: 98.6% at 0.7,
97.2% dense, 85.8% at 0.3). `DenseSparseTraining` trains one set of weights for several rates, so a deployment
picks its accuracy/throughput point with `model.set_keep_rates(...)` and no retraining, and keep 1.0 (dense) is the
"no pruning, no loss" option.

**Schedule.** Every training step runs the densest rate's pass (the *main* pass, which the trainer's loss seam runs
and example pruning observes) and then sparse passes of the same batch, all in one backward:

* `"dense_and_one"` (default): one sparse rate per step, taking the sparse rates in turn by optimizer step. A step
  costs about dense + one sparse forward/backward, the slimmable-network recipe of a widest and one narrower
  sub-network per step with in-place distillation (Yu & Huang, US-Nets). Sampling a single rate per step (one
  forward) would be cheaper but has no dense pass to distil from, and the dense rate would get a third of the steps.
* `"every_rate"`: every sparse rate every step (the "sandwich" with all widths): most signal per step, most cost.

The rate a step uses depends on the optimizer step alone, so a resumed run makes the same choices and there is
no state to save; every process takes the same rate, so DDP sees the same graph everywhere.

**Losses per micro-batch.** The main pass's task loss (the trainer's `task` term), then for each sparse pass:
its task loss (`sparse_task`), plus with distillation `distillation_weight * T^2 * KL(teacher || sparse)` on the
logits (`distillation`; the teacher is the main pass itself, detached, with `"self"`, or a frozen teacher model with
`"teacher"`) and `importance_weight * KL` between each pruning layer's token importance and the main pass's
last-layer class attention (`importance_distillation`, see `hf_trilevel.token_training.distillation`). Example pruning's
per-example weights apply to every term.

**Operating points.** Rate 1.0 is the dense model: no token dropping, full attention and no token merging. Other
rates drop tokens at that rate and keep the model's `attention_keep_rate` and `token_merge_r`. `operating_point(config,
rate)` gives all three as an `OperatingPoint` `(token_keep_rate, attention_keep_rate, token_merge_r)`, in
`model.keep_rates(...)`'s argument order. The rates are recorded in the saved config as `dense_sparse_keep_rates`.

**Token merging** (`token_merge_r`, ToMe). A merging model trains its dense pass (rate 1.0) with merging off, the "no
loss" point SaiT promises, and its sparse passes with its own r; the matching is not differentiable, the gradients of
the sparse passes flow through the size-weighted averages. Before the first step the r must fit every layer at the
sparsest trained rate (a layer's token count only grows with the rate, so it then fits at every rate the warm-up
passes through), and a merging model's own `token_keep_rate` must be a sparse rate: at 1.0 its default forward (keep
1.0 *with* merging) would be a point no pass trains. Several r per checkpoint are not operating points of their own:
the operating points are keyed by keep rate everywhere (the saved `dense_sparse_keep_rates`, the operating-point
table, the card, the benchmark), and a second axis would need a config field for the trained r's; a merging
checkpoint is still evaluated at other r with `model.keep_rates(token_merge_r=...)`, untrained for them, as ToMe
models are.
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch

from ..modeling.configuration_trilevel_vit import check_dense_sparse_keep_rates
from ..modeling.value_checks import check_fraction, check_number
from ..training.loss_terms import model_output
from ..training.schedules import cosine_keep_rate
from ..training.technique import TrainingBatch, TrainingTechnique
from .dense_sparse_checks import (
    check_distillable,
    check_merging_for_dense_sparse,
    check_model_for_dense_sparse,
    check_teacher_model,
)
from .distillation import check_temperature, freeze, importance_distillation, logit_distillation

SCHEDULES = ("dense_and_one", "every_rate")
DISTILLATION_MODES = ("none", "self", "teacher")
SPARSE_TASK_TERM = "sparse_task"
DISTILLATION_TERM = "distillation"
IMPORTANCE_TERM = "importance_distillation"


class OperatingPoint(NamedTuple):
    """What one operating point runs at, in `model.keep_rates(...)`'s argument order: spread it with `*`."""

    token_keep_rate: float
    attention_keep_rate: float
    token_merge_r: int | list[int]  # 0: no merging; else as `config.token_merge_r` (uniform or per layer)


def operating_point(config, token_keep_rate: float) -> OperatingPoint:
    """`(token_keep_rate, attention_keep_rate, token_merge_r)` of one operating point of a dense/sparse checkpoint.

    Rate 1.0 is the dense model, the "no pruning, no loss" point SaiT promises: no token dropping, full attention and
    no token merging. A lower rate drops tokens at that rate and keeps the checkpoint's own `attention_keep_rate` and
    `token_merge_r`, as in training. Use it as `with model.keep_rates(*operating_point(model.config, 0.5)): ...`;
    `[0]` and `[1]` are the two rates, as before merging existed.
    """
    return pass_rates(token_keep_rate, config.attention_keep_rate, getattr(config, "token_merge_r", 0))


def pass_rates(
    token_keep_rate: float, attention_keep_rate: float, token_merge_r: int | Sequence[int] = 0
) -> OperatingPoint:
    """The operating point at `token_keep_rate` of a model whose own sparse settings are the other two arguments."""
    rate = float(token_keep_rate)
    if rate >= 1.0:
        return OperatingPoint(rate, 1.0, 0)
    merge_r = list(token_merge_r) if isinstance(token_merge_r, (list, tuple)) else token_merge_r
    return OperatingPoint(rate, float(attention_keep_rate), merge_r)


class DenseSparseTraining(TrainingTechnique):
    """Train one checkpoint for several token keep rates (SaiT dense/sparse weight sharing), with distillation.

    Pass it to `TriLevelTrainer(callbacks=[...])`; it needs the trainer's loss seam (a second pass per batch).

    Args:
        keep_rates: the token keep rates to serve, at least two, each in (0, 1]; 1.0 is the dense model. The
            densest is the main pass of every step.
        schedule: `"dense_and_one"` (the main pass and one sparse rate per step, in turn) or `"every_rate"`.
        distillation: `"none"`, `"self"` (the main pass teaches the sparse passes, in place) or `"teacher"`.
        teacher: the teacher model for `"teacher"`: any image classifier returning `.logits` for the same
            `pixel_values` and classes (`hf_trilevel.token_training.distillation.load_teacher` loads and checks one).
            It is frozen
            here and moved to the training device; it is not part of the student, so it gets no gradient and no
            optimizer state.
        distillation_temperature: softmax temperature of the logit term, > 0.
        distillation_weight: weight of the logit term, >= 0 (0 turns it off).
        importance_weight: weight of the token-importance term, >= 0 (0 turns it off); needs pruning layers.
        warmup_fraction, decay_fraction: keep-rate warm-up of every sparse rate, as `KeepRateSchedule`
            does for one rate (1.0 for the first `warmup_fraction` of the steps, then a cosine to the rate over
            `decay_fraction`); both 0 (default): no warm-up.
    """

    name = "dense_sparse"
    sets_keep_rates = True

    def __init__(
        self,
        keep_rates: Sequence[float] = (1.0, 0.7, 0.5),
        *,
        schedule: str = "dense_and_one",
        distillation: str = "self",
        teacher: torch.nn.Module | None = None,
        distillation_temperature: float = 1.0,
        distillation_weight: float = 1.0,
        importance_weight: float = 0.0,
        warmup_fraction: float = 0.0,
        decay_fraction: float = 0.0,
    ):
        if isinstance(keep_rates, (str, bytes)) or not isinstance(keep_rates, Sequence) or not keep_rates:
            raise ValueError(f"`keep_rates` must be a list of at least two keep rates in (0, 1], got {keep_rates!r}.")
        rates = check_dense_sparse_keep_rates(list(keep_rates), "keep_rates")
        if len(rates) < 2:
            raise ValueError(
                f"`keep_rates` must hold at least two keep rates (one checkpoint for several operating points), got "
                f"{list(keep_rates)}; to train at one rate, set `token_keep_rate` instead."
            )
        if schedule not in SCHEDULES:
            raise ValueError(f"`schedule` must be one of {list(SCHEDULES)}, got {schedule!r}.")
        if distillation not in DISTILLATION_MODES:
            raise ValueError(f"`distillation` must be one of {list(DISTILLATION_MODES)}, got {distillation!r}.")
        if distillation == "teacher" and teacher is None:
            raise ValueError("`distillation='teacher'` needs a `teacher` model (`teacher_model_name_or_path`).")
        if distillation != "teacher" and teacher is not None:
            raise ValueError(f"a `teacher` was given but `distillation` is {distillation!r}; use 'teacher'.")
        self.keep_rates = rates
        self.schedule = schedule
        self.distillation = distillation
        self.teacher = freeze(teacher) if teacher is not None else None
        self.distillation_temperature = check_temperature(distillation_temperature)
        self.distillation_weight = check_number("distillation_weight", distillation_weight, 0.0, float("inf"),
                                                low_open=False, high_open=True)  # fmt: skip
        self.importance_weight = check_number("importance_weight", importance_weight, 0.0, float("inf"),
                                              low_open=False, high_open=True)  # fmt: skip
        warmup = check_number("warmup_fraction", warmup_fraction, 0.0, 1.0, low_open=False, high_open=True)
        decay = check_fraction("decay_fraction", decay_fraction, allow_zero=True)
        if warmup + decay > 1 + 1e-9:
            raise ValueError(f"`warmup_fraction + decay_fraction` must be <= 1, got {warmup} + {decay}.")
        if warmup > 0 and decay == 0:
            raise ValueError("`warmup_fraction` > 0 needs `decay_fraction` > 0 (the steps that lower the rates).")
        self.warmup_fraction, self.decay_fraction = float(warmup), float(decay)
        self._model = None
        self._set_up = False
        self._saved_rates: OperatingPoint | None = None  # the model's own settings, from train begin
        self._total_steps = 0
        self._step = 0

    # -- what each step runs ------------------------------------------------------------------------------------
    @property
    def sparse_rates(self) -> list[float]:
        """The rates below the densest, which the extra passes train."""
        return self.keep_rates[1:]

    def rates_of_step(self, step: int) -> list[float]:
        """The sparse target rates step `step` trains (before warm-up)."""
        if self.schedule == "every_rate":
            return list(self.sparse_rates)
        return [self.sparse_rates[step % len(self.sparse_rates)]]

    def warmed_rate(self, rate: float, step: int) -> float:
        """`rate` after the warm-up at `step` (the rate itself without warm-up)."""
        if self.decay_fraction == 0 or rate >= 1.0:
            return rate
        return cosine_keep_rate(step, self._total_steps, rate, self.warmup_fraction, self.decay_fraction)

    def pass_rates(self, rate: float, step: int) -> OperatingPoint:
        """`(token_keep_rate, attention_keep_rate, token_merge_r)` of the pass at target `rate` in step `step`: a
        pass warmed up to 1.0 is the dense one (full attention, no merging)."""
        own = self._saved_rates if self._saved_rates is not None else OperatingPoint(1.0, 1.0, 0)
        return pass_rates(self.warmed_rate(rate, step), own.attention_keep_rate, own.token_merge_r)

    # -- Trainer events ----------------------------------------------------------------------------------------
    def setup(self, args, num_examples, device) -> None:
        self._set_up = True  # only TriLevelTrainer calls this: it is the trainer that runs the extra passes

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self._set_up:
            raise RuntimeError(
                "DenseSparseTraining runs extra passes of each batch through the loss seam, which the stock Trainer "
                "does not have (it would train the dense pass only): use `hf_trilevel.TriLevelTrainer`, a drop-in "
                "replacement for `transformers.Trainer`."
            )
        self._set_up = False
        if model is None or not hasattr(model, "keep_rates"):
            raise ValueError(
                f"DenseSparseTraining needs a TriLevel model (one with `keep_rates`), got {type(model).__name__}."
            )
        config = model.config
        check_model_for_dense_sparse(config, self.keep_rates, self.distillation)
        if self.teacher is not None:
            check_teacher_model(self.teacher, config)
            self.teacher.to(args.device)
        self._model = model
        self._saved_rates = OperatingPoint(
            config.token_keep_rate, config.attention_keep_rate, getattr(config, "token_merge_r", 0)
        )
        self._total_steps = state.max_steps
        config.dense_sparse_keep_rates = list(self.keep_rates)  # saved with every checkpoint and the final model

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self._step = state.global_step
        model.set_keep_rates(*self.pass_rates(self.keep_rates[0], self._step))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        model.set_keep_rates(*self._saved_rates)  # evaluation and checkpoints see the model's own rates

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._saved_rates is not None:
            model.set_keep_rates(*self._saved_rates)

    # -- the loss seam -----------------------------------------------------------------------------------------
    def forward_kwargs(self) -> dict:
        return {"output_token_importance": True} if self.importance_weight > 0 else {}

    def extra_losses(self, batch: TrainingBatch) -> dict[str, torch.Tensor]:
        if batch.forward is None or batch.task_loss is None:
            raise ValueError("DenseSparseTraining runs extra passes of each batch: train with TriLevelTrainer.")
        teacher_logits = self._teacher_logits(batch)
        target = None
        if self.importance_weight > 0:
            target = model_output(batch.outputs, "token_importance")[-1].detach()
        sums: dict[str, torch.Tensor] = {}
        for rate in self.rates_of_step(self._step):
            with self._model.keep_rates(*self.pass_rates(rate, self._step)):
                outputs = batch.forward()
            for name, value in self._pass_terms(batch, outputs, teacher_logits, target).items():
                sums[name] = sums[name] + value if name in sums else value
        return sums

    def _teacher_logits(self, batch: TrainingBatch) -> torch.Tensor | None:
        if self.distillation == "none" or self.distillation_weight == 0:
            return None
        check_distillable(self._model.config, self.distillation)  # problem_type may be set by the first batch
        if self.distillation == "self":
            return model_output(batch.outputs, "logits").detach()
        with torch.no_grad():
            return self.teacher(pixel_values=batch.inputs["pixel_values"]).logits

    def _pass_terms(self, batch: TrainingBatch, outputs, teacher_logits, target) -> dict[str, torch.Tensor]:
        """The batch-mean terms of one sparse pass (the composed loss scales them by the micro-batch's share)."""
        terms = {SPARSE_TASK_TERM: self._mean(batch.task_loss(outputs), batch)}
        auxiliary = model_output(outputs, "auxiliary_loss")
        if auxiliary is not None:
            terms[SPARSE_TASK_TERM] = terms[SPARSE_TASK_TERM] + auxiliary
        if teacher_logits is not None:
            student = model_output(outputs, "logits")
            per_example = logit_distillation(student, teacher_logits, self.distillation_temperature)
            terms[DISTILLATION_TERM] = self.distillation_weight * self._mean(per_example, batch)
        if target is not None:
            student_importance = list(model_output(outputs, "token_importance")[:-1])
            per_example = importance_distillation(student_importance, target)
            terms[IMPORTANCE_TERM] = self.importance_weight * self._mean(per_example, batch)
        return terms

    @staticmethod
    def _mean(per_example: torch.Tensor, batch: TrainingBatch) -> torch.Tensor:
        if batch.example_weights is not None:
            per_example = per_example * batch.example_weights
        return per_example.mean()

    # -- card and logs -----------------------------------------------------------------------------------------
    def resume_settings(self) -> dict:
        """Every constructor setting but the teacher itself (a teacher folder may move between runs; whether there
        is one is `distillation`)."""
        return {
            "keep_rates": list(self.keep_rates),
            "schedule": self.schedule,
            "distillation": self.distillation,
            "distillation_temperature": self.distillation_temperature,
            "distillation_weight": self.distillation_weight,
            "importance_weight": self.importance_weight,
            "warmup_fraction": self.warmup_fraction,
            "decay_fraction": self.decay_fraction,
        }

    def card_settings(self) -> dict:
        settings = self.resume_settings()
        warmup, decay = settings.pop("warmup_fraction"), settings.pop("decay_fraction")
        if self.teacher is not None:
            settings["teacher"] = getattr(self.teacher.config, "_name_or_path", None) or type(self.teacher).__name__
        if decay:
            settings.update(warmup_fraction=warmup, decay_fraction=decay)
        return settings


__all__ = [
    "DISTILLATION_MODES",
    "SCHEDULES",
    "DenseSparseTraining",
    "OperatingPoint",
    "check_merging_for_dense_sparse",
    "check_model_for_dense_sparse",
    "check_teacher_model",
    "operating_point",
]
