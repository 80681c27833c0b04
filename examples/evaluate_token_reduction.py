"""Token merging (ToMe) against class-attention token dropping, off the shelf: accuracy, GFLOPs and images/s.

Every saved digits folder (e.g. dense checkpoints trained with sparsity off) is evaluated, without training, at
several operating points switched with `model.keep_rates` (no reload): the dense model; token merging with each
`--merge-r` schedule (one r for every layer, or one per layer as `8,7,7,7,7,7`); and class-attention dropping at
each `--keep-rates` rate (attention keep rate 1.0, at the model's `token_prune_layers`), without and/or with
`token_fusion`. For each point it records top-1 accuracy on the 360 digits validation images the example trains
against, the forward GFLOPs per image counted by `torch.utils.flop_counter.FlopCounterMode` on one eval forward
(total flops of one batch / its size, independent of `hf_trilevel.evaluation.flops`; counted on an `eager` copy of
the model, because on CPU the counter does not see inside `sdpa`'s kernel and would miss the attention products),
and images/s (one model, points interleaved within each repeat, the median over repeats). It prints a markdown
table of accuracy (mean ± sd over the folders) against GFLOPs, then the accuracy of each curve linearly
interpolated in GFLOPs at a grid of FLOPs reductions (`--compare-at`), with whether the better merging curve is at
least as accurate as the better dropping curve there.

    python examples/evaluate_token_reduction.py runs/dense_s0 runs/dense_s1 runs/dense_s2 --json out.json
    python examples/evaluate_token_reduction.py FOLDER --merge-r 7 12,10,8,6,4,2 --keep-rates 0.7 0.5 --fusion off
"""

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,  # hf_trilevel registers every family
)

from hf_trilevel.cli.visualize.inputs import preprocess
from hf_trilevel.image_data import load_digits_dataset
from hf_trilevel.modeling.value_checks import as_pair, check_keep_rate

# Uniform r (r = 10 no longer fits the last layer of the 64-patch digits model), then ToMe-style decreasing
# schedules r_l = round(a * (6 - l) / 6) for a = 6 .. 16, which reach past 2x fewer FLOPs.
DEFAULT_MERGE = [str(r) for r in range(1, 10)] + [
    "6,5,4,3,2,1",
    "8,7,5,4,3,1",
    "10,8,7,5,3,2",
    "12,10,8,6,4,2",
    "14,12,9,7,5,2",
    "16,13,11,8,5,3",
]
DEFAULT_KEEP = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
DEFAULT_COMPARE = [1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0]


def parse_merge(text: str) -> int | list[int]:
    """`7` -> 7 (every layer), `8,7,7,7,7,7` -> one r per layer."""
    values = [int(part) for part in text.split(",")]
    return values[0] if len(values) == 1 else values


def operating_points(merge_specs: list[str], keep_rates: list[float], fusion: str) -> list[dict]:
    """Each point: a name, the curve it belongs to, and the settings (`keep_rates` kwargs and `token_fusion`)."""
    points = [{"name": "dense", "curve": "dense", "keep": 1.0, "merge": 0, "fusion": False}]
    for spec in merge_specs:
        merge = parse_merge(spec)
        curve = "merge (uniform r)" if isinstance(merge, int) else "merge (per-layer r)"
        points.append({"name": f"merge r={spec}", "curve": curve, "keep": 1.0, "merge": merge, "fusion": False})
    for use_fusion in {"off": [False], "on": [True], "both": [False, True]}[fusion]:
        curve = "drop + fusion" if use_fusion else "drop"
        for rate in keep_rates:
            points.append(
                {"name": f"{curve} keep={rate:g}", "curve": curve, "keep": rate, "merge": 0, "fusion": use_fusion}
            )
    return points


class Switch:
    """Enter one operating point on a loaded model: the keep rates / merge r (`model.keep_rates`) and fusion."""

    def __init__(self, model, point: dict):
        self.model, self.point = model, point

    def __enter__(self):
        self.previous_fusion = self.model.config.token_fusion
        self.model.config.token_fusion = self.point["fusion"]
        self.context = self.model.keep_rates(
            token_keep_rate=self.point["keep"], attention_keep_rate=1.0, token_merge_r=self.point["merge"]
        )
        self.context.__enter__()

    def __exit__(self, *exc):
        self.context.__exit__(*exc)
        self.model.config.token_fusion = self.previous_fusion


def load(folder: str):
    """The model (eval mode), the validation pixel values and labels, preprocessed by the folder's own processor."""
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    validation = load_digits_dataset(max(as_pair(model.config.image_size)))["validation"]
    pixel_values = preprocess(AutoImageProcessor.from_pretrained(folder), list(validation["image"]), model.config)
    return model, pixel_values, torch.tensor(list(validation["label"]))


def accuracy(model, point: dict, pixel_values: torch.Tensor, labels: torch.Tensor, batch_size: int = 120) -> float:
    with torch.inference_mode(), Switch(model, point):
        logits = torch.cat([model(pixel_values=batch).logits for batch in pixel_values.split(batch_size)])
    return (logits.argmax(-1) == labels).float().mean().item()


def gflops_per_image(model, point: dict, batch: torch.Tensor) -> float:
    """FlopCounterMode's total over one eval forward of `batch`, per image, in GFLOPs."""
    with torch.inference_mode(), Switch(model, point), FlopCounterMode(display=False) as counter:
        model(pixel_values=batch)
    return counter.get_total_flops() / batch.shape[0] / 1e9


def images_per_second(model, points: list[dict], batch: torch.Tensor, repeats: int, iters: int) -> list[float]:
    """Median images/s per point; every repeat runs each point in turn (interleaved), after one warm-up each."""
    seconds = [[] for _ in points]
    with torch.inference_mode():
        for point in points:
            with Switch(model, point):
                model(pixel_values=batch)
        for _ in range(repeats):
            for index, point in enumerate(points):
                with Switch(model, point):
                    start = time.perf_counter()
                    for _ in range(iters):
                        model(pixel_values=batch)
                    seconds[index].append((time.perf_counter() - start) / iters)
    return [batch.shape[0] / statistics.median(values) for values in seconds]


def interpolate(curve: list[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of `(gflops, accuracy)` points (sorted by gflops) at `x`; None outside their range."""
    curve = sorted(curve)
    for (x0, y0), (x1, y1) in itertools.pairwise(curve):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * sd:.2f}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="saved TriLevel digits folders (e.g. the example's --output_dir)")
    parser.add_argument(
        "--merge-r",
        nargs="*",
        default=DEFAULT_MERGE,
        metavar="R",
        help="merge schedules: an int (every layer) or comma-separated, one per layer",
    )
    parser.add_argument(
        "--keep-rates",
        type=float,
        nargs="*",
        default=DEFAULT_KEEP,
        metavar="RATE",
        help="class-attention keep rates for dropping (attention keep rate 1.0)",
    )
    parser.add_argument("--fusion", choices=["off", "on", "both"], default="both", help="dropping with token_fusion")
    parser.add_argument(
        "--compare-at",
        type=float,
        nargs="*",
        default=DEFAULT_COMPARE,
        metavar="X",
        help="FLOPs reductions (dense / point) at which the curves are interpolated and compared",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward for FLOPs and timing")
    parser.add_argument("--repeats", type=int, default=7, help="timing repeats (median); 0 skips timing")
    parser.add_argument("--iters", type=int, default=3, help="forwards per point per timing repeat")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", help="also write every number here")
    args = parser.parse_args(argv)
    for rate in args.keep_rates:
        try:
            check_keep_rate("--keep-rates", rate)
        except ValueError as error:
            parser.error(str(error))
    try:
        points = operating_points(args.merge_r, args.keep_rates, args.fusion)
    except ValueError:
        parser.error(f"--merge-r takes ints or comma-separated ints, got {args.merge_r}")
    for folder in args.folders:
        if not (Path(folder) / "config.json").is_file():
            parser.error(f"{folder} holds no saved model (config.json).")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    accuracies = {point["name"]: {} for point in points}
    gflops, speed = {}, {}
    for index, folder in enumerate(args.folders):
        model, pixel_values, labels = load(folder)
        if index == 0:  # same weights, attention as explicit matmuls that FlopCounterMode counts
            eager = AutoModelForImageClassification.from_pretrained(folder, attn_implementation="eager").eval()
        batch = pixel_values[: args.batch_size]
        for point in points:
            try:
                accuracies[point["name"]][folder] = accuracy(model, point, pixel_values, labels)
                if index == 0:  # flops do not depend on the weights (fixed token counts)
                    gflops[point["name"]] = gflops_per_image(eager, point, batch)
            except ValueError as error:  # an r this model has too few tokens for
                print(f"skipping {point['name']}: {error}")
                accuracies[point["name"]] = None
        points = [point for point in points if accuracies[point["name"]] is not None]
        print(folder, "  ".join(f"{p['name']}: {100 * accuracies[p['name']][folder]:.2f}%" for p in points), flush=True)
        if index == 0 and args.repeats > 0:  # speed does not depend on the weights: time the first model only
            speed = dict(
                zip(
                    [p["name"] for p in points],
                    images_per_second(model, points, batch, args.repeats, args.iters),
                    strict=True,
                )
            )
    dense = gflops["dense"]

    print(
        f"\n{len(args.folders)} folder(s); accuracy on {len(labels)} validation images, mean ± sd over folders; "
        f"GFLOPs per image (FlopCounterMode); images/s at batch {args.batch_size}, {args.threads} thread(s).\n"
    )
    print("| point | GFLOPs | FLOPs reduction | accuracy % | images/s |")
    print("|---|---:|---:|---:|---:|")
    for point in sorted(points, key=lambda p: (-gflops[p["name"]], p["curve"])):
        name = point["name"]
        values = [accuracies[name][folder] for folder in args.folders]
        rate = f"{speed[name]:.0f}" if name in speed else "-"
        print(f"| {name} | {gflops[name]:.4f} | {dense / gflops[name]:.2f}x | {mean_sd(values)} | {rate} |")

    curves = {}
    for point in points:
        mean = statistics.mean(accuracies[point["name"]][folder] for folder in args.folders)
        curves.setdefault(point["curve"], []).append((gflops[point["name"]], mean))
    dense_point = curves.pop("dense")[0]
    for curve in curves.values():
        curve.append(dense_point)  # every curve starts at the dense model
    merge_curves = [name for name in curves if name.startswith("merge")]
    drop_curves = [name for name in curves if name.startswith("drop")]
    comparison = []
    print(
        "\nMean accuracy interpolated linearly in GFLOPs along each curve (with the dense point as its start);"
        " '-' where a curve does not reach; best = the higher of the merge curves / of the drop curves.\n"
    )
    print("| FLOPs reduction | GFLOPs | " + " | ".join(curves) + " | best merge >= best drop? (difference, points) |")
    print("|---:|---:|" + "---:|" * len(curves) + "---|")
    for reduction in args.compare_at:
        target = dense / reduction
        values = {name: interpolate(curve, target) for name, curve in curves.items()}
        best_merge = max((values[n] for n in merge_curves if values[n] is not None), default=None)
        best_drop = max((values[n] for n in drop_curves if values[n] is not None), default=None)
        met = None if best_merge is None or best_drop is None else best_merge >= best_drop - 1e-9  # float noise
        comparison.append(
            {
                "reduction": reduction,
                "gflops": target,
                "accuracy": values,
                "best_merge": best_merge,
                "best_drop": best_drop,
                "merge_at_least_drop": met,
            }
        )
        cells = " | ".join("-" if values[n] is None else f"{100 * values[n]:.2f}" for n in curves)
        verdict = "n/a" if met is None else ("yes" if met else "no")
        if met is not None:
            verdict += f" ({100 * (best_merge - best_drop):+.2f})"
        print(f"| {reduction:.2f}x | {target:.4f} | {cells} | {verdict} |")

    results = {
        "folders": args.folders,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "torch": torch.__version__,
        "points": [
            {
                **point,
                "gflops": gflops[point["name"]],
                "reduction": dense / gflops[point["name"]],
                "accuracy": accuracies[point["name"]],
                "images_per_second": speed.get(point["name"]),
            }
            for point in points
        ],
        "comparison": comparison,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
