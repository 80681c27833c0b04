"""The operating-point table of one checkpoint: accuracy and measured images/s at each token keep rate.

"Operating point" has three homes, one job each:
- `hf_trilevel.token_training.dense_sparse.operating_point(config, rate)`: the rule, the `(token_keep_rate,
  attention_keep_rate, token_merge_r)` one rate of a dense/sparse checkpoint runs at (1.0 is the dense model: full
  attention, no token merging).
- this module: the table, which rates to measure (`measure_operating_points`), the report file a run writes
  (`write_operating_points` -> `operating_points.json`, read back by `read_operating_points_report`) and its markdown
  (`operating_points_markdown`), which the model card shows.
- `hf_trilevel.cli.visualize.operating_points`: the command, `hf-trilevel visualize operating-points`, which
  measures a saved folder the same way and plots the curve.

A dense/sparse checkpoint (`hf_trilevel.DenseSparseTraining`) serves several keep rates with one set of weights; what
each rate buys is only known once it is measured. The measuring itself (accuracy, interleaved timing, FLOPs) is the
library's generic one, `hf_trilevel.evaluation.accuracy_throughput`; the environment it records is
`hf_trilevel.evaluation.timing.environment`, as in every benchmark report.
"""

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from ..evaluation.accuracy_throughput import measure_accuracy_and_throughput
from ..evaluation.formatting import markdown_table
from ..evaluation.timing import environment
from ..image_data import collate
from ..modeling.token_merging import check_merge_r
from ..modeling.value_checks import check_int, check_keep_rate
from .dense_sparse import OperatingPoint, operating_point

OPERATING_POINTS_FILE = "operating_points.json"
DENSE_RATE = 1.0


def format_rate(rate: float) -> str:
    """A keep rate as people write it: `1.0`, `0.7`, `0.25`."""
    rate = float(rate)
    return f"{rate:.1f}" if rate == round(rate, 1) else f"{rate:g}"


def checked_keep_rates(keep_rates: Sequence[float] | None, config) -> list[float]:
    """The rates to measure: `keep_rates`, or the config's `dense_sparse_keep_rates`; each in (0, 1], distinct."""
    if keep_rates is None:
        keep_rates = getattr(config, "dense_sparse_keep_rates", None)
        if not keep_rates:
            raise ValueError(
                "`keep_rates` is None and the model's config has no `dense_sparse_keep_rates`; pass the token keep "
                "rates to measure, e.g. keep_rates=[1.0, 0.7, 0.5]."
            )
    if isinstance(keep_rates, (str, bytes)) or not isinstance(keep_rates, Sequence) or not keep_rates:
        raise ValueError(f"`keep_rates` must be a non-empty list of token keep rates in (0, 1], got {keep_rates!r}.")
    rates = [check_keep_rate(f"keep_rates[{index}]", rate) for index, rate in enumerate(keep_rates)]
    if len(set(rates)) != len(rates):
        raise ValueError(f"`keep_rates` must be distinct, got {list(keep_rates)}.")
    return rates


def point_attention_keep_rate(config, token_keep_rate: float, attention_keep_rate: float | None = None) -> float:
    """The attention keep rate one operating point runs at: an explicit `attention_keep_rate` wins at every point;
    a dense/sparse checkpoint uses the rate its training paired with `token_keep_rate` (`operating_point`), and any
    other checkpoint its own `attention_keep_rate`, so older curves are measured as before."""
    if attention_keep_rate is not None:
        return float(attention_keep_rate)
    if getattr(config, "dense_sparse_keep_rates", None):
        return operating_point(config, token_keep_rate)[1]
    return float(config.attention_keep_rate)


def point_settings(config, token_keep_rate: float, attention_keep_rate: float | None = None) -> OperatingPoint:
    """What one operating point runs at: `point_attention_keep_rate`, and the tokens merged per layer, which follow
    the same rule (a dense/sparse checkpoint merges none at keep rate 1.0, `operating_point`; any other checkpoint
    its own `token_merge_r` at every rate)."""
    attention = point_attention_keep_rate(config, token_keep_rate, attention_keep_rate)
    if getattr(config, "dense_sparse_keep_rates", None):
        merge_r = operating_point(config, token_keep_rate).token_merge_r
    else:
        merge_r = getattr(config, "token_merge_r", 0)
    return OperatingPoint(float(token_keep_rate), attention, merge_r)


def measure_operating_points(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    keep_rates: Sequence[float],
    *,
    attention_keep_rate: float | None = None,
    batch_size: int = 64,
    repeats: int = 10,
    warmup: int = 2,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    metric=None,
) -> list[dict]:
    """Accuracy and measured throughput of one checkpoint at each token keep rate.

    Each point's attention keep rate is `point_attention_keep_rate(model.config, rate, attention_keep_rate)`: the
    explicit one when given; for a dense/sparse checkpoint (`config.dense_sparse_keep_rates` set) the one its
    operating point uses (1.0 at keep rate 1.0); the checkpoint's own `attention_keep_rate` for any other.

    The rest is `hf_trilevel.evaluation.accuracy_throughput.measure_accuracy_and_throughput`: accuracy over all of
    `pixel_values` (`[examples, channels, height, width]`, on the CPU) scored by `metric` (default: the shipped top-1
    / top-5 accuracy), throughput timed on the first `batch_size` examples in interleaved rounds.

    A merging model (`token_merge_r`) also runs each point at its merge count (`point_settings`: none at keep rate
    1.0 of a dense/sparse checkpoint), all points timed in the same interleaved rounds.

    Returns:
        One dict per keep rate, in the given order: `token_keep_rate`, `attention_keep_rate`, the metric's results
        (`accuracy`, `top5_accuracy`, ...), `images_per_second`, `median_batch_seconds`, `flops_per_image`,
        `flops_speedup_limit`; and `token_merge_r` for a merging model.
    """
    settings = [point_settings(model.config, rate, attention_keep_rate) for rate in keep_rates]
    timing = {"batch_size": batch_size, "repeats": repeats, "warmup": warmup, "device": device, "progress": progress}
    if not any(check_merge_r(setting.token_merge_r, model.config.num_hidden_layers) for setting in settings):
        settings = [setting[:2] for setting in settings]  # no merging: the points carry no merge count
    return measure_accuracy_and_throughput(model, pixel_values, labels, settings, metric=metric, **timing)


def write_operating_points(
    model: torch.nn.Module,
    dataset: Sequence[Mapping],
    output_dir: str | Path,
    *,
    keep_rates: Sequence[float] | None = None,
    batch_size: int = 64,
    repeats: int = 5,
    warmup: int = 1,
    device: torch.device | str | None = None,
    gather: Callable[[list], Mapping] | None = None,
) -> list[dict]:
    """Measure a TriLevel model at each token keep rate on `dataset` and write `output_dir/operating_points.json`.

    Args:
        model: a TriLevel classifier (it has `keep_rates(...)`), e.g. `trainer.model` after training. Its device and
            train/eval mode are restored afterwards, so a run may go on using it.
        dataset: an indexable split whose items are dicts with tensor `pixel_values` and int `labels` (the example's
            validation split). All of it is evaluated, held in memory at once as one tensor.
        output_dir: folder the report goes to (created if missing).
        keep_rates: token keep rates to measure, in the order the table lists them; default: the rates the
            checkpoint was trained for (`config.dense_sparse_keep_rates`). Each point's attention keep rate follows
            `hf_trilevel.token_training.dense_sparse.operating_point` for a dense/sparse checkpoint.
        batch_size, repeats, warmup: images per forward, timed rounds and untimed rounds first (throughput is the
            median round on the first `batch_size` images, see `measure_operating_points`).
        device: where to measure; default: where the model's weights are.
        gather: turns a list of dataset items into a batch dict with `pixel_values` and `labels` (e.g. the run's
            data collator); default: `hf_trilevel.image_data.collate`, the example's.

    Returns:
        The points, as `measure_operating_points` returns them; the file also records the
        `environment` (device, processor, threads, versions), `num_examples`, the timed `batch_size`, `repeats` and
        `warmup`.

    Raises:
        ValueError: naming the argument that is empty, out of range or missing.
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "keep_rates"):
        raise ValueError(f"`model` must be a TriLevel model with `keep_rates(...)`, got {type(model).__name__}.")
    rates = checked_keep_rates(keep_rates, config)
    batch_size = check_int("batch_size", batch_size, low=1)
    repeats = check_int("repeats", repeats, low=1)
    warmup = check_int("warmup", warmup, low=0)
    if not hasattr(dataset, "__len__") or len(dataset) == 0:
        raise ValueError("`dataset` must be a non-empty indexable split of examples with `pixel_values` and `labels`.")
    batch = (gather or collate)([dataset[index] for index in range(len(dataset))])
    missing = [key for key in ("pixel_values", "labels") if key not in batch]
    if missing:
        raise ValueError(f"`gather` must return a dict with `pixel_values` and `labels`; it lacks {missing}.")
    pixel_values = torch.as_tensor(batch["pixel_values"]).cpu()
    labels = torch.as_tensor(batch["labels"]).cpu()

    original_device = next(model.parameters()).device
    device = torch.device(device) if device is not None else original_device
    was_training = model.training
    try:
        points = measure_operating_points(
            model, pixel_values, labels, rates, batch_size=batch_size, repeats=repeats, warmup=warmup, device=device
        )
    finally:
        model.to(original_device).train(was_training)
    report = {
        "num_examples": len(pixel_values),
        "batch_size": min(batch_size, len(pixel_values)),
        "repeats": repeats,
        "warmup": warmup,
        "environment": environment(device),
        "points": points,
    }
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / OPERATING_POINTS_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return points


def read_operating_points_report(folder: str | Path) -> dict | None:
    """The whole `operating_points.json` of `folder` (points, environment, batch size), or None without one.

    Raises:
        ValueError: the file is not JSON, or has no non-empty `points` list of dicts with a `token_keep_rate`.
    """
    path = Path(folder) / OPERATING_POINTS_FILE
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not JSON ({error}); rewrite it with `write_operating_points`.") from None
    return checked_report(report, str(path))


def checked_report(report: object, name: str = "operating_points") -> dict:
    """An operating-point report as a dict with a non-empty `points` list (a bare list of points is one without its
    setup); else `ValueError` naming `name`."""
    if isinstance(report, list):
        report = {"points": report}
    points = report.get("points") if isinstance(report, dict) else None
    if not isinstance(points, list) or not points or not all(_is_point(point) for point in points):
        raise ValueError(
            f"`{name}` must hold a `points` list of dicts with a `token_keep_rate` each, as `write_operating_points` "
            "and `hf-trilevel visualize operating-points --json` write it."
        )
    return report


def read_operating_points(folder: str | Path) -> list[dict] | None:
    """The points of `folder`'s `operating_points.json` (one dict per keep rate), or None without one."""
    report = read_operating_points_report(folder)
    return None if report is None else report["points"]


def operating_points_markdown(points: Sequence[Mapping]) -> str:
    """A markdown table, one row per point in the given order: keep rate, attention keep rate, the tokens merged per
    layer (a column only when a point merges, `token_merge_r`), top-1 accuracy, images/s, the speed against keep rate
    1.0 (a column only when a point at 1.0 was measured) and the FLOPs limit.

    Raises:
        ValueError: `points` is empty or a point lacks `token_keep_rate`.
    """
    if not points or not all(_is_point(point) for point in points):
        raise ValueError(f"`points` must be a non-empty list of dicts with a `token_keep_rate` each, got {points!r}.")
    dense = next((point for point in points if float(point["token_keep_rate"]) == DENSE_RATE), None)
    dense_speed = dense.get("images_per_second") if dense is not None else None
    merged = any(point.get("token_merge_r") not in (None, 0) for point in points)
    rows = []
    for point in points:
        row = {
            "keep rate": format_rate(point["token_keep_rate"]),
            "attention keep rate": format_rate(point["attention_keep_rate"])
            if _is_number(point.get("attention_keep_rate"))
            else "n/a",
        }
        if merged:
            row["tokens merged per layer"] = _merge_text(point.get("token_merge_r"))
        row["top-1 accuracy"] = _number(point.get("accuracy"), "{:.2%}")
        row["images/s"] = _number(point.get("images_per_second"), "{:,.1f}")
        if dense is not None:
            speed = point.get("images_per_second")
            row["speed vs keep 1.0"] = (
                f"{speed / dense_speed:.2f}x"
                if _is_number(speed) and _is_number(dense_speed) and dense_speed
                else "n/a"
            )
        row["FLOPs limit"] = _number(point.get("flops_speedup_limit"), "{:.2f}x")
        rows.append(row)
    return markdown_table(rows)


def measurement_setup(report: Mapping) -> str:
    """Where and how the throughput was measured, from a report's `environment`, `batch_size` and `repeats`:
    `CPU (x86_64, 2 threads), batches of 64 images, the median of 5 timed rounds`."""
    where = "an unrecorded device"
    machine = report.get("environment")
    if isinstance(machine, Mapping) and machine.get("device"):
        if machine["device"] == "cpu":
            details = [str(machine[key]) for key in ("processor",) if machine.get(key)]
            if _is_number(machine.get("threads")):
                details.append(_count(machine["threads"], "thread"))
            where = "CPU" + (f" ({', '.join(details)})" if details else "")
        else:
            where = str(machine["device"])
    parts = [where]
    if _is_number(report.get("batch_size")):
        parts.append(f"batches of {_count(report['batch_size'], 'image')}")
    if _is_number(report.get("repeats")):
        parts.append(f"the median of {_count(report['repeats'], 'timed round')}")
    return ", ".join(parts)


def _merge_text(merge_r: object) -> str:
    """`0`, `2`, or a per-layer list as `2 2 1 0`."""
    if isinstance(merge_r, list):
        return " ".join(str(entry) for entry in merge_r)
    return str(merge_r) if _is_number(merge_r) else "n/a"


def _is_point(point: object) -> bool:
    return isinstance(point, Mapping) and _is_number(point.get("token_keep_rate"))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(number: float, noun: str) -> str:
    return f"{int(number)} {noun}" + ("" if int(number) == 1 else "s")


def _number(value: object, form: str) -> str:
    return form.format(value) if _is_number(value) else "n/a"


__all__ = [
    "OPERATING_POINTS_FILE",
    "checked_report",
    "format_rate",
    "measure_operating_points",
    "measurement_setup",
    "operating_points_markdown",
    "point_attention_keep_rate",
    "point_settings",
    "read_operating_points",
    "read_operating_points_report",
    "write_operating_points",
]
