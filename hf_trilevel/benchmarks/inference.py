"""`hf-trilevel bench inference`: images/s of TriLevel operating points against dense transformers ViT.

    hf-trilevel bench inference --preset deit-tiny --batch-size 32 --keep-rates 1 0.7 0.5 --attention-keep-rates 1 0.3
    hf-trilevel bench inference --preset deit-small --device cuda --dtype bfloat16 --batch-size 256

Both models hold the same weights and see the same batch. Every setting is timed once per round and the rounds are
interleaved, so drift in machine speed hits all settings alike; medians over rounds are reported. Each row shows the
measured speedup over the dense model beside the FLOPs limit (`hf_trilevel.flops`), the share of that limit reached,
and the peak extra memory of one forward. Rows with attention sparsity also show its cost over the same token
schedule with dense attention.
"""

import argparse
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from ..flops import forward_flops
from ..value_checks import num_patches
from .measure import TimingPlan, measure_settings, random_batch, timing_plan
from .options import Setting, add_setting_arguments, add_shape_arguments, add_target_arguments, trilevel_config
from .report import check_writable, markdown_table, mib, report_payload, write_report


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


def benchmark_inference(plan: TimingPlan) -> list[InferenceResult]:
    """Time dense ViT and every TriLevel setting in interleaved rounds; the first result is the dense model."""
    pixel_values, _ = random_batch(plan, plan.target.dtype)

    def forward(model: Callable, module: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                model(pixel_values)

        return run

    measurements = measure_settings(plan, forward, training=False)
    results = [
        InferenceResult(
            setting=m.name,
            **asdict(m.setting),
            median_seconds=m.median_seconds,
            images_per_second=plan.batch_size / m.median_seconds,
            speedup=m.speedup,
            flops_limit=m.flops_limit,
            fraction_of_limit=m.fraction_of_limit,
            gflops_per_image=forward_flops(m.config) / 1e9,
            peak_memory_bytes=m.peak_memory_bytes,
            seconds=m.seconds,
        )
        for m in measurements
    ]
    _add_attention_overheads(results, plan.settings)
    return results


def _add_attention_overheads(results: list[InferenceResult], trilevel_settings: list[Setting]) -> None:
    by_name = {result.setting: result for result in results}
    for setting in trilevel_settings:
        base = Setting(setting.token_keep_rate, 1.0, setting.token_fusion)
        if setting.attention_keep_rate < 1.0 and base.name in by_name:
            by_name[setting.name].attention_overhead = (
                by_name[setting.name].median_seconds / by_name[base.name].median_seconds - 1
            )


def format_results(results: list[InferenceResult]) -> str:
    rows = []
    for r in results:
        overhead = "" if r.attention_overhead is None else f"{r.attention_overhead:+.1%}"
        rows.append(
            {
                "setting": r.setting,
                "ms / batch": f"{r.median_seconds * 1e3:.1f}",
                "images/s": f"{r.images_per_second:.1f}",
                "speedup": f"{r.speedup:.2f}x",
                "FLOPs limit": f"{r.flops_limit:.2f}x",
                "of limit": f"{r.fraction_of_limit:.0%}",
                "GFLOPs/image": f"{r.gflops_per_image:.2f}",
                "peak MiB": mib(r.peak_memory_bytes),
                "sparse-attention cost": overhead,
            }
        )
    return markdown_table(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_shape_arguments(parser)
    add_setting_arguments(parser, keep_rates=[1.0, 0.7, 0.5], attention=[1.0, 0.3])
    add_target_arguments(parser, batch_size=32)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")


def run(args: argparse.Namespace) -> int:
    plan = timing_plan(args, "bench inference")
    check_writable(args.json)
    results = benchmark_inference(plan)
    shape, target = plan.shape, plan.target
    print(
        f"{shape.name}: {shape.num_hidden_layers} layers, hidden {shape.hidden_size}, "
        f"{num_patches(shape.image_size, shape.patch_size)} patches, pruning at "
        f"{trilevel_config(shape).token_prune_layers}; {target.device.type} {args.dtype}, "
        f"{target.attn_implementation}{', compiled' if target.compile else ''}, batch {args.batch_size}, "
        f"median of {args.repeats} interleaved rounds"
    )
    print(format_results(results))
    if args.json:
        payload = report_payload("inference", args, target.device, shape=asdict(shape))
        write_report(args.json, payload | {"results": [asdict(r) for r in results]})
    return 0
