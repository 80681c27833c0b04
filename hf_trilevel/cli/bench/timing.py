"""Peak-memory probes and round progress for the benchmarks; the timing rounds themselves are the library's.

The interleaved rounds (`interleaved_times`, `medians`) live in `hf_trilevel.evaluation.timing`, where the
library's own measurements use them too.
"""

import sys
import weakref
from collections.abc import Callable, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ...evaluation.timing import synchronize


def print_progress(label: str) -> Callable[[int, int], None]:
    """A `progress` callback that redraws `label: round i/n` on stderr, and ends the line on the last round."""

    def report(done: int, total: int) -> None:
        end = "\n" if done == total else ""
        print(f"\r{label}: round {done}/{total}", end=end, file=sys.stderr, flush=True)

    return report


class TensorMemoryTracker(TorchDispatchMode):
    """Peak bytes of tensors created inside the block and alive at the same time, on any device.

    CPU allocators keep no peak statistics, so this counts at the tensor level: every op output that owns its
    storage is added when created and subtracted when the last tensor using that storage (views included) is freed.
    Tensors that existed before the block (weights, inputs) and their aliases are not counted, so the figure is the
    extra memory a forward or a training step needs: activations, temporaries and, under autograd, what is saved
    for backward.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        # storage address -> [bytes, live tensors using it], for storages created inside the block
        self._live: dict[int, list[int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        inputs = {t.untyped_storage().data_ptr() for t in _tensors([*args, *kwargs.values()])}
        for tensor in _tensors(output):
            storage = tensor.untyped_storage()
            address = storage.data_ptr()
            if address in self._live:  # a view or in-place result of a tracked storage: it lives while any user does
                self._live[address][1] += 1
            elif address in inputs or storage.device.type == "meta":
                continue  # an alias of memory that existed before the block (`.to` a dtype it has, a view of a weight)
            else:
                self._live[address] = [storage.nbytes(), 1]
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
            weakref.finalize(tensor, self._release, address)
        return output

    def __enter__(self):
        # Autograd saves a forward output through its own tensor object, which never passes through this mode; while
        # the tracker is on, saved tensors are kept as the very objects created here, so their storage stays counted
        # until backward frees them.
        self._saved_hooks = torch.autograd.graph.saved_tensors_hooks(_keep, _keep)
        self._saved_hooks.__enter__()
        return super().__enter__()

    def __exit__(self, *exc_info):
        try:
            return super().__exit__(*exc_info)
        finally:
            self._saved_hooks.__exit__(*exc_info)

    def _release(self, address: int) -> None:
        entry = self._live[address]
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self._live[address]


def _keep(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


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


def peak_memories(
    runs: dict[str, Callable[[], object]],
    device: torch.device,
    prepare: dict[str, Callable[[], object]] | None = None,
    skip: bool = False,
) -> dict[str, int | None]:
    """`peak_memory_bytes` of one call of each run (after its `prepare`), or None for all when `skip`."""
    if skip:
        return dict.fromkeys(runs)
    prepare = prepare or {}
    memory: dict[str, int | None] = {}
    for name, run in runs.items():
        if name in prepare:
            prepare[name]()
        memory[name] = peak_memory_bytes(run, device)
    return memory


__all__ = [
    "TensorMemoryTracker",
    "peak_memories",
    "peak_memory_bytes",
    "print_progress",
]
