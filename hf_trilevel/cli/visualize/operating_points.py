"""`hf-trilevel visualize operating-points`: accuracy against measured throughput, one point per token keep rate.

The command's part of the operating-point story (see `hf_trilevel.token_training.operating_points` for the others):
its options, the rates it measures by default, the plot (matplotlib, the `viz` extra) and the JSON, in the shape a
run's `operating_points.json` has. One checkpoint is measured at several keep rates by the library's
`measure_operating_points` (the same weights, `model.keep_rates(...)`, each rate timed on the same batch in
interleaved rounds).

A checkpoint trained with dense/sparse training (`config.dense_sparse_keep_rates`, `hf_trilevel.DenseSparseTraining`)
is measured by default at the rates it was trained for, each at its operating point
(`hf_trilevel.token_training.dense_sparse.operating_point`): keep 1.0 is the dense model with full attention, as in
training, not the checkpoint's attention sparsity without token dropping.
"""

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from ...evaluation.timing import environment
from ...modeling.value_checks import as_pair
from ...token_training.operating_points import measure_operating_points
from ..bench.options import checked_device
from ..errors import CommandError
from .inputs import (
    add_checkpoint_and_data_arguments,
    bounded_int,
    keep_rate,
    load_checkpoint,
    load_examples,
    png_path,
    preprocess,
)

DEFAULT_KEEP_RATES = (1.0, 0.9, 0.7, 0.5)
VIZ_INSTALL_HINT = "pip install 'hf-trilevel[viz]'"


def default_keep_rates(config) -> list[float]:
    """The keep rates to measure when none are asked for: those a dense/sparse checkpoint was trained for, else
    `DEFAULT_KEEP_RATES`."""
    trained = getattr(config, "dense_sparse_keep_rates", None)
    return [float(rate) for rate in trained] if trained else list(DEFAULT_KEEP_RATES)


def plot_operating_points(points: Sequence[dict], path: str | Path, title: str, figure_class: type) -> None:
    """Accuracy (%) against images/s, one labelled point per keep rate, joined in keep-rate order; saved as PNG.

    `figure_class` is `matplotlib.figure.Figure` (passed in so that matplotlib is imported only when plotting, and
    no global pyplot state or backend is touched).
    """
    ordered = sorted(points, key=lambda point: -point["token_keep_rate"])
    figure = figure_class(figsize=(6, 4.2), dpi=120)
    axes = figure.subplots()
    throughput = [point["images_per_second"] for point in ordered]
    accuracy = [100 * point["accuracy"] for point in ordered]
    axes.plot(throughput, accuracy, color="0.6", linewidth=1, zorder=1)
    axes.scatter(throughput, accuracy, color="tab:blue", zorder=2)
    for index, (point, x, y) in enumerate(zip(ordered, throughput, accuracy, strict=True)):
        # Alternate above and below, so neighbouring points with close throughputs keep readable labels.
        offset = (5, 6) if index % 2 == 0 else (5, -13)
        axes.annotate(f"keep {point['token_keep_rate']:g}", (x, y), textcoords="offset points", xytext=offset)
    low, high = axes.get_ylim()
    axes.set_ylim(low, min(high, 100.5))  # equal accuracies would otherwise centre the axis past 100%
    axes.set_xlabel("measured throughput (images/s)")
    axes.set_ylabel("validation accuracy (%)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


def add_operating_points_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `operating-points`; value ranges are checked while parsing, so bad input fails before any work."""
    add_checkpoint_and_data_arguments(parser)
    parser.add_argument(
        "--keep-rates", type=keep_rate("--keep-rates"), nargs="+",
        help="token keep rates to evaluate, each in (0, 1] (default: the rates a dense/sparse checkpoint was trained "
        f"for, else {' '.join(map(str, DEFAULT_KEEP_RATES))})",
    )  # fmt: skip
    parser.add_argument(
        "--attention-keep-rate", type=keep_rate("--attention-keep-rate"),
        help="hold attention sparsity at this rate for every point (default: the checkpoint's own; for a dense/sparse "
        "checkpoint 1.0 at keep rate 1.0)",
    )  # fmt: skip
    parser.add_argument(
        "--max-examples", type=bounded_int("--max-examples", 1, 10**9), help="evaluate at most this many"
    )
    parser.add_argument(
        "--batch-size", type=bounded_int("--batch-size", 1, 65536), default=64, help="images per forward"
    )
    parser.add_argument("--repeats", type=bounded_int("--repeats", 1, 1000), default=10, help="timed rounds")
    parser.add_argument("--warmup", type=bounded_int("--warmup", 0, 1000), default=2, help="untimed rounds first")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run")
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--json", help="where to write the numbers (default: the --output path with .json)")


def run_operating_points(args: argparse.Namespace) -> int:
    """`hf-trilevel visualize operating-points`: accuracy and images/s per keep rate, as a PNG plot and JSON."""
    figure_class = _import_figure()  # before any work: a missing extra should fail in a second, not after timing
    output = png_path(args.output)
    json_path = Path(args.json) if args.json else output.with_suffix(".json")
    if args.keep_rates is not None and len(set(args.keep_rates)) != len(args.keep_rates):
        raise CommandError(f"--keep-rates must be distinct, got {args.keep_rates}.")
    device = checked_device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    model, processor = load_checkpoint(args.model)
    keep_rates = args.keep_rates if args.keep_rates is not None else default_keep_rates(model.config)
    if args.attention_keep_rate is not None:
        try:
            with model.keep_rates(attention_keep_rate=args.attention_keep_rate):
                pass
        except ValueError as error:
            raise CommandError(f"--attention-keep-rate {args.attention_keep_rate}: {error}") from None
    image_height = as_pair(model.config.image_size)[0]
    images, labels = load_examples(args, limit=args.max_examples, need_labels=True, image_size=image_height)
    if int(labels.max()) >= model.config.num_labels:
        raise CommandError(
            f"the data has labels up to {int(labels.max())} but --model {args.model} has "
            f"{model.config.num_labels} classes; evaluate it on the data it was trained for."
        )
    pixel_values = preprocess(processor, images, model.config)
    points = measure_operating_points(
        model, pixel_values, labels, keep_rates, attention_keep_rate=args.attention_keep_rate,
        batch_size=args.batch_size, repeats=args.repeats, warmup=args.warmup, device=device,
    )  # fmt: skip
    timed_batch = min(args.batch_size, len(pixel_values))
    report = {
        "model": str(Path(args.model).resolve()),
        "data": args.data if args.data == "digits" else f"imagefolder:{args.data_dir}",
        "split": args.split,
        "num_examples": len(pixel_values),
        "batch_size": timed_batch,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "environment": environment(device),
        "points": points,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    where = report["environment"]["device"]
    if device.type == "cpu":
        where = f"CPU ({report['environment']['processor']}, {report['environment']['threads']} threads)"
    plot_operating_points(
        points, output, f"{Path(args.model).resolve().name}: batch {timed_batch}, {where}", figure_class
    )
    for point in points:
        print(
            f"keep {point['token_keep_rate']:<5g} accuracy {100 * point['accuracy']:6.2f}%  "
            f"{point['images_per_second']:10.1f} images/s  FLOPs limit {point['flops_speedup_limit']:.2f}x"
        )
    print(f"wrote {output} and {json_path}")
    return 0


def _import_figure() -> type:
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise CommandError(f"the operating-points plot needs matplotlib: {VIZ_INSTALL_HINT} ({error})") from None
    return Figure


__all__ = [
    "DEFAULT_KEEP_RATES",
    "add_operating_points_arguments",
    "default_keep_rates",
    "plot_operating_points",
    "run_operating_points",
]
