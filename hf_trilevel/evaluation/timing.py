"""Wall-clock timing that compares like with like, and the environment a timing depends on.

Why interleaved: on a shared or thermally throttled machine, speed drifts over seconds. Timing every setting once per
round, round after round, spreads that drift over all settings alike, so the medians compare like with like. The
library's measurements (`hf_trilevel.evaluation.accuracy_throughput`) and the benchmarks (`hf-trilevel bench`) time
with the same rounds and record the same `environment`.
"""

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import transformers


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so a wall-clock reading covers the work and not only its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(function: Callable[[], object], device: torch.device) -> float:
    """Seconds one call takes, device work included."""
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_times(
    runs: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    device: torch.device,
    progress: Callable[[int, int], None] | None = None,
    prepare: dict[str, Callable[[], object]] | None = None,
) -> dict[str, list[float]]:
    """Time each run once per round for `warmup + repeats` rounds; return the `repeats` timed seconds per run.

    `prepare[name]`, if given, runs untimed just before its run (e.g. switching a model's keep rates), so the clock
    sees the same work for every model. `progress(done, total)` is called after every round.
    """
    prepare = prepare or {}
    if repeats < 1 or warmup < 0:
        raise ValueError(f"`repeats` must be >= 1 and `warmup` >= 0, got repeats={repeats}, warmup={warmup}.")
    times: dict[str, list[float]] = {name: [] for name in runs}
    total = warmup + repeats
    for round_index in range(total):
        for name, run in runs.items():
            if name in prepare:
                prepare[name]()
            elapsed = time_call(run, device)
            if round_index >= warmup:
                times[name].append(elapsed)
        if progress is not None:
            progress(round_index + 1, total)
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in times.items()}


def environment(device: torch.device) -> dict[str, str | int | None]:
    """What a figure depends on: versions, processor or GPU name, and the thread count."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cuda": torch.version.cuda if device.type == "cuda" else None,
    }


__all__ = ["environment", "interleaved_times", "medians", "synchronize", "time_call"]
