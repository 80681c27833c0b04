"""Batches of a planned epoch that every process count trains identically, with no example repeated.

accelerate shards a DataLoader's batches round-robin over the processes and, when the last round is short (fewer
batches than processes, or a batch below the batch size), pads it with examples from the start of the epoch
(`even_batches`) so no process waits in a collective. For a planned epoch of K examples that makes a 2-process run
train `ceil(K / (2B)) * 2B - K` examples twice in the epoch's last step, record them twice in the example statistics,
and take other decisions than a 1-process run with batch 2B over the same plan.

`ProcessBalancedBatchSampler` lays the epoch out itself: full rounds of `num_processes` batches of `batch_size`,
then the remaining r examples split into `num_processes` batches of nearly equal size (the first r mod P get one
more). The number of batches is always a multiple of the process count, so accelerate's sharding hands every
process the same number of steps and, seeing a batch sampler with no fixed `batch_size`, never pads. The step's
global batch is then the same examples at any process count, and the Trainer's loss normalisation (the step's
label count gathered over processes) keeps an uneven last round exact. Only when fewer examples than processes
remain are a few examples from the start of the epoch repeated, one per otherwise empty process.
"""

from collections.abc import Iterator

from torch.utils.data import Sampler


class ProcessBalancedBatchSampler(Sampler[list[int]]):
    """Batches of `sampler`'s indices for `num_processes` processes of `batch_size` each (see the module docstring).

    Args:
        sampler: the epoch's indices in order; its length is the epoch's size (a planned sampler's current epoch).
        batch_size: the per-process batch size.
        num_processes: how many processes share each round of batches.
        drop_last: drop the last, incomplete round, as `dataloader_drop_last` drops a short last batch.
    """

    batch_size = None  # no fixed size: accelerate's BatchSamplerShard then shards the batches as they are

    def __init__(self, sampler: Sampler[int], batch_size: int, num_processes: int, drop_last: bool = False) -> None:
        if batch_size < 1 or num_processes < 1:
            raise ValueError(f"`batch_size` and `num_processes` must be >= 1, got {batch_size} and {num_processes}.")
        self.sampler = sampler
        self.per_process_batch_size = batch_size
        self.num_processes = num_processes
        self.drop_last = drop_last

    def __len__(self) -> int:
        full_rounds, rest = divmod(len(self.sampler), self.per_process_batch_size * self.num_processes)
        return (full_rounds + (rest > 0 and not self.drop_last)) * self.num_processes

    def __iter__(self) -> Iterator[list[int]]:
        indices = list(self.sampler)
        batch, processes = self.per_process_batch_size, self.num_processes
        full = len(indices) // (batch * processes) * batch * processes
        for start in range(0, full, batch):
            yield indices[start : start + batch]
        rest = indices[full:]
        if not rest or self.drop_last:
            return
        if len(rest) < processes:  # a process would get nothing to train: repeat examples from the start
            rest += (indices * processes)[: processes - len(rest)]
        size, larger = divmod(len(rest), processes)
        start = 0
        for process in range(processes):
            end = start + size + (process < larger)
            yield rest[start:end]
            start = end


__all__ = ["ProcessBalancedBatchSampler"]
