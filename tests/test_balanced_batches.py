"""`ProcessBalancedBatchSampler`: the same global batches at any process count, and no example trained twice.

Checked against torch's own batching (one process) and through accelerate's `BatchSamplerShard` with its default
`even_batches=True`, which on the plain layout repeats examples from the epoch's start.
"""

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler, SequentialSampler

from hf_trilevel.training.balanced_batches import ProcessBalancedBatchSampler


def shuffled(size: int) -> list[int]:
    return torch.randperm(size, generator=torch.Generator().manual_seed(size)).tolist()


def shards(batches, num_processes: int) -> list[list[list[int]]]:
    """What each process trains, as accelerate shards `batches`."""
    return [list(BatchSamplerShard(batches, num_processes, rank)) for rank in range(num_processes)]


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize(("size", "batch_size"), [(77, 16), (96, 16), (5, 8), (1, 4)])
def test_one_process_batches_as_torch_does(size, batch_size, drop_last):
    indices = shuffled(size)
    ours = ProcessBalancedBatchSampler(indices, batch_size, num_processes=1, drop_last=drop_last)
    torchs = BatchSampler(indices, batch_size, drop_last=drop_last)
    assert list(ours) == list(torchs) and len(ours) == len(torchs)


@pytest.mark.parametrize("num_processes", [2, 3, 4])
@pytest.mark.parametrize("size", [77, 96, 100, 13])
def test_every_process_gets_as_many_steps_and_each_example_trains_once(size, num_processes):
    indices, batch_size = shuffled(size), 8
    batches = ProcessBalancedBatchSampler(indices, batch_size, num_processes)
    assert len(batches) % num_processes == 0 and len(list(batches)) == len(batches)
    per_process = shards(batches, num_processes)
    assert {len(steps) for steps in per_process} == {len(batches) // num_processes}
    assert all(len(batch) > 0 for steps in per_process for batch in steps)
    trained = sorted(index for steps in per_process for batch in steps for index in batch)
    assert trained == sorted(indices)
    # One process with batch num_processes x 8 trains the same examples at every step.
    single = list(BatchSampler(indices, batch_size * num_processes, drop_last=False))
    steps = [sorted(i for process in per_process for i in process[step]) for step in range(len(single))]
    assert steps == [sorted(batch) for batch in single]


def test_accelerates_own_layout_repeats_examples_that_the_balanced_one_does_not():
    indices = shuffled(77)
    plain = [index for steps in shards(BatchSampler(indices, 8, drop_last=False), 2) for b in steps for index in b]
    assert len(plain) == 80 and len(set(plain)) == 77  # 3 examples trained twice in the last step
    balanced = [index for steps in shards(ProcessBalancedBatchSampler(indices, 8, 2), 2) for b in steps for index in b]
    assert sorted(balanced) == sorted(indices)


def test_fewer_examples_than_processes_repeat_only_what_fills_an_empty_process():
    batches = list(ProcessBalancedBatchSampler([5, 6], 8, num_processes=4))
    assert batches == [[5], [6], [5], [6]]


@pytest.mark.parametrize("num_processes", [1, 2])
def test_drop_last_drops_the_incomplete_round(num_processes):
    batches = ProcessBalancedBatchSampler(SequentialSampler(range(40)), 8, num_processes, drop_last=True)
    expected_rounds = 40 // (8 * num_processes)
    assert len(batches) == expected_rounds * num_processes == len(list(batches))
    assert all(len(batch) == 8 for batch in batches)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="`batch_size` and `num_processes` must be >= 1"):
        ProcessBalancedBatchSampler(range(4), 0, 1)
