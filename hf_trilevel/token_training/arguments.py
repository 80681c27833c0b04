"""The token level's training flags: the keep-rate warm-up (`KeepRateScheduleArguments`), the learned scores'
temperature (`SelectorTemperatureArguments`) and dense/sparse training with distillation (`DenseSparseArguments`).

Each is a `TechniqueArguments` dataclass (`hf_trilevel.training.arguments`): its field names are the flags, checked
in `__post_init__`, and `build(context)` returns the technique for the run, or None when the flags leave it off.
"""

import logging
import math
from dataclasses import dataclass, field

from ..modeling.configuration_trilevel_vit import check_dense_sparse_keep_rates
from ..modeling.value_checks import check_fraction, check_keep_rate, check_number
from ..training.arguments import TechniqueArguments, TechniqueContext, given_fields, given_flags
from .dense_sparse import DISTILLATION_MODES, SCHEDULES, DenseSparseTraining, check_model_for_dense_sparse
from .distillation import check_temperature, load_teacher
from .keep_rate_schedule import KeepRateSchedule
from .selector_temperature import SelectorTemperatureSchedule

logger = logging.getLogger(__name__)

# Technique settings whose flag has another name (messages about a resumed run's settings name the flag).
KEEP_RATE_FLAGS = {
    "target_token_keep_rate": "token_keep_rate",
    "warmup_fraction": "keep_rate_warmup_fraction",
    "decay_fraction": "keep_rate_decay_fraction",
}
DENSE_SPARSE_FLAGS = {
    "keep_rates": "dense_sparse_keep_rates",
    "schedule": "dense_sparse_schedule",
    "importance_weight": "token_importance_distillation_weight",
    "warmup_fraction": "keep_rate_warmup_fraction",
    "decay_fraction": "keep_rate_decay_fraction",
}


@dataclass
class KeepRateScheduleArguments(TechniqueArguments):
    """Tri-Level E-ViT's warm-up: the token keep rate starts at 1.0 and decays to its target (cosine, per step)."""

    keep_rate_schedule: bool = field(
        default=False, metadata={"help": "Warm token_keep_rate up from 1.0 to its target (per-step cosine)."}
    )
    keep_rate_warmup_fraction: float = field(
        default=10 / 300,
        metadata={"help": "Share of training at token_keep_rate 1.0 before the decay starts, in [0, 1)."},
    )
    keep_rate_decay_fraction: float = field(
        default=100 / 300, metadata={"help": "Share of training over which the rate decays to its target, (0, 1]."}
    )

    def __post_init__(self):
        warmup = self.keep_rate_warmup_fraction
        check_number("keep_rate_warmup_fraction", warmup, 0.0, 1.0, low_open=False, high_open=True)
        check_fraction("keep_rate_decay_fraction", self.keep_rate_decay_fraction)
        if self.keep_rate_warmup_fraction + self.keep_rate_decay_fraction > 1 + 1e-9:
            raise ValueError(
                "`keep_rate_warmup_fraction + keep_rate_decay_fraction` must be <= 1, got "
                f"{self.keep_rate_warmup_fraction} + {self.keep_rate_decay_fraction}."
            )
        shape = [name for name in given_fields(self) if name != "keep_rate_schedule"]
        if shape and not self.keep_rate_schedule:
            raise ValueError(
                f"`{shape[0]}` shapes the keep-rate warm-up, which is off: pass `keep_rate_schedule` True too, or drop "
                f"`{shape[0]}`."
            )

    def fractions(self) -> tuple[float, float] | None:
        """`(warmup, decay)` shares of training when the warm-up is on, else None."""
        if not self.keep_rate_schedule:
            return None
        return self.keep_rate_warmup_fraction, self.keep_rate_decay_fraction

    def build(self, context: TechniqueContext) -> KeepRateSchedule | None:
        """`KeepRateSchedule`, or None without `keep_rate_schedule`, without training, or with dense/sparse training
        among `technique_args` (which then warms up every sparse rate itself)."""
        dense_sparse = any(isinstance(args, DenseSparseArguments) and args.enabled() for args in context.technique_args)
        if self.fractions() is None or not context.training_args.do_train or dense_sparse:
            return None
        warmup, decay = self.fractions()
        schedule = KeepRateSchedule(context.config.token_keep_rate, warmup_fraction=warmup, decay_fraction=decay)
        return schedule.name_settings(KEEP_RATE_FLAGS, flags=given_flags(self))


@dataclass
class SelectorTemperatureArguments(TechniqueArguments):
    """SViTE+: the Gumbel temperature and noise of learned token scores, annealed linearly per step."""

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

    def __post_init__(self):
        for name in ("token_selector_temperature_start", "token_selector_temperature_end"):
            check_number(name, getattr(self, name), 0.0, math.inf, high_open=True)
        for name in ("token_selector_noise_start", "token_selector_noise_end"):
            check_number(name, getattr(self, name), 0.0, 1.0, low_open=False)

    def build(self, context: TechniqueContext) -> SelectorTemperatureSchedule | None:
        """`SelectorTemperatureSchedule` when the model trains learned scores, else None (with a notice when a flag
        here was set for a selector that has no temperature).

        Decided from the config, not a flag: the selector may come from a checkpoint or `--config_name`.
        """
        if not context.training_args.do_train:
            return None
        if context.config.uses_learned_scores():
            return SelectorTemperatureSchedule(
                self.token_selector_temperature_start,
                self.token_selector_temperature_end,
                noise_start=self.token_selector_noise_start,
                noise_end=self.token_selector_noise_end,
            ).name_settings(
                {"start": "token_selector_temperature_start", "end": "token_selector_temperature_end"}
                | {key: f"token_selector_{key}" for key in ("noise_start", "noise_end")},
                flags=" ".join(
                    [f"--token_selector {context.config.token_selector}"]
                    + ["--token_importance learned"] * (context.config.token_selector == "adaptive")
                    + [given_flags(self)] * bool(given_fields(self))
                ),
            )
        changed = given_fields(self)
        if changed:
            logger.warning(
                "`%s` is ignored: token_selector %r with token_importance %r trains no learned scores.",
                changed[0],
                context.config.token_selector,
                getattr(context.config, "token_importance", "class_attention"),
            )
        return None


@dataclass
class DenseSparseArguments(TechniqueArguments):
    """SaiT: one checkpoint for several token keep rates (dense/sparse weight sharing) and distillation."""

    dense_sparse_keep_rates: list[float] | None = field(
        default=None,
        metadata={
            "help": "Train one checkpoint for these token keep rates (e.g. 1.0 0.7 0.5; 1.0 is the dense model): "
            "every step runs the densest pass and sparse passes of the same batch with shared weights."
        },
    )
    dense_sparse_schedule: str = field(
        default="dense_and_one",
        metadata={
            "help": "dense_and_one: the densest pass and one sparse rate per step, in turn; every_rate: all rates.",
            "choices": list(SCHEDULES),
        },
    )
    distillation: str | None = field(
        default=None,
        metadata={
            "help": "How the sparse passes are taught: none, self (by the dense pass, in place; the default with "
            "--dense_sparse_keep_rates) or teacher (by --teacher_model_name_or_path).",
            "choices": list(DISTILLATION_MODES),
        },
    )
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "--distillation teacher: a ViT or TriLevel folder or Hub id with the data's classes."},
    )
    distillation_temperature: float = field(
        default=1.0, metadata={"help": "Softmax temperature of the logit distillation, > 0."}
    )
    distillation_weight: float = field(
        default=1.0, metadata={"help": "Weight of the logit distillation term, >= 0 (0 turns it off)."}
    )
    token_importance_distillation_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the term aligning each pruning layer's token importance with the dense pass's "
            "last-layer class attention, >= 0 (0: off)."
        },
    )

    def __post_init__(self):
        if not self.enabled():
            given = given_fields(self)
            if given:
                raise ValueError(
                    f"`{given[0]}` is a setting of dense/sparse training; pass `dense_sparse_keep_rates` too (e.g. "
                    "1.0 0.7 0.5)."
                )
            return
        for rate in self.dense_sparse_keep_rates:  # one name for every entry, so the message names the flag
            check_keep_rate("dense_sparse_keep_rates", rate)
        if len(check_dense_sparse_keep_rates(self.dense_sparse_keep_rates)) < 2:
            raise ValueError(
                "`dense_sparse_keep_rates` must hold at least two keep rates in (0, 1], got "
                f"{self.dense_sparse_keep_rates}; to train at one rate use `token_keep_rate`."
            )
        if self.dense_sparse_schedule not in SCHEDULES:
            raise ValueError(
                f"`dense_sparse_schedule` must be one of {list(SCHEDULES)}, got {self.dense_sparse_schedule!r}."
            )
        mode = self.distillation_mode()
        if mode not in DISTILLATION_MODES:
            raise ValueError(f"`distillation` must be one of {list(DISTILLATION_MODES)}, got {mode!r}.")
        if mode == "teacher" and not self.teacher_model_name_or_path:
            raise ValueError(
                "`distillation` teacher needs `teacher_model_name_or_path` (a ViT or TriLevel checkpoint)."
            )
        if mode != "teacher" and self.teacher_model_name_or_path:
            raise ValueError(
                f"`teacher_model_name_or_path` is given but `distillation` is {mode}; pass `distillation` teacher."
            )
        check_temperature(self.distillation_temperature)
        for name in ("distillation_weight", "token_importance_distillation_weight"):
            check_number(name, getattr(self, name), 0.0, math.inf, low_open=False, high_open=True)

    def enabled(self) -> bool:
        return self.dense_sparse_keep_rates is not None

    def distillation_mode(self) -> str:
        return self.distillation or "self"

    def build(self, context: TechniqueContext) -> DenseSparseTraining | None:
        """`DenseSparseTraining` for the model `config` (with the keep-rate warm-up of `technique_args`' schedule
        for every sparse rate), or None without `dense_sparse_keep_rates` or without training.

        The teacher (`hub_kwargs`: `cache_dir`, `revision`, `token`) is checked against the config's classes from
        its own config first, then loaded frozen on the training device.
        """
        if not self.enabled() or not context.training_args.do_train:
            return None
        rates = check_dense_sparse_keep_rates(self.dense_sparse_keep_rates)
        check_model_for_dense_sparse(context.config, rates, self.distillation_mode(), "dense_sparse_keep_rates")
        teacher = None
        if self.distillation_mode() == "teacher":
            label_names = [context.config.id2label[index] for index in range(context.config.num_labels)]
            teacher = load_teacher(
                self.teacher_model_name_or_path,
                label_names=label_names,
                num_labels=context.config.num_labels,
                device=context.training_args.device,
                **context.hub_kwargs,
            )
        warmup_arguments = [
            args for args in context.technique_args if isinstance(args, KeepRateScheduleArguments) and args.fractions()
        ]
        warmup_fraction, decay_fraction = warmup_arguments[0].fractions() if warmup_arguments else (0.0, 0.0)
        return DenseSparseTraining(
            self.dense_sparse_keep_rates,
            schedule=self.dense_sparse_schedule,
            distillation=self.distillation_mode(),
            teacher=teacher,
            distillation_temperature=self.distillation_temperature,
            distillation_weight=self.distillation_weight,
            importance_weight=self.token_importance_distillation_weight,
            warmup_fraction=warmup_fraction,
            decay_fraction=decay_fraction,
        ).name_settings(DENSE_SPARSE_FLAGS, flags=given_flags(self, *warmup_arguments))


__all__ = ["DenseSparseArguments", "KeepRateScheduleArguments", "SelectorTemperatureArguments"]
