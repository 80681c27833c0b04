"""`hf-trilevel bench train`: training steps/s and epoch time of TriLevel settings against dense transformers ViT.

    hf-trilevel bench train --preset deit-tiny --batch-size 64 --keep-rates 1 0.7 0.5 --example-keep-fractions 1 0.8
    hf-trilevel bench train --time-to-accuracy            # dense vs TriLevel on the bundled digits, same recipe
    hf-trilevel bench train --keep-rates 1 --token-merge-r 0 8   # token merging (ToMe) rows, r tokens per layer

A step is what `Trainer` does per batch: forward with labels, backward, AdamW step, zero the gradients. Weights stay
in float32; `--dtype bfloat16|float16` trains under autocast, as mixed-precision training does. Dense ViT and the
TriLevel model start from the same weights, each with its own optimizer, and are timed in interleaved rounds.

The epoch projection multiplies the measured step time by the steps one epoch needs when example pruning keeps a
fraction of the data (`--example-keep-fractions`, counted as the forgetting policy keeps them) of a data set of
`--dataset-size` images (ImageNet-1k by default). Its FLOPs limit is the step's limit times dense steps over kept
steps. Training FLOPs are taken as three times the
forward FLOPs (forward, and backward to activations and weights), so a step's limit equals the forward limit.

`--dense-sparse-keep-rates 1 0.7 0.5` adds dense/sparse training rows (SaiT weight sharing,
`hf_trilevel.DenseSparseTraining`): one step is that technique's step through `TriLevelTrainer`'s loss
(`hf_trilevel.training.loss_terms.composed_loss`): the densest pass, then the sparse passes its schedule takes
(`--dense-sparse-schedule`: one per step in turn, or every rate), with `--distillation self` (the default) or
`none`, all in one backward. Its FLOPs limit counts every pass, so it is below 1: the row says what one checkpoint
for several keep rates costs per step against training dense ViT.
"""

import argparse
import contextlib
import dataclasses
import itertools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import torch

from ...evaluation.formatting import format_duration, markdown_table
from ...example_pruning.pruner import ForgettingPolicy
from ...modeling.value_checks import check_int
from ...token_training.dense_sparse import SCHEDULES, DenseSparseTraining
from ...training.loss_terms import composed_loss
from ..errors import CommandError, checked_option
from .measure import (
    CallFactory,
    SettingCallFactory,
    TimingPlan,
    measure_settings,
    random_batch,
    timing_plan,
    weights_note,
)
from .models import switch_setting
from .options import RunTarget, add_shape_arguments, add_target_arguments
from .report import check_writable, mib, report_payload, write_report
from .settings import Setting, add_setting_arguments, check_example_keep_fractions, dense_sparse_settings

IMAGENET_TRAIN_IMAGES = 1_281_167


@dataclass
class StepResult:
    """One setting's median training step."""

    setting: str
    token_keep_rate: float
    attention_keep_rate: float
    token_fusion: bool
    median_seconds: float
    steps_per_second: float
    speedup: float
    flops_limit: float
    fraction_of_limit: float
    train_gflops_per_image: float
    peak_memory_bytes: int | None
    seconds: list[float] | None = None
    token_selector: str = "class_attention"
    token_keep_mass: float = 1.0
    mean_kept_tokens: list[float] | None = None  # per pruning layer, mean over the batch's images (train mode)
    dense_sparse_keep_rates: list[float] | None = None  # a dense/sparse training row: the rates one step trains
    dense_sparse_schedule: str | None = None
    distillation: str | None = None
    token_merge_r: int = 0  # patch tokens every layer merges away (token merging)


@dataclass
class EpochProjection:
    """Time per epoch for one token setting at one example-level kept fraction."""

    setting: str
    example_keep_fraction: float
    steps_per_epoch: int
    epoch_seconds: float
    speedup: float
    flops_limit: float
    fraction_of_limit: float


def _optimizer(module: torch.nn.Module) -> torch.optim.Optimizer:
    # No weight decay and a tiny lr: timing must not depend on how far training has moved the weights.
    return torch.optim.AdamW(module.parameters(), lr=1e-6, weight_decay=0.0)


def _autocast(target: RunTarget) -> contextlib.AbstractContextManager:
    if target.dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(target.device.type, dtype=target.dtype)


def _training_step(target: RunTarget, pixel_values: torch.Tensor, labels: torch.Tensor) -> CallFactory:
    """What `Trainer` does per batch, for one model with its own AdamW: forward with labels, backward, step, zero."""

    def make_step(model: Callable, module: torch.nn.Module) -> Callable[[], None]:
        optimizer = _optimizer(module)

        def step() -> None:
            with _autocast(target):
                loss = model(pixel_values=pixel_values, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    return make_step


def dense_sparse_step(target: RunTarget, pixel_values: torch.Tensor, labels: torch.Tensor) -> SettingCallFactory:
    """One `DenseSparseTraining` step as `TriLevelTrainer` runs it, for a dense/sparse row: the technique's step
    events around the trainer's composed loss (the densest pass, then the sparse passes of this step), one
    backward, AdamW step, zero. Successive calls are successive optimizer steps, so `"dense_and_one"` takes the
    sparse rates in turn across the timed rounds."""

    def make_step(model: Callable, module: torch.nn.Module, setting: Setting) -> Callable[[], None]:
        technique = DenseSparseTraining(
            setting.dense_sparse_keep_rates, schedule=setting.dense_sparse_schedule, distillation=setting.distillation
        )
        switch_setting(module, setting)()  # the technique reads the row's attention keep rate when training begins
        recorded = module.config.dense_sparse_keep_rates
        technique.setup(None, None, target.device)  # as TriLevelTrainer does before training begins
        technique.on_train_begin(
            SimpleNamespace(device=target.device), SimpleNamespace(max_steps=0), None, model=module
        )
        module.config.dense_sparse_keep_rates = recorded  # the other rows share this model: leave no record behind
        optimizer = _optimizer(module)
        steps = itertools.count()
        inputs = {"pixel_values": pixel_values, "labels": labels}

        def step() -> None:
            state = SimpleNamespace(global_step=next(steps))
            technique.on_step_begin(None, state, None, model=module)
            with _autocast(target):
                loss, _, _ = composed_loss(
                    model, inputs, [technique], config=module.config, example_index=None, num_items_in_batch=None,
                    num_processes=1, label_smoothing=0.0,
                )  # fmt: skip
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            technique.on_step_end(None, state, None, model=module)

        return step

    return make_step


def benchmark_training_steps(plan: TimingPlan) -> list[StepResult]:
    """Median training-step time of dense ViT and every TriLevel setting; the first result is the dense model."""
    pixel_values, labels = random_batch(plan)
    step = _training_step(plan.target, pixel_values, labels)
    dense_sparse = dense_sparse_step(plan.target, pixel_values, labels)
    measurements = measure_settings(
        plan, step, training=True, pixel_values=pixel_values, make_setting_call=dense_sparse
    )
    return [
        StepResult(
            setting=m.name,
            token_keep_rate=m.setting.token_keep_rate,
            attention_keep_rate=m.setting.attention_keep_rate,
            token_fusion=m.setting.token_fusion,
            median_seconds=m.median_seconds,
            steps_per_second=1 / m.median_seconds,
            speedup=m.speedup,
            flops_limit=m.flops_limit,
            fraction_of_limit=m.fraction_of_limit,
            train_gflops_per_image=3 * m.gflops_per_image,
            peak_memory_bytes=m.peak_memory_bytes,
            seconds=m.seconds,
            token_selector=m.setting.token_selector,
            token_keep_mass=m.setting.token_keep_mass,
            mean_kept_tokens=list(m.flops.mean_kept_tokens) if m.flops else None,
            token_merge_r=m.setting.token_merge_r,
            **_dense_sparse_fields(m.setting),
        )
        for m in measurements
    ]


def _dense_sparse_fields(setting: Setting) -> dict:
    if setting.dense_sparse_keep_rates is None:
        return {}
    return {
        "dense_sparse_keep_rates": list(setting.dense_sparse_keep_rates),
        "dense_sparse_schedule": setting.dense_sparse_schedule,
        "distillation": setting.distillation,
    }


def project_epochs(
    steps: list[StepResult], example_keep_fractions: list[float], dataset_size: int, batch_size: int
) -> list[EpochProjection]:
    """Epoch time for every (token setting, kept fraction), against dense ViT on all the data.

    Kept examples are counted as `ForgettingPolicy` keeps them; the FLOPs limit compares the same step counts as the
    speedup (dense steps x dense step FLOPs over kept steps x sparse step FLOPs), so rounding hits both alike.
    """
    dense_steps = math.ceil(dataset_size / batch_size)
    dense_epoch = dense_steps * steps[0].median_seconds
    projections = []
    for step in steps:
        for fraction in example_keep_fractions:
            kept = dataset_size if fraction == 1.0 else ForgettingPolicy(keep_fraction=fraction).num_kept(dataset_size)
            num_steps = math.ceil(kept / batch_size)
            seconds = num_steps * step.median_seconds
            limit = step.flops_limit * dense_steps / num_steps
            speedup = dense_epoch / seconds
            projections.append(
                EpochProjection(step.setting, fraction, num_steps, seconds, speedup, limit, speedup / limit)
            )
    return projections


def format_steps(results: list[StepResult]) -> str:
    return markdown_table(
        [
            {
                "setting": r.setting,
                "ms / step": f"{r.median_seconds * 1e3:.1f}",
                "steps/s": f"{r.steps_per_second:.2f}",
                "speedup": f"{r.speedup:.2f}x",
                "FLOPs limit": f"{r.flops_limit:.2f}x",
                "of limit": f"{r.fraction_of_limit:.0%}",
                "patch tokens kept": " / ".join(f"{mean:.4g}" for mean in r.mean_kept_tokens or []),
                "peak MiB": mib(r.peak_memory_bytes),
            }
            for r in results
        ]
    )


def format_epochs(projections: list[EpochProjection]) -> str:
    return markdown_table(
        [
            {
                "setting": p.setting,
                "examples kept": f"{p.example_keep_fraction:.0%}",
                "steps / epoch": f"{p.steps_per_epoch:,}",
                "epoch time": format_duration(p.epoch_seconds),
                "speedup": f"{p.speedup:.2f}x",
                "FLOPs limit": f"{p.flops_limit:.2f}x",
                "of limit": f"{p.fraction_of_limit:.0%}",
            }
            for p in projections
        ]
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_shape_arguments(parser)
    add_setting_arguments(parser, keep_rates=[1.0, 0.7, 0.5], attention=[1.0])
    add_target_arguments(parser, batch_size=64)
    group = parser.add_argument_group("epoch projection")
    group.add_argument("--example-keep-fractions", type=float, nargs="+", default=[1.0, 0.8], metavar="FRACTION",
                       help="share of the data each epoch trains on after example pruning, each in (0, 1]")  # fmt: skip
    group.add_argument("--dataset-size", type=int, default=IMAGENET_TRAIN_IMAGES, help="training images per epoch")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    group = parser.add_argument_group("dense/sparse training (one checkpoint for several keep rates)")
    group.add_argument("--dense-sparse-keep-rates", type=float, nargs="+", default=None, metavar="RATE",
                       help="also time DenseSparseTraining steps at these token keep rates (at least two, each in "
                            "(0, 1]): the densest pass and the sparse passes of one step")  # fmt: skip
    group.add_argument("--distillation", choices=["none", "self"], default=None,
                       help="distillation of the dense/sparse rows (default: self)")  # fmt: skip
    group.add_argument("--dense-sparse-schedule", choices=list(SCHEDULES), default=None,
                       help="sparse passes per step of the dense/sparse rows (default: dense_and_one)")  # fmt: skip
    # Imported here so the time-to-accuracy options sit in the same `--help`.
    from .time_to_accuracy import add_time_to_accuracy_arguments

    add_time_to_accuracy_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.time_to_accuracy:
        if args.dense_sparse_keep_rates is not None:
            raise CommandError(
                "--dense-sparse-keep-rates times training steps; it does not apply to --time-to-accuracy."
            )
        if any(args.token_merge_r):
            raise CommandError("--token-merge-r times training steps; it does not apply to --time-to-accuracy.")
        from .time_to_accuracy import run_time_to_accuracy

        return run_time_to_accuracy(args)
    plan = timing_plan(args, "bench train")
    plan = dataclasses.replace(plan, settings=plan.settings + dense_sparse_settings(args, plan.settings))
    check_example_keep_fractions(args.example_keep_fractions)
    checked_option(check_int, "--dataset-size", args.dataset_size)
    check_writable(args.json)
    steps = benchmark_training_steps(plan)
    projections = project_epochs(steps, args.example_keep_fractions, args.dataset_size, args.batch_size)
    print(
        f"{plan.shape.name}: training steps (forward + backward + AdamW), {plan.target.device.type} {args.dtype}"
        f"{' autocast' if plan.target.dtype != torch.float32 else ''}, {plan.target.attn_implementation}, batch "
        f"{args.batch_size}, median of {args.repeats} interleaved rounds; {weights_note(plan.shape)}"
    )
    print(format_steps(steps))
    print(f"\nepoch of {args.dataset_size:,} images at batch {args.batch_size}:")
    print(format_epochs(projections))
    if args.json:
        payload = report_payload("train", args, plan.target.device, shape=asdict(plan.shape))
        results = {"steps": [asdict(r) for r in steps], "epochs": [asdict(p) for p in projections]}
        write_report(args.json, payload | results)
    return 0
