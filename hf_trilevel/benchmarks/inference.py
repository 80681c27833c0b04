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
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from ..flops import flops_speedup_limit, forward_flops
from .options import (
    DENSE_NAME,
    ModelShape,
    RunTarget,
    Setting,
    add_setting_arguments,
    add_shape_arguments,
    add_target_arguments,
    build_models,
    compile_models,
    model_shape,
    run_target,
    settings,
    switch_setting,
    trilevel_config,
)
from .report import check_writable, environment, markdown_table, mib, write_json
from .timing import interleaved_times, peak_memories, print_progress


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


def benchmark_inference(
    shape: ModelShape,
    trilevel_settings: list[Setting],
    target: RunTarget,
    batch_size: int = 32,
    repeats: int = 9,
    warmup: int = 2,
    progress: Callable[[int, int], None] | None = None,
    measure_memory: bool = True,
) -> list[InferenceResult]:
    """Time dense ViT and every TriLevel setting in interleaved rounds; the first result is the dense model."""
    dense, trilevel = build_models(shape, target)
    dense.eval()
    trilevel.eval()
    dense_forward, trilevel_forward = compile_models(target, len(trilevel_settings), dense, trilevel)
    pixel_values = torch.randn(batch_size, 3, shape.image_size, shape.image_size, device=target.device)
    pixel_values = pixel_values.to(target.dtype)

    def forward(model: Callable) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                model(pixel_values)

        return run

    runs = {DENSE_NAME: forward(dense_forward)}
    runs |= {setting.name: forward(trilevel_forward) for setting in trilevel_settings}
    prepare = {setting.name: switch_setting(trilevel, setting) for setting in trilevel_settings}
    times = interleaved_times(runs, repeats, warmup, target.device, progress, prepare)
    # The CPU tracker is a dispatch mode, which compiled graphs bypass: no figure rather than a wrong one.
    memory = peak_memories(runs, target.device, prepare, skip=not measure_memory or target.compiled_on_cpu)

    dense_median = statistics.median(times[DENSE_NAME])
    results = []
    for name, setting in [(DENSE_NAME, Setting()), *((s.name, s) for s in trilevel_settings)]:
        config = trilevel_config(shape, setting)
        median = statistics.median(times[name])
        limit = flops_speedup_limit(config)
        speedup = dense_median / median
        results.append(
            InferenceResult(
                setting=name,
                **asdict(setting),
                median_seconds=median,
                images_per_second=batch_size / median,
                speedup=speedup,
                flops_limit=limit,
                fraction_of_limit=speedup / limit,
                gflops_per_image=forward_flops(config) / 1e9,
                peak_memory_bytes=memory[name],
                seconds=times[name],
            )
        )
    _add_attention_overheads(results, trilevel_settings)
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
    shape = model_shape(args)
    trilevel_settings = settings(args)
    target = run_target(args, trilevel_settings)
    check_writable(args.json)
    progress = None if args.no_progress else print_progress("bench inference")
    results = benchmark_inference(
        shape, trilevel_settings, target, args.batch_size, args.repeats, args.warmup, progress, not args.no_memory
    )
    print(
        f"{shape.name}: {shape.num_hidden_layers} layers, hidden {shape.hidden_size}, "
        f"{(shape.image_size // shape.patch_size) ** 2} patches, pruning at "
        f"{trilevel_config(shape).token_prune_layers}; {target.device.type} {args.dtype}, "
        f"{target.attn_implementation}{', compiled' if target.compile else ''}, batch {args.batch_size}, "
        f"median of {args.repeats} interleaved rounds"
    )
    print(format_results(results))
    if args.json:
        payload = {
            "command": "inference",
            "arguments": {k: v for k, v in vars(args).items() if k not in ("run", "parser")},
            "shape": asdict(shape),
            "environment": environment(target.device),
            "results": [asdict(r) for r in results],
        }
        write_json(args.json, payload)
        print(f"wrote {args.json}")
    return 0
