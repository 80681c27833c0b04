"""Inference throughput of TriLevel settings against transformers' dense ViT: same weights, same batch, one process.

    python -m hf_trilevel.benchmark --preset deit-tiny --batch-size 32 --repeats 9

Every setting is timed once per round, rounds are interleaved (so drift in machine load hits all settings alike), and
the median over rounds is reported. The dense reference is `transformers.ViTForImageClassification` with the same
attention implementation (sdpa by default, the fastest on CPU). Each row shows the measured speedup beside the
FLOPs limit from `hf_trilevel.flops`.
"""

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import transformers
from transformers import ViTConfig, ViTForImageClassification

from .configuration_trilevel_vit import TriLevelViTConfig
from .flops import flops_speedup_limit, forward_flops
from .modeling_trilevel_vit import TriLevelViTForImageClassification

PRESETS = {
    "deit-tiny": {"hidden_size": 192, "num_hidden_layers": 12, "num_attention_heads": 3, "intermediate_size": 768},
    "deit-small": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "intermediate_size": 1536},
    "deit-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
}
IMAGE_SHAPE = {"image_size": 224, "patch_size": 16, "num_labels": 1000}


@dataclass(frozen=True)
class Setting:
    """One operating point of the TriLevel model."""

    token_keep_rate: float = 1.0
    attention_keep_rate: float = 1.0
    token_fusion: bool = False

    @property
    def name(self) -> str:
        name = f"keep {self.token_keep_rate:g}"
        if self.attention_keep_rate < 1.0:
            name += f", attention {self.attention_keep_rate:g}"
        return name + (", fusion" if self.token_fusion else "")


DEFAULT_SETTINGS = (
    Setting(1.0),
    Setting(0.7),
    Setting(0.5),
    Setting(0.7, token_fusion=True),
    Setting(0.7, attention_keep_rate=0.3),
    Setting(1.0, attention_keep_rate=0.3),
)


@dataclass
class Result:
    setting: str
    median_seconds: float
    images_per_second: float
    speedup: float
    flops_limit: float
    fraction_of_limit: float
    gflops_per_image: float


def _time_call(function: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def benchmark_inference(
    preset: str = "deit-tiny",
    settings: tuple[Setting, ...] = DEFAULT_SETTINGS,
    batch_size: int = 32,
    repeats: int = 9,
    warmup: int = 2,
    attn_implementation: str = "sdpa",
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[Result]:
    """Median forward time per setting, and speedups over dense transformers ViT measured in the same rounds."""
    if preset not in PRESETS:
        raise ValueError(f"`preset` must be one of {sorted(PRESETS)}, got {preset!r}.")
    shape = {**PRESETS[preset], **IMAGE_SHAPE, "attn_implementation": attn_implementation}
    torch.manual_seed(0)
    target = torch.device(device)
    dense = ViTForImageClassification(ViTConfig(**shape)).to(target, dtype).eval()
    trilevel = TriLevelViTForImageClassification(TriLevelViTConfig(**shape)).to(target, dtype).eval()
    trilevel.load_state_dict(dense.state_dict())
    pixel_values = torch.randn(batch_size, 3, 224, 224, device=target, dtype=dtype)

    def run_dense() -> None:
        with torch.inference_mode():
            dense(pixel_values)

    def run_setting(setting: Setting) -> Callable[[], None]:
        def run() -> None:
            trilevel.set_keep_rates(setting.token_keep_rate, setting.attention_keep_rate)
            trilevel.config.token_fusion = setting.token_fusion
            with torch.inference_mode():
                trilevel(pixel_values)

        return run

    runs = {"dense ViT (transformers)": run_dense} | {s.name: run_setting(s) for s in settings}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(warmup + repeats):
        for name, run in runs.items():
            elapsed = _time_call(run, target)
            if round_index >= warmup:
                times[name].append(elapsed)
        print(f"\rround {round_index + 1}/{warmup + repeats}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    dense_median = statistics.median(times["dense ViT (transformers)"])
    results = []
    for name, run_times in times.items():
        setting = next((s for s in settings if s.name == name), Setting())
        config = TriLevelViTConfig(**shape, **asdict(setting))
        median = statistics.median(run_times)
        limit = flops_speedup_limit(config)
        speedup = dense_median / median
        results.append(
            Result(name, median, batch_size / median, speedup, limit, speedup / limit, forward_flops(config) / 1e9)
        )
    return results


def environment(device: str = "cpu") -> dict[str, str | int]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
    }


def format_table(results: list[Result]) -> str:
    lines = [
        "| setting | ms / batch | images/s | speedup | FLOPs limit | of limit | GFLOPs / image |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.setting} | {r.median_seconds * 1e3:.1f} | {r.images_per_second:.1f} | {r.speedup:.2f}x "
            f"| {r.flops_limit:.2f}x | {r.fraction_of_limit:.0%} | {r.gflops_per_image:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="deit-tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--attn-implementation", choices=["sdpa", "eager"], default="sdpa")
    parser.add_argument("--json", help="also write the results and the environment to this file")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--batch-size and --repeats must be >= 1 and --warmup >= 0")
    results = benchmark_inference(
        args.preset, batch_size=args.batch_size, repeats=args.repeats, warmup=args.warmup,
        attn_implementation=args.attn_implementation,
    )  # fmt: skip
    print(f"{args.preset}, batch {args.batch_size}, {args.attn_implementation}, median of {args.repeats} rounds")
    print(format_table(results))
    print(json.dumps(environment()))
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"environment": environment(), "arguments": vars(args), "results": [asdict(r) for r in results]},
                      file, indent=2)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
