"""The example script's dense/sparse training and distillation flags, their checks, the technique they build, and
the operating-point table it writes after training.

Kept out of `examples/run_image_classification.py` so the script stays a readable recipe. The checks that need no
data run first (`check_dense_sparse_arguments`); the teacher's classes are checked against the data's label names as
soon as they are known, from the teacher's config alone, before any weights load (`build_dense_sparse_training`).
"""

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from ..modeling.configuration_trilevel_vit import check_dense_sparse_keep_rates
from ..modeling.value_checks import check_keep_rate, check_number
from .dense_sparse import DISTILLATION_MODES, SCHEDULES, DenseSparseTraining, check_model_for_dense_sparse
from .distillation import check_temperature, load_teacher
from .operating_points import OPERATING_POINTS_FILE, operating_points_markdown, write_operating_points


@dataclass
class DenseSparseArguments:
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

    def enabled(self) -> bool:
        return self.dense_sparse_keep_rates is not None

    def distillation_mode(self) -> str:
        return self.distillation or "self"


def check_dense_sparse_arguments(args: DenseSparseArguments) -> None:
    """Refuse bad dense/sparse and distillation flags before any data loads; each message names its flag."""
    if not args.enabled():
        defaults = DenseSparseArguments()
        given = [item.name for item in fields(args) if getattr(args, item.name) != getattr(defaults, item.name)]
        if given:
            raise ValueError(
                f"`{given[0]}` is a setting of dense/sparse training; pass `dense_sparse_keep_rates` too (e.g. "
                "1.0 0.7 0.5)."
            )
        return
    for rate in args.dense_sparse_keep_rates:  # one name for every entry, so the message names the flag
        check_keep_rate("dense_sparse_keep_rates", rate)
    rates = check_dense_sparse_keep_rates(args.dense_sparse_keep_rates)
    if len(rates) < 2:
        raise ValueError(
            f"`dense_sparse_keep_rates` must hold at least two keep rates in (0, 1], got {args.dense_sparse_keep_rates}"
            "; to train at one rate use `token_keep_rate`."
        )
    mode = args.distillation_mode()
    if mode == "teacher" and not args.teacher_model_name_or_path:
        raise ValueError("`distillation` teacher needs `teacher_model_name_or_path` (a ViT or TriLevel checkpoint).")
    if mode != "teacher" and args.teacher_model_name_or_path:
        raise ValueError(
            f"`teacher_model_name_or_path` is given but `distillation` is {mode}; pass `distillation` teacher."
        )
    check_temperature(args.distillation_temperature)
    for name in ("distillation_weight", "token_importance_distillation_weight"):
        check_number(name, getattr(args, name), 0.0, math.inf, low_open=False, high_open=True)


def build_dense_sparse_training(
    args: DenseSparseArguments,
    label_names: list[str],
    config,
    *,
    warmup: tuple[float, float] | None = None,
    device: torch.device | str | None = None,
    **hub_kwargs,
) -> DenseSparseTraining:
    """The technique the flags ask for, for the model `config`; loads and checks the teacher (its classes first,
    from its config alone)."""
    check_model_for_dense_sparse(config, check_dense_sparse_keep_rates(args.dense_sparse_keep_rates),
                                 args.distillation_mode())  # fmt: skip
    teacher = None
    if args.distillation_mode() == "teacher":
        teacher = load_teacher(
            args.teacher_model_name_or_path,
            label_names=label_names,
            num_labels=len(label_names),
            device=device,
            **hub_kwargs,
        )
    warmup_fraction, decay_fraction = warmup if warmup is not None else (0.0, 0.0)
    return DenseSparseTraining(
        args.dense_sparse_keep_rates,
        schedule=args.dense_sparse_schedule,
        distillation=args.distillation_mode(),
        teacher=teacher,
        distillation_temperature=args.distillation_temperature,
        distillation_weight=args.distillation_weight,
        importance_weight=args.token_importance_distillation_weight,
        warmup_fraction=warmup_fraction,
        decay_fraction=decay_fraction,
    )


# The table is measured on at most this many validation images: they are decoded and stacked in memory at once.
OPERATING_POINT_EXAMPLES = 5000


def write_operating_point_table(trainer, validation) -> list[dict] | None:
    """After dense/sparse training: accuracy and measured images/s at every trained rate on (at most
    `OPERATING_POINT_EXAMPLES` of) the validation set, into `operating_points.json`, which the model card shows.
    The main process measures while the others wait."""
    points = None
    if trainer.is_world_process_zero():
        if hasattr(validation, "select") and len(validation) > OPERATING_POINT_EXAMPLES:
            validation = validation.select(range(OPERATING_POINT_EXAMPLES))
        model = trainer.accelerator.unwrap_model(trainer.model)
        points = write_operating_points(model, validation, trainer.args.output_dir)
        print(f"\noperating points of the one checkpoint (validation set):\n{operating_points_markdown(points)}")
    trainer.accelerator.wait_for_everyone()
    return points


def remove_stale_operating_points(trainer) -> None:
    """A fresh run replaces the earlier run's results: its operating-point table must not reach the new card."""
    stale = Path(trainer.args.output_dir) / OPERATING_POINTS_FILE
    if trainer.is_world_process_zero() and stale.is_file():
        stale.unlink()


__all__ = [
    "DenseSparseArguments",
    "build_dense_sparse_training",
    "check_dense_sparse_arguments",
    "remove_stale_operating_points",
    "write_operating_point_table",
]
