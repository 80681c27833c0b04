"""The operating-point table of one checkpoint: accuracy and measured images/s at each token keep rate.

A dense/sparse checkpoint (`hf_trilevel.DenseSparseTraining`) serves several keep rates with one set of weights; what
each rate buys is only known once it is measured. `write_operating_points` measures it at the end of a run (the
example calls it on the main process when dense/sparse training is on) and writes `operating_points.json` into the
output folder, in the same shape as `hf-trilevel visualize operating-points --json`; the model card
(`hf_trilevel.model_card.builder`) reads that file back (`read_operating_points_report`) and shows
`operating_points_markdown(points)`.

The measuring half imports the evaluation and timing stack only when called: the model card imports this module, and
the card must stay importable from `hf_trilevel.training.trainer` without pulling in the command-line tools.
"""

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from ..cli.bench.report import environment, markdown_table
from ..image_data import collate
from ..modeling.value_checks import check_int, check_keep_rate

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
        The points, as `hf_trilevel.cli.visualize.measure_operating_points` returns them; the file also records the
        `environment` (device, processor, threads, versions), `num_examples`, the timed `batch_size`, `repeats` and
        `warmup`.

    Raises:
        ValueError: naming the argument that is empty, out of range or missing.
    """
    from ..cli.visualize.operating_points import measure_operating_points

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
    """A markdown table, one row per point in the given order: keep rate, attention keep rate, top-1 accuracy,
    images/s, the speed against keep rate 1.0 (a column only when a point at 1.0 was measured) and the FLOPs limit.

    Raises:
        ValueError: `points` is empty or a point lacks `token_keep_rate`.
    """
    if not points or not all(_is_point(point) for point in points):
        raise ValueError(f"`points` must be a non-empty list of dicts with a `token_keep_rate` each, got {points!r}.")
    dense = next((point for point in points if float(point["token_keep_rate"]) == DENSE_RATE), None)
    dense_speed = dense.get("images_per_second") if dense is not None else None
    rows = []
    for point in points:
        row = {
            "keep rate": format_rate(point["token_keep_rate"]),
            "attention keep rate": format_rate(point["attention_keep_rate"])
            if _is_number(point.get("attention_keep_rate"))
            else "n/a",
            "top-1 accuracy": _number(point.get("accuracy"), "{:.2%}"),
            "images/s": _number(point.get("images_per_second"), "{:,.1f}"),
        }
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
    "measurement_setup",
    "operating_points_markdown",
    "read_operating_points",
    "read_operating_points_report",
    "write_operating_points",
]
