"""`hf-trilevel bench inference`: images/s of TriLevel operating points against dense transformers ViT.

    hf-trilevel bench inference --preset deit-tiny --batch-size 32 --keep-rates 1 0.7 0.5 --attention-keep-rates 1 0.3
    hf-trilevel bench inference --preset deit-small --device cuda --dtype bfloat16 --batch-size 256
    hf-trilevel bench inference --keep-rates 0.7 0.5 --attention-keep-rates 1 --token-selector class_attention \
        adaptive --match-fixed-rate --model path/to/trained_folder
    hf-trilevel bench inference --preset deit-small --keep-rates 1 --attention-keep-rates 1 --token-merge-r 0 8 13
    hf-trilevel bench inference --runtime onnxruntime --batch-size 1 --keep-rates 1 0.7 0.5 --attention-keep-rates 1

Both models hold the same weights and see the same batch. Every setting is timed once per round and the rounds are
interleaved, so drift in machine speed hits all settings alike; medians over rounds are reported. Each row shows the
measured speedup over the dense model beside the FLOPs limit (`hf_trilevel.evaluation.flops`), the share of that limit
reached,
and the peak extra memory of one forward. Rows with attention sparsity also show its cost over the same token
schedule with dense attention.

Token selectors (`--token-selector`): each gets its own TriLevel model with the same weights. Every row reports the
patch tokens kept after each pruning layer, measured on the benchmark batch (mean over its images), and its FLOPs
limit from those counts. Adaptive rows run at each `--token-keep-mass`, or, with `--match-fixed-rate`, at the mass
calibrated by bisection so that their mean count after the last pruning layer equals fixed-rate pruning's at the
same keep rate; they also show the share of that fixed-rate row's speedup they reach.

Token merging (`--token-merge-r`, ToMe): each value is a row (with every keep rate, fusion and fixed-count selector)
whose every layer merges that many patch tokens into their most similar partners; its FLOPs limit counts the
merged widths and the matching. Merging needs `--attention-keep-rates 1` and a fixed-count selector, and each layer
must have at least `2 r` patch tokens at the row's keep rate; other combinations are refused before any model is
built.

Runtimes (`--runtime`): PyTorch itself (eager, or `--compile`), or onnxruntime on the CPU, where every row,
dense ViT included, is exported to its own ONNX graph, checked against PyTorch's logits, and timed in an onnxruntime
session (`onnx_runs.py`); ratios are then against the exported dense ViT, and no memory figure is taken.

Physically slimmed shapes (`--head-densities`, `--neuron-densities`): the shape a model trained with structured
sparsity has after `hf_trilevel.slim`, every layer keeping `max(1, round(density * size))` heads and MLP neurons.
The i-th values of the two lists make one shape (a single value applies to every shape); each shape is its own
model, and every TriLevel setting is timed on every shape. Rows show the heads and neurons kept per layer, and their
FLOPs limit is against the full-width dense ViT.

    hf-trilevel bench inference --preset deit-small --keep-rates 1 --attention-keep-rates 1 \
        --head-densities 1 0.7 0.5 --neuron-densities 1 0.7 0.5
"""

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from ...evaluation.formatting import markdown_table
from ...evaluation.patches import num_patches
from .families import FAMILIES
from .measure import Measurement, TimingPlan, measure_settings, random_batch, timing_plan, weights_note
from .models import trilevel_config
from .onnx_runs import onnx_versions
from .options import RunTarget, add_shape_arguments, add_target_arguments
from .report import check_writable, mib, report_payload, write_report
from .settings import Setting, add_setting_arguments
from .slimmed_shapes import add_slimming_arguments


@dataclass
class InferenceResult:
    """One row: a setting's median forward time and what follows from it."""

    setting: str
    token_keep_rate: float
    attention_keep_rate: float
    token_fusion: bool
    median_seconds: float
    images_per_second: float
    speedup: float
    flops_limit: float
    fraction_of_limit: float
    gflops_per_image: float
    peak_memory_bytes: int | None
    attention_overhead: float | None = None  # time over the same token schedule with dense attention, minus 1
    seconds: list[float] | None = None
    token_selector: str = "class_attention"
    token_keep_mass: float = 1.0
    matched_keep_rate: float | None = None  # --match-fixed-rate: the fixed keep rate whose mean count was matched
    mean_kept_tokens: list[float] | None = None  # per pruning layer, mean over the batch's images
    min_kept_tokens: list[int] | None = None
    max_kept_tokens: list[int] | None = None
    target_kept_tokens: float | None = None  # --match-fixed-rate: the count after the last pruning layer aimed at
    fixed_rate_speedup_share: float | None = None  # adaptive: speedup over the fixed-rate row's at the same budget
    head_density: float = 1.0
    neuron_density: float = 1.0
    heads_per_layer: list[int] | None = None  # attention heads each layer of the timed model has
    intermediate_size_per_layer: list[int] | None = None  # MLP neurons each layer of the timed model has
    token_merge_r: int = 0  # patch tokens every layer merges away (token merging)


def benchmark_inference(plan: TimingPlan) -> list[InferenceResult]:
    """Time dense ViT and every TriLevel setting in interleaved rounds; the first result is the dense model."""
    pixel_values, _ = random_batch(plan, plan.target.dtype)

    def forward(model: Callable, module: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                model(pixel_values)

        return run

    measurements = measure_settings(plan, forward, training=False, pixel_values=pixel_values)
    results = [_result(m, plan.batch_size) for m in measurements]
    _add_attention_overheads(results, [m.setting for m in measurements[1:]])
    _add_fixed_rate_shares(results, [m.setting for m in measurements[1:]])
    return results


def _result(m: Measurement, batch_size: int) -> InferenceResult:
    counts = m.flops
    return InferenceResult(
        setting=m.name,
        token_keep_rate=m.setting.token_keep_rate,
        attention_keep_rate=m.setting.attention_keep_rate,
        token_fusion=m.setting.token_fusion,
        median_seconds=m.median_seconds,
        images_per_second=batch_size / m.median_seconds,
        speedup=m.speedup,
        flops_limit=m.flops_limit,
        fraction_of_limit=m.fraction_of_limit,
        gflops_per_image=m.gflops_per_image,
        peak_memory_bytes=m.peak_memory_bytes,
        seconds=m.seconds,
        token_selector=m.setting.token_selector,
        token_keep_mass=m.setting.token_keep_mass,
        matched_keep_rate=m.setting.matched_keep_rate,
        mean_kept_tokens=list(counts.mean_kept_tokens) if counts else None,
        min_kept_tokens=list(counts.min_kept_tokens) if counts else None,
        max_kept_tokens=list(counts.max_kept_tokens) if counts else None,
        target_kept_tokens=m.calibration.target_kept_tokens if m.calibration else None,
        head_density=m.setting.head_density,
        neuron_density=m.setting.neuron_density,
        heads_per_layer=[m.config.layer_num_attention_heads(i) for i in range(m.config.num_hidden_layers)],
        intermediate_size_per_layer=[m.config.layer_intermediate_size(i) for i in range(m.config.num_hidden_layers)],
        token_merge_r=m.setting.token_merge_r,
    )


def _add_attention_overheads(results: list[InferenceResult], trilevel_settings: list[Setting]) -> None:
    by_name = {result.setting: result for result in results}
    for setting in trilevel_settings:
        base = dataclasses.replace(setting, attention_keep_rate=1.0)
        if setting.attention_keep_rate < 1.0 and base.name in by_name:
            by_name[setting.name].attention_overhead = (
                by_name[setting.name].median_seconds / by_name[base.name].median_seconds - 1
            )


def _add_fixed_rate_shares(results: list[InferenceResult], trilevel_settings: list[Setting]) -> None:
    """Each adaptive row's speedup as a share of its fixed-rate twin's (`Setting.fixed_rate_twin`), when measured."""
    by_name = {result.setting: result for result in results}
    for setting in trilevel_settings:
        twin = setting.fixed_rate_twin().name
        if setting.token_selector == "adaptive" and twin in by_name:
            by_name[setting.name].fixed_rate_speedup_share = by_name[setting.name].speedup / by_name[twin].speedup


def format_kept_tokens(result: InferenceResult) -> str:
    """Mean patch tokens after each pruning layer ("139 / 98 / 69"); per-image counts add the last layer's range."""
    if result.mean_kept_tokens is None:
        return ""
    text = " / ".join(f"{mean:.4g}" for mean in result.mean_kept_tokens)
    if result.min_kept_tokens and result.min_kept_tokens[-1] != result.max_kept_tokens[-1]:
        text += f" ({result.min_kept_tokens[-1]}-{result.max_kept_tokens[-1]})"
    return text


def format_kept_units(result: InferenceResult, dense: InferenceResult) -> str:
    """`2 of 3 heads, 384 of 768 neurons` per layer; per-layer lists when the layers differ."""
    parts = []
    for kept, full, unit in (
        (result.heads_per_layer, dense.heads_per_layer[0], "heads"),
        (result.intermediate_size_per_layer, dense.intermediate_size_per_layer[0], "neurons"),
    ):
        count = str(kept[0]) if len(set(kept)) == 1 else str(kept)
        parts.append(f"{count} of {full} {unit}")
    return ", ".join(parts)


def format_results(results: list[InferenceResult]) -> str:
    adaptive = any(r.token_selector == "adaptive" for r in results)
    slimmed = any(r.head_density < 1.0 or r.neuron_density < 1.0 for r in results)
    rows = []
    for r in results:
        overhead = "" if r.attention_overhead is None else f"{r.attention_overhead:+.1%}"
        row = {
            "setting": r.setting,
            "ms / batch": f"{r.median_seconds * 1e3:.1f}",
            "images/s": f"{r.images_per_second:.1f}",
            "speedup": f"{r.speedup:.2f}x",
            "FLOPs limit": f"{r.flops_limit:.2f}x",
            "of limit": f"{r.fraction_of_limit:.0%}",
            "GFLOPs/image": f"{r.gflops_per_image:.2f}",
            "patch tokens kept": format_kept_tokens(r),
            **({"per layer": format_kept_units(r, results[0])} if slimmed else {}),
            "peak MiB": mib(r.peak_memory_bytes),
            "sparse-attention cost": overhead,
        }
        if adaptive:
            is_adaptive = r.token_selector == "adaptive"
            share = r.fixed_rate_speedup_share
            row["mass"] = f"{r.token_keep_mass:.3g}" if is_adaptive else ""
            row["of fixed-rate speedup"] = "" if share is None else f"{share:.0%}"
        rows.append(row)
    return markdown_table(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_shape_arguments(parser)
    parser.add_argument("--family", default="vit", metavar="FAMILY",
                        help=f"model family: {', '.join(FAMILIES)} (dense: transformers' "
                             f"{', '.join(f.dense_name for f in FAMILIES.values())})")  # fmt: skip
    add_setting_arguments(parser, keep_rates=[1.0, 0.7, 0.5], attention=[1.0, 0.3])
    add_slimming_arguments(parser)
    group = parser.add_argument_group("equal token budget (adaptive against fixed rate)")
    group.add_argument("--match-fixed-rate", action="store_true",
                       help="calibrate each adaptive row's token_keep_mass by bisection on the benchmark batch so "
                            "that its mean kept count after the last pruning layer equals fixed-rate pruning's at "
                            "the same keep rate")  # fmt: skip
    group.add_argument("--match-max-keep-rate", type=float, default=None, metavar="RATE",
                       help="token_keep_rate of matched adaptive rows (per-image upper bound), in (0, 1]; "
                            "default 1.0")  # fmt: skip
    add_target_arguments(parser, batch_size=32)
    parser.add_argument("--runtime", choices=["pytorch", "onnxruntime"], default="pytorch",
                        help="pytorch: the models themselves (eager, or --compile); onnxruntime: each row exported to "
                             "ONNX (checked against PyTorch) and timed in onnxruntime on the CPU, dense being the "
                             "exported transformers ViT (needs hf-trilevel[onnx])")  # fmt: skip
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")


def runtime_text(target: RunTarget) -> str:
    """What runs the rows, for the line above the table: "sdpa", "sdpa, compiled" or "onnxruntime, 2 threads (sdpa
    export)"."""
    if target.runtime == "onnxruntime":
        return f"onnxruntime, {torch.get_num_threads()} threads ({target.attn_implementation} export)"
    return f"{target.attn_implementation}{', compiled' if target.compile else ''}"


def run(args: argparse.Namespace) -> int:
    plan = timing_plan(args, "bench inference")
    check_writable(args.json)
    results = benchmark_inference(plan)
    shape, target = plan.shape, plan.target
    print(
        f"{shape.name}, {FAMILIES[shape.family].dense_name} against TriLevel: {shape.num_hidden_layers} layers, "
        f"hidden {shape.hidden_size}, "
        f"{num_patches(shape.image_size, shape.patch_size)} patches, pruning at "
        f"{trilevel_config(shape).token_prune_layers}; {target.device.type} {args.dtype}, "
        f"{runtime_text(target)}, batch {args.batch_size}, "
        f"median of {args.repeats} interleaved rounds; {weights_note(shape)}"
    )
    print(format_results(results))
    if args.json:
        payload = report_payload("inference", args, target.device, shape=asdict(shape))
        if target.runtime == "onnxruntime":
            payload["environment"] |= onnx_versions()
        write_report(args.json, payload | {"results": [asdict(r) for r in results]})
    return 0
