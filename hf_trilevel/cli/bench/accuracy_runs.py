"""The runs `hf-trilevel bench train --time-to-accuracy` records and the tables it prints from them.

A run is its accuracy curve (training seconds and accuracy after every epoch) and the figures drawn from it; the
tables compare each run with dense ViT of the same seed, one seed at a time and as mean ± sd over seeds. Kept apart
from the training loop (`time_to_accuracy.py`) because the same records are read back from `--json` reports of
seeds run in separate processes.
"""

import argparse
import statistics
from dataclasses import dataclass, field

from ...evaluation.formatting import markdown_table
from .settings import DENSE_NAME


@dataclass
class EpochRecord:
    epoch: int
    train_seconds: float  # cumulative, training only
    accuracy: float


@dataclass
class AccuracyRun:
    """One training run: its curve and the figures drawn from it."""

    setting: str
    token_keep_rate: float
    attention_keep_rate: float
    example_keep_fraction: float
    final_accuracy: float
    best_accuracy: float
    train_seconds: float
    seconds_to_target: float | None
    curve: list[EpochRecord] = field(default_factory=list)
    seed: int = 0
    target_accuracy: float | None = None
    policy: str | None = None  # the example policy, None for all the data
    examples_seen: int = 0  # example presentations over the run (the data budget actually spent)


def seconds_to(curve: list[EpochRecord], target: float) -> float | None:
    """Training seconds until the evaluated accuracy first reached `target`, or None if it never did."""
    return next((record.train_seconds for record in curve if record.accuracy >= target - 1e-9), None)


def set_targets(runs: list[AccuracyRun], args: argparse.Namespace) -> None:
    """Each run's target (fixed, or its seed's dense final accuracy minus the margin) and its time to it."""
    dense = {run.seed: run for run in runs if run.setting == DENSE_NAME}
    for run in runs:
        if args.target_accuracy is not None:
            run.target_accuracy = args.target_accuracy
        else:
            run.target_accuracy = dense[run.seed].final_accuracy - args.target_below_dense / 100
        run.seconds_to_target = seconds_to(run.curve, run.target_accuracy)


def target_text(args: argparse.Namespace) -> str:
    if args.target_accuracy is not None:
        return f"{args.target_accuracy:.0%}"
    return f"dense - {args.target_below_dense:g} pt"


def format_runs(runs: list[AccuracyRun], target: str) -> str:
    """One seed's runs, dense first."""
    dense = runs[0]
    rows = []
    for run in runs:
        to_target = "not reached" if run.seconds_to_target is None else f"{run.seconds_to_target:.1f} s"
        speedup_to_target = (
            f"{dense.seconds_to_target / run.seconds_to_target:.2f}x"
            if run.seconds_to_target and dense.seconds_to_target
            else "n/a"
        )
        rows.append(
            {
                "setting": run.setting,
                "final accuracy": f"{run.final_accuracy:.2%}",
                "best accuracy": f"{run.best_accuracy:.2%}",
                "data seen": f"{run.examples_seen / dense.examples_seen:.3f}",
                "train time": f"{run.train_seconds:.1f} s",
                "speedup": f"{dense.train_seconds / run.train_seconds:.2f}x",
                f"time to {target} ({run.target_accuracy:.2%})": to_target,
                "speedup to target": speedup_to_target,
            }
        )
    return markdown_table(rows)


def _mean_sd(values: list[float], scale: float = 1.0, unit: str = "") -> str:
    if not values:
        return "n/a"
    spread = f" ± {scale * statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{scale * statistics.mean(values):.2f}{spread}{unit}"


def format_summary(runs: list[AccuracyRun], target: str) -> str:
    """Mean ± sd over seeds per setting; time to target over the seeds that reached it, with how many did."""
    dense_seconds = {run.seed: run.train_seconds for run in runs if run.setting == DENSE_NAME}
    dense_to_target = {run.seed: run.seconds_to_target for run in runs if run.setting == DENSE_NAME}
    dense_seen = {run.seed: run.examples_seen for run in runs if run.setting == DENSE_NAME}
    rows = []
    for setting in dict.fromkeys(run.setting for run in runs):
        group = [run for run in runs if run.setting == setting]
        reached = [run for run in group if run.seconds_to_target is not None]
        speedups = [dense_to_target[r.seed] / r.seconds_to_target for r in reached if dense_to_target[r.seed]]
        rows.append(
            {
                "setting": setting,
                "seeds": str(len(group)),
                "final accuracy (%)": _mean_sd([run.final_accuracy for run in group], 100),
                "data seen": _mean_sd([run.examples_seen / dense_seen[run.seed] for run in group]),
                "train time (s)": _mean_sd([run.train_seconds for run in group]),
                "speedup": _mean_sd([dense_seconds[run.seed] / run.train_seconds for run in group], unit="x"),
                f"reached {target}": f"{len(reached)}/{len(group)}",
                "time to target (s)": _mean_sd([run.seconds_to_target for run in reached]),
                "speedup to target": _mean_sd(speedups, unit="x"),
            }
        )
    return markdown_table(rows)
