"""The one measurement loop behind `bench inference` and `bench train`: dense ViT against each TriLevel setting.

Dense `ViTForImageClassification` and the TriLevel models (one per token selector) hold the same weights
(`build_models_by_selector`) and run the same call on the same batch; only what that call is differs (a forward, or
a training step). Each TriLevel setting is switched on untimed just before its timed call, every setting is timed
once per round, and the rounds are interleaved (`timing.interleaved_times`), so drift of the machine's speed hits
all settings alike. Medians over the rounds are reported beside the FLOPs limit of each setting, computed from the
tokens each image kept on the benchmark batch, and one untimed pass records the peak extra memory.

A slimmed shape (`Setting.head_density` / `neuron_density`) runs on its own model, cut from its selector's
(`models.slimmed_model`); its FLOPs limit is against the full-width dense ViT, so it counts the removed heads and
neurons as well as the dropped tokens.
"""

import argparse
import copy
import dataclasses
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ...evaluation.flops import MeasuredFlops, flops_speedup_limit, forward_flops, measured_flops
from ...evaluation.patches import num_patches
from ...evaluation.timing import interleaved_times
from ...modeling.configuration_trilevel_vit import TriLevelViTConfig
from ...modeling.token_reduction import token_schedule
from ...token_training.dense_sparse import operating_point
from .families import FAMILIES
from .models import (
    build_models_by_selector,
    check_setting_configs,
    compile_models,
    slimmed_model,
    switch_setting,
    trilevel_config,
)
from .onnx_runs import onnx_work_dir, onnxruntime_runs
from .options import ModelShape, RunTarget, model_shape, run_target
from .settings import DENSE_NAME, Setting, selector_config, settings
from .timing import peak_memories, print_progress
from .token_budget import Calibration, calibrate_keep_mass, kept_token_counts

# (model to call, possibly compiled; the module itself, for its parameters) -> one timed call
CallFactory = Callable[[Callable, torch.nn.Module], Callable[[], None]]
# The same for one setting whose call differs from its selector's (a dense/sparse training step).
SettingCallFactory = Callable[[Callable, torch.nn.Module, Setting], Callable[[], None]]


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
    config_extra: dict = field(default_factory=dict)  # config fields shared by every TriLevel model (buckets)

    @property
    def selectors(self) -> list[str]:
        """The token selectors the settings use, in order of first use: one full-width TriLevel model each."""
        return list(dict.fromkeys(setting.token_selector for setting in self.settings))

    @property
    def model_keys(self) -> list[tuple[str, float, float]]:
        """`Setting.model_key` of each model the settings run on (selector, slimmed shape), in order of first use."""
        return list(dict.fromkeys(setting.model_key for setting in self.settings))


def timing_plan(args: argparse.Namespace, label: str) -> TimingPlan:
    """The plan a `bench` command's arguments ask for; `label` names the command on the progress line."""
    shape = model_shape(args)
    trilevel_settings = settings(args)
    check_setting_configs(shape, trilevel_settings)
    target = run_target(args, trilevel_settings)
    progress = None if args.no_progress else print_progress(label)
    return TimingPlan(
        shape,
        trilevel_settings,
        target,
        args.batch_size,
        args.repeats,
        args.warmup,
        progress,
        not args.no_memory,
        selector_config(args),
    )


@dataclass(frozen=True)
class Measurement:
    """One setting's timed calls and what follows from them; the dense model is measured as `Setting()`.

    `flops` holds the FLOPs and kept-token counts measured on the benchmark batch (None for the dense model), and
    `calibration` the mass search of a `--match-fixed-rate` row.
    """

    name: str
    setting: Setting
    config: TriLevelViTConfig
    seconds: list[float]
    median_seconds: float
    speedup: float
    flops_limit: float
    peak_memory_bytes: int | None
    flops: MeasuredFlops | None = None
    calibration: Calibration | None = None

    @property
    def fraction_of_limit(self) -> float:
        """How much of the FLOPs limit the measured speedup reaches."""
        return self.speedup / self.flops_limit

    @property
    def gflops_per_image(self) -> float:
        """Forward GFLOPs per image: measured counts for TriLevel rows, the config's for the dense model."""
        return (self.flops.flops_per_image if self.flops is not None else forward_flops(self.config)) / 1e9


def measure_settings(
    plan: TimingPlan,
    make_call: CallFactory,
    *,
    training: bool,
    pixel_values: torch.Tensor,
    make_setting_call: SettingCallFactory | None = None,
) -> list[Measurement]:
    """Time dense ViT and every TriLevel setting in interleaved rounds; the first measurement is the dense model.

    `make_call(model, module)` is called once per model and returns the call to time; every setting of one model
    times the same call (one model, one optimizer state), switched to its setting untimed. Each selector has its own
    model with the same weights, and each slimmed shape of it its own model with the kept part of them. With
    `training`, weights stay in float32 (mixed precision is the call's autocast) and the models are in train mode;
    otherwise weights are cast to the target dtype and the models are in eval mode.

    Before timing, one untimed forward per setting on `pixel_values` (the benchmark batch) records the tokens each
    image kept; the FLOPs limit comes from those counts (`flops.measured_flops`), so per-image adaptive counts are
    counted as they fell. `--match-fixed-rate` rows are calibrated on the same batch first.

    A dense/sparse row (`setting.dense_sparse_keep_rates`) times `make_setting_call(model, module, setting)`, its own
    call on its selector's model, and its FLOPs are those of every forward one of its steps runs (`step_flops`).
    """
    shape, target = plan.shape, plan.target
    dense, trilevel = build_models_by_selector(
        shape, target, plan.selectors, cast_weights=not training, **plan.config_extra
    )
    models = {(selector, 1.0, 1.0): model for selector, model in trilevel.items()}
    for selector, heads, neurons in plan.model_keys:
        if (selector, heads, neurons) not in models:
            models[selector, heads, neurons] = slimmed_model(trilevel[selector], heads, neurons)
    models = {key: models[key] for key in plan.model_keys}  # full-width models no setting uses are not timed
    for model in (dense, *models.values()):
        model.train(training)
    compiled_models = compile_models(target, len(plan.settings), dense, *models.values())
    dense_call = make_call(compiled_models[0], dense)
    compiled = dict(zip(models, compiled_models[1:], strict=True))
    calls = {key: make_call(compiled[key], model) for key, model in models.items()}

    trilevel_settings, calibrations = calibrate_matched_settings(plan, models, pixel_values)
    prepare = {s.name: switch_setting(models[s.model_key], s) for s in trilevel_settings}
    runs = {DENSE_NAME: dense_call}
    for setting in trilevel_settings:
        if setting.dense_sparse_keep_rates is None:
            runs[setting.name] = calls[setting.model_key]
            continue
        if make_setting_call is None:
            raise ValueError(f"setting {setting.name!r} is a dense/sparse training row: pass `make_setting_call`.")
        prepare[setting.name]()
        runs[setting.name] = make_setting_call(compiled[setting.model_key], models[setting.model_key], setting)
    if target.runtime == "onnxruntime":  # every row its own exported graph, checked against PyTorch, then timed
        with onnx_work_dir() as work_dir:  # the sessions hold their graphs: the files can go once they are built
            runs = onnxruntime_runs(dense, models, trilevel_settings, prepare, pixel_values, work_dir)
    counted = {}
    full_dense_flops = forward_flops(trilevel_config(shape))  # every token kept, dense attention, full widths
    for setting in trilevel_settings:
        model = models[setting.model_key]
        prepare[setting.name]()
        config = copy.deepcopy(model.config)
        if setting.dense_sparse_keep_rates is None:
            flops = measured_flops(config, kept_token_counts(model, pixel_values))
        else:
            flops = step_flops(model, setting, pixel_values)
        # `measured_flops` counts against dense at the model's own widths; a slimmed row is against the full ViT.
        counted[setting.name] = (config, dataclasses.replace(flops, dense_flops_per_image=full_dense_flops))

    times = interleaved_times(runs, plan.repeats, plan.warmup, target.device, plan.progress, prepare)
    # No figure rather than a wrong one where the tracker cannot see the allocations (`RunTarget.tracks_memory`).
    memory = peak_memories(runs, target.device, prepare, skip=not plan.measure_memory or not target.tracks_memory)

    dense_median = statistics.median(times[DENSE_NAME])
    dense_config = trilevel_config(shape)
    measurements = [
        Measurement(
            FAMILIES[shape.family].dense_row, Setting(), dense_config, times[DENSE_NAME], dense_median, 1.0,
            flops_speedup_limit(dense_config), memory[DENSE_NAME],
        )
    ]  # fmt: skip
    for setting in trilevel_settings:
        config, flops = counted[setting.name]
        median = statistics.median(times[setting.name])
        measurements.append(
            Measurement(
                name=setting.name,
                setting=setting,
                config=config,
                seconds=times[setting.name],
                median_seconds=median,
                speedup=dense_median / median,
                flops_limit=flops.speedup_limit,
                peak_memory_bytes=memory[setting.name],
                flops=flops,
                calibration=calibrations.get(setting.name),
            )
        )
    return measurements


def step_flops(model: torch.nn.Module, setting: Setting, pixel_values: torch.Tensor) -> MeasuredFlops:
    """Forward FLOPs per image of one dense/sparse training step, against one dense forward.

    The step runs its densest rate's pass and then, with `"dense_and_one"`, one sparse rate in turn (counted as
    their mean) or, with `"every_rate"`, every sparse rate; each pass at its operating point
    (`hf_trilevel.token_training.dense_sparse.operating_point`). Kept-token counts are the densest pass's.
    """
    passes = []
    for rate in setting.dense_sparse_keep_rates:
        with model.keep_rates(*operating_point(model.config, rate)):
            config = copy.deepcopy(model.config)
            passes.append(measured_flops(config, kept_token_counts(model, pixel_values)))
    main, sparse = passes[0], [flops.flops_per_image for flops in passes[1:]]
    extra = sum(sparse) if setting.dense_sparse_schedule == "every_rate" else statistics.mean(sparse)
    return dataclasses.replace(main, flops_per_image=main.flops_per_image + extra)


def calibrate_matched_settings(
    plan: TimingPlan, models: dict, pixel_values: torch.Tensor
) -> tuple[list[Setting], dict[str, Calibration]]:
    """The plan's settings with every `--match-fixed-rate` row's mass calibrated on the benchmark batch.

    The target is the fixed-rate schedule's count after the last pruning layer at the row's matched keep rate
    (`token_schedule`), which is what a class-attention or learned model keeps in every image.
    """
    calibrated, calibrations = [], {}
    patches = num_patches(plan.shape.image_size, plan.shape.patch_size)
    for setting in plan.settings:
        if setting.matched_keep_rate is None:
            calibrated.append(setting)
            continue
        model = models[setting.model_key]
        switch_setting(model, setting)()
        layers = len(model.config.token_prune_layers)
        target = token_schedule(patches, setting.matched_keep_rate, layers)[-1] if layers else patches
        calibration = calibrate_keep_mass(model, pixel_values, float(target))
        setting = dataclasses.replace(setting, token_keep_mass=calibration.token_keep_mass)
        calibrated.append(setting)
        calibrations[setting.name] = calibration
    return calibrated, calibrations


def weights_note(shape: ModelShape) -> str:
    """Where the weights came from, for the line above a table: random ones make class attention nearly uniform."""
    return f"weights from {shape.checkpoint}" if shape.checkpoint else "random weights (seed 0)"


def random_batch(plan: TimingPlan, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random batch of images and labels, the same for every model and setting of a benchmark."""
    shape, generator = plan.shape, torch.Generator().manual_seed(0)
    pixel_values = torch.randn(plan.batch_size, 3, shape.image_size, shape.image_size, generator=generator)
    labels = torch.randint(0, shape.num_labels, (plan.batch_size,), generator=generator)
    return pixel_values.to(plan.target.device, dtype), labels.to(plan.target.device)
