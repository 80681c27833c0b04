"""Interleaved timing rounds and peak-memory probes shared by every benchmark.

Why interleaved: on a shared or thermally throttled machine, speed drifts over seconds. Timing every setting once per
round, round after round, spreads that drift over all settings alike, so the medians compare like with like.
"""

import statistics
import sys
import time
import weakref
from collections.abc import Callable, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode


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
) -> dict[str, list[float]]:
    """Time each run once per round for `warmup + repeats` rounds; return the `repeats` timed seconds per run.

    `progress(done, total)` is called after every round (e.g. `print_progress`).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"`repeats` must be >= 1 and `warmup` >= 0, got repeats={repeats}, warmup={warmup}.")
    times: dict[str, list[float]] = {name: [] for name in runs}
    total = warmup + repeats
    for round_index in range(total):
        for name, run in runs.items():
            elapsed = time_call(run, device)
            if round_index >= warmup:
                times[name].append(elapsed)
        if progress is not None:
            progress(round_index + 1, total)
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in times.items()}


def print_progress(label: str) -> Callable[[int, int], None]:
    """A `progress` callback that redraws `label: round i/n` on stderr, and ends the line on the last round."""

    def report(done: int, total: int) -> None:
        end = "\n" if done == total else ""
        print(f"\r{label}: round {done}/{total}", end=end, file=sys.stderr, flush=True)

    return report


class TensorMemoryTracker(TorchDispatchMode):
    """Peak bytes of tensors created inside the block and alive at the same time, on any device.

    CPU allocators keep no peak statistics, so this counts at the tensor level: every op output that owns its
    storage (not a view, not an in-place result) is added when created and subtracted when freed. Tensors that
    existed before the block (weights, inputs) are not counted, so the figure is the extra memory a forward or a
    training step needs: activations, temporaries and, under autograd, what is saved for backward.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, int] = {}  # storage address -> bytes, for storages created inside the block

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for tensor in _tensors(output):
            storage = tensor.untyped_storage()
            address = storage.data_ptr()
            if tensor._is_view() or address in self._live or storage.device.type == "meta":
                continue  # a view or an in-place result: no new memory
            self._live[address] = storage.nbytes()
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
            weakref.finalize(tensor, self._release, address)
        return output

    def _release(self, address: int) -> None:
        self.current -= self._live.pop(address, 0)


def _tensors(output: object) -> Iterable[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, (tuple, list)):
        for item in output:
            yield from _tensors(item)


def peak_memory_bytes(function: Callable[[], object], device: torch.device) -> int:
    """Peak extra memory of one call: the CUDA allocator's own peak on GPU, `TensorMemoryTracker` elsewhere."""
    if device.type == "cuda":
        synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        function()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - baseline
    with TensorMemoryTracker() as tracker:
        function()
    return tracker.peak
