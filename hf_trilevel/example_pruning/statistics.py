"""Example level, statistics: what each example did in training, recorded on the device and shared by all ranks.

Statistics are recorded on each rank for the examples it saw, with no per-example Python loop and no host
synchronisation, and summed over ranks once at the end of each epoch (`sum_across_processes`), so every rank holds
identical numbers and every rank's policy takes the same decision.

Randomness is keyed, not stateful: every random draw of the data level uses a fresh `torch.Generator` seeded from
(run seed, epoch, purpose). Re-running an epoch reproduces it exactly, and a resumed run needs no pickled generator
state: the kept set and the statistics (saved as safetensors) are the whole state.
"""

import hashlib

import torch

from ..training.technique import sum_across_processes

SALT_INITIAL, SALT_SWAP, SALT_DROP, SALT_ORDER, SALT_RANDOM = 1, 2, 3, 4, 5


def digest(indices: torch.Tensor) -> str:
    """Short fingerprint of a kept set, for logs and for comparing ranks or runs at a glance."""
    data = indices.detach().to("cpu", torch.int64).sort().values.numpy().tobytes()
    return hashlib.sha1(data).hexdigest()[:10]


class ExampleStatistics:
    """Per-example training statistics, held on the training device as dense `[num_examples]` tensors.

    `record` is called every step with the batch's example indices; it only writes into device tensors (no
    Python loop over examples, no host synchronisation). `end_epoch` folds the epoch into the running statistics
    after summing every rank's epoch buffers, so all ranks finish with identical numbers.

    Running statistics:
        last_loss: loss at the last presentation (NaN before the first).
        last_correct: whether the last presentation was classified correctly.
        ever_correct: whether any presentation was classified correctly.
        forgetting_events: number of correct -> incorrect flips between consecutive presentations (Toneva et al.).
        presentations: number of epochs in which the example was presented.
    """

    RUNNING = ("last_loss", "last_correct", "ever_correct", "forgetting_events", "presentations")
    EPOCH = ("epoch_seen", "epoch_loss_sum", "epoch_correct_sum")

    def __init__(self, num_examples: int, device: torch.device | str = "cpu"):
        self.num_examples = num_examples
        self.last_loss = torch.full((num_examples,), float("nan"), device=device)
        self.last_correct = torch.zeros(num_examples, dtype=torch.bool, device=device)
        self.ever_correct = torch.zeros(num_examples, dtype=torch.bool, device=device)
        self.forgetting_events = torch.zeros(num_examples, dtype=torch.int32, device=device)
        self.presentations = torch.zeros(num_examples, dtype=torch.int32, device=device)
        self.reset_epoch()

    @property
    def device(self) -> torch.device:
        return self.last_loss.device

    def reset_epoch(self) -> None:
        self.epoch_seen = torch.zeros(self.num_examples, device=self.device)
        self.epoch_loss_sum = torch.zeros(self.num_examples, device=self.device)
        self.epoch_correct_sum = torch.zeros(self.num_examples, device=self.device)

    def record(self, example_index: torch.Tensor, loss: torch.Tensor, correct: torch.Tensor) -> None:
        """Add one batch: `[batch]` dataset indices, per-example losses and correctness (any device)."""
        example_index = example_index.to(self.device, torch.long)
        ones = torch.ones_like(example_index, dtype=self.epoch_seen.dtype)
        self.epoch_seen.index_add_(0, example_index, ones)
        self.epoch_loss_sum.index_add_(0, example_index, loss.detach().to(self.device, self.epoch_loss_sum.dtype))
        self.epoch_correct_sum.index_add_(0, example_index, correct.to(self.device, self.epoch_correct_sum.dtype))

    def end_epoch(self) -> int:
        """Sum the epoch buffers over all ranks, fold them into the running statistics, and clear them.

        An example presented more than once in the epoch (accelerate repeats a few examples to even out the last
        batches across ranks) counts once, with its mean loss and majority correctness. Returns how many distinct
        examples were presented.
        """
        buffers = sum_across_processes(torch.stack([self.epoch_seen, self.epoch_loss_sum, self.epoch_correct_sum]))
        seen_count, loss_sum, correct_sum = buffers
        seen = seen_count > 0
        correct = correct_sum * 2 >= seen_count.clamp_min(1)
        mean_loss = loss_sum / seen_count.clamp_min(1)

        self.forgetting_events += (seen & self.last_correct & ~correct).to(torch.int32)
        self.last_correct = torch.where(seen, correct, self.last_correct)
        self.ever_correct |= seen & correct
        self.last_loss = torch.where(seen, mean_loss, self.last_loss)
        self.presentations += seen.to(torch.int32)
        self.reset_epoch()
        return int(seen.sum())

    def forgetting_scores(self) -> torch.Tensor:
        """Forgetting events per example, with never-learned examples ranked as most forgettable (Toneva et al.)."""
        scores = self.forgetting_events.to(torch.float32)
        never_learned = (self.presentations > 0) & ~self.ever_correct
        return torch.where(never_learned, torch.full_like(scores, float("inf")), scores)

    def forgetting_rates(self, prior_pairs: float = 2.0) -> torch.Tensor:
        """Forgetting events per pair of consecutive presentations, smoothed towards the run's mean rate.

        Raw counts favour examples presented fewer times (fewer chances to be forgotten), so a policy ranking by them
        swaps recently returned examples straight back out. A rate removes that bias, and `prior_pairs` pseudo-pairs
        at the mean rate keep an example with one or two pairs from ranking lowest on no evidence: an example never
        presented twice has exactly the mean rate. Never-learned examples rank as most forgettable (infinite).
        """
        pairs = (self.presentations - 1).clamp_min(0).to(torch.float32)
        events = self.forgetting_events.to(torch.float32)
        mean_rate = events.sum() / pairs.sum().clamp_min(1.0)
        rates = (events + prior_pairs * mean_rate) / (pairs + prior_pairs)
        never_learned = (self.presentations > 0) & ~self.ever_correct
        return torch.where(never_learned, torch.full_like(rates, float("inf")), rates)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).detach().cpu().contiguous() for name in self.RUNNING + self.EPOCH}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in self.RUNNING + self.EPOCH:
            value = state[name]
            if value.shape != (self.num_examples,):
                raise ValueError(
                    f"saved example statistics `{name}` cover {value.shape[0]} examples but the training set has "
                    f"{self.num_examples}; resume with the same training set."
                )
            setattr(self, name, value.to(self.device))
