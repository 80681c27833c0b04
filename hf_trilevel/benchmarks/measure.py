"""The one measurement loop behind `bench inference` and `bench train`: dense ViT against each TriLevel setting.

Dense `ViTForImageClassification` and the TriLevel model hold the same weights (`build_models`) and run the same
call on the same batch; only what that call is differs (a forward, or a training step). Each TriLevel setting is
switched on untimed just before its timed call, every setting is timed once per round, and the rounds are
interleaved (`timing.interleaved_times`), so drift of the machine's speed hits all settings alike. Medians over the
rounds are reported beside the FLOPs limit of each setting, and one untimed pass records the peak extra memory.
"""

import argparse
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..configuration_trilevel_vit import TriLevelViTConfig
from ..flops import flops_speedup_limit
from .options import (
    DENSE_NAME,
    ModelShape,
    RunTarget,
    Setting,
    build_models,
    compile_models,
    model_shape,
    run_target,
    settings,
    switch_setting,
    trilevel_config,
)
from .timing import interleaved_times, peak_memories, print_progress

# (model to call, possibly compiled; the module itself, for its parameters) -> one timed call
CallFactory = Callable[[Callable, torch.nn.Module], Callable[[], None]]


@dataclass(frozen=True)
class TimingPlan:
    """What one benchmark measures and how: checked once (`timing_plan`), before any model is built."""

    shape: ModelShape
    settings: list[Setting]
    target: RunTarget
    batch_size: int
    repeats: int = 9
    warmup: int = 2
    progress: Callable[[int, int], None] | None = None
    measure_memory: bool = True


def timing_plan(args: argparse.Namespace, label: str) -> TimingPlan:
    """The plan a `bench` command's arguments ask for; `label` names the command on the progress line."""
    shape = model_shape(args)
    trilevel_settings = settings(args)
    target = run_target(args, trilevel_settings)
    progress = None if args.no_progress else print_progress(label)
    return TimingPlan(
        shape, trilevel_settings, target, args.batch_size, args.repeats, args.warmup, progress, not args.no_memory
    )


@dataclass(frozen=True)
class Measurement:
    """One setting's timed calls and what follows from them; the dense model is measured as `Setting()`."""

    name: str
    setting: Setting
    config: TriLevelViTConfig
    seconds: list[float]
    median_seconds: float
    speedup: float
    flops_limit: float
    peak_memory_bytes: int | None

    @property
    def fraction_of_limit(self) -> float:
        """How much of the FLOPs limit the measured speedup reaches."""
        return self.speedup / self.flops_limit


def measure_settings(plan: TimingPlan, make_call: CallFactory, *, training: bool) -> list[Measurement]:
    """Time dense ViT and every TriLevel setting in interleaved rounds; the first measurement is the dense model.

    `make_call(model, module)` is called once per model and returns the call to time; every TriLevel setting times
    the same call (one model, one optimizer state), switched to its setting untimed. With `training`, weights stay
    in float32 (mixed precision is the call's autocast) and both models are in train mode; otherwise weights are
    cast to the target dtype and the models are in eval mode.
    """
    shape, trilevel_settings, target = plan.shape, plan.settings, plan.target
    dense, trilevel = build_models(shape, target, cast_weights=not training)
    dense.train(training)
    trilevel.train(training)
    dense_model, trilevel_model = compile_models(target, len(trilevel_settings), dense, trilevel)
    dense_call, trilevel_call = make_call(dense_model, dense), make_call(trilevel_model, trilevel)

    runs = {DENSE_NAME: dense_call} | {setting.name: trilevel_call for setting in trilevel_settings}
    prepare = {setting.name: switch_setting(trilevel, setting) for setting in trilevel_settings}
    times = interleaved_times(runs, plan.repeats, plan.warmup, target.device, plan.progress, prepare)
    # The CPU tracker is a dispatch mode, which compiled graphs bypass: no figure rather than a wrong one.
    memory = peak_memories(runs, target.device, prepare, skip=not plan.measure_memory or target.compiled_on_cpu)

    dense_median = statistics.median(times[DENSE_NAME])
    measurements = []
    for name, setting in [(DENSE_NAME, Setting()), *((s.name, s) for s in trilevel_settings)]:
        config = trilevel_config(shape, setting)
        median = statistics.median(times[name])
        measurements.append(
            Measurement(
                name=name,
                setting=setting,
                config=config,
                seconds=times[name],
                median_seconds=median,
                speedup=dense_median / median,
                flops_limit=flops_speedup_limit(config),
                peak_memory_bytes=memory[name],
            )
        )
    return measurements


def random_batch(plan: TimingPlan, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random batch of images and labels, the same for every model and setting of a benchmark."""
    shape, generator = plan.shape, torch.Generator().manual_seed(0)
    pixel_values = torch.randn(plan.batch_size, 3, shape.image_size, shape.image_size, generator=generator)
    labels = torch.randint(0, shape.num_labels, (plan.batch_size,), generator=generator)
    return pixel_values.to(plan.target.device, dtype), labels.to(plan.target.device)
