"""Example level: per-example statistics, pruning policies, and the sampler that serves each epoch's kept set.

Three rules shape everything here:

* **One decision for all ranks.** Statistics are recorded on each rank for the examples it saw, all-reduced once at
  the end of each epoch, and every rank then runs the same deterministic policy on the same numbers with the same
  seeded generator, so all ranks hold the same kept set without broadcasting it.
* **Epoch sizes are planned before training.** Each policy states how many examples every epoch will serve, so the
  Trainer's `max_steps`, LR schedule, progress bar and gradient accumulation are exact.
* **Randomness is keyed, not stateful.** Every random draw uses a fresh `torch.Generator` seeded from
  (run seed, epoch, purpose). Re-running an epoch reproduces it exactly, and a resumed run needs no pickled generator
  state: the kept set and the statistics (saved as safetensors) are the whole state.
"""

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

_SALT_INITIAL, _SALT_SWAP, _SALT_DROP, _SALT_ORDER = 1, 2, 3, 4


def keyed_generator(seed: int, epoch: int, salt: int) -> torch.Generator:
    """A CPU generator that depends only on its key; the same key gives the same draws on every rank and rerun."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 1_009 + salt) % (2**63))


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
        buffers = torch.stack([self.epoch_seen, self.epoch_loss_sum, self.epoch_correct_sum])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(buffers, op=dist.ReduceOp.SUM)
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


@dataclass
class EpochPlan:
    """The examples one epoch serves.

    Attributes:
        indices: `[kept]` int64 dataset indices, ascending.
        loss_weights: `[kept]` float weights aligned with `indices` (None = all 1). The `loss` policy rescales the
            surviving well-learned examples so that the expected gradient over the full data is unchanged.
    """

    indices: torch.Tensor
    loss_weights: torch.Tensor | None = None


class PruningPolicy:
    """How many examples each epoch serves (planned before training) and which ones (decided at epoch ends).

    A new policy subclasses this and implements the two methods; `ExamplePruningCallback(policy=MyPolicy(...))`
    then uses it with no change anywhere else.
    """

    name = "custom"

    def prepare(self, num_examples: int, num_epochs: int) -> None:
        """Check the settings against the run and precompute per-run values; raise `ValueError` naming the argument."""

    def epoch_sizes(self, num_examples: int, num_epochs: int) -> list[int]:
        """Number of examples served in each epoch, known before training starts."""
        raise NotImplementedError

    def plan_epoch(
        self, epoch: int, previous: EpochPlan | None, statistics: ExampleStatistics, num_examples: int, seed: int
    ) -> EpochPlan:
        """The plan for `epoch`, from the previous epoch's plan and the gathered statistics.

        Must return exactly `epoch_sizes(...)[epoch]` indices, and must be deterministic given its arguments.
        """
        raise NotImplementedError

    def config(self) -> dict:
        """JSON-serialisable settings, saved with checkpoints and compared on resume."""
        return {"policy": self.name}


class NoPruning(PruningPolicy):
    """Every example, every epoch (statistics are still collected, e.g. for analysis)."""

    name = "none"

    def epoch_sizes(self, num_examples: int, num_epochs: int) -> list[int]:
        return [num_examples] * num_epochs

    def plan_epoch(self, epoch, previous, statistics, num_examples, seed) -> EpochPlan:
        return EpochPlan(torch.arange(num_examples))


def _check_fraction(name: str, value: object, allow_one: bool = True) -> float:
    upper = "1]" if allow_one else "1)"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a number in (0, {upper}, got {value!r}.")
    if not (0 < value < 1 or (allow_one and value == 1)):
        raise ValueError(f"`{name}` must be in (0, {upper}, got {value!r}.")
    return float(value)


class ForgettingPolicy(PruningPolicy):
    """Tri-Level E-ViT's example level: a fixed kept fraction, refreshed by swapping out unforgettable examples.

    Epoch 0 keeps a random `keep_fraction` of the data. At each swap epoch, the `swap_fraction x N` kept examples with
    the fewest forgetting events (never-learned examples count as the most forgettable) leave, and as many return,
    drawn at random from the removed pool. The kept-set size never changes.

    Args:
        keep_fraction: share of the data kept every epoch, in (0, 1] (paper: 0.8).
        swap_fraction: share of the whole data swapped at each swap epoch, in (0, 1] (paper: 0.05).
        swap_epochs: 0-indexed epochs that start with a swap. Default: every tenth of training until half-way,
            scaling the paper's epochs 30, 60, ..., 150 of 300 to the run.
    """

    name = "forgetting"

    def __init__(self, keep_fraction: float = 0.8, swap_fraction: float = 0.05, swap_epochs: list[int] | None = None):
        self.keep_fraction = _check_fraction("keep_fraction", keep_fraction)
        self.swap_fraction = _check_fraction("swap_fraction", swap_fraction)
        if swap_epochs is not None and (
            isinstance(swap_epochs, (str, bytes))
            or not all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in swap_epochs)
        ):
            raise ValueError(f"`swap_epochs` must be a list of epoch numbers >= 1, got {swap_epochs!r}.")
        self.swap_epochs = sorted(set(swap_epochs)) if swap_epochs is not None else None

    def resolved_swap_epochs(self, num_epochs: int) -> list[int]:
        if self.swap_epochs is not None:
            return self.swap_epochs
        return sorted({round(num_epochs * tenth / 10) for tenth in range(1, 6)} - {0})

    def prepare(self, num_examples: int, num_epochs: int) -> None:
        swap_epochs = self.resolved_swap_epochs(num_epochs)
        beyond = [e for e in swap_epochs if e >= num_epochs]
        if beyond:
            raise ValueError(
                f"`swap_epochs` {beyond} are beyond training: epochs are 0-indexed and the run has {num_epochs}, "
                f"so swap epochs must be in [1, {num_epochs - 1}]."
            )
        self.swap_epochs_for_run = set(swap_epochs)

    def num_kept(self, num_examples: int) -> int:
        return max(1, round(self.keep_fraction * num_examples))

    def epoch_sizes(self, num_examples: int, num_epochs: int) -> list[int]:
        return [self.num_kept(num_examples)] * num_epochs

    def plan_epoch(self, epoch, previous, statistics, num_examples, seed) -> EpochPlan:
        num_kept = self.num_kept(num_examples)
        if previous is None:
            order = torch.randperm(num_examples, generator=keyed_generator(seed, epoch, _SALT_INITIAL))
            return EpochPlan(order[:num_kept].sort().values)
        if epoch not in self.swap_epochs_for_run:
            return previous

        kept = previous.indices
        removed_mask = torch.ones(num_examples, dtype=torch.bool)
        removed_mask[kept] = False
        removed = removed_mask.nonzero().flatten()
        num_swap = min(round(self.swap_fraction * num_examples), len(kept) - 1, len(removed))
        if num_swap <= 0:
            return previous
        generator = keyed_generator(seed, epoch, _SALT_SWAP)
        scores = statistics.forgetting_scores().cpu()[kept]
        # Ties (many examples have zero forgetting events) are broken at random, not by dataset order.
        tie_break = torch.rand(len(kept), generator=generator)
        ranking = torch.argsort(scores + tie_break * 0.5, stable=True)
        leaving = ranking[:num_swap]
        staying = torch.ones(len(kept), dtype=torch.bool)
        staying[leaving] = False
        returning = removed[torch.randperm(len(removed), generator=generator)[:num_swap]]
        return EpochPlan(torch.cat([kept[staying], returning]).sort().values)

    def config(self) -> dict:
        return {
            "policy": self.name,
            "keep_fraction": self.keep_fraction,
            "swap_fraction": self.swap_fraction,
            "swap_epochs": self.swap_epochs,
        }


class LossPolicy(PruningPolicy):
    """InfoBatch-style unbiased pruning by loss, with epoch sizes planned before training.

    Each pruned epoch, the well-learned pool is the `well_learned_fraction` of the data with the lowest last loss. A
    `prune_ratio` share of the pool is skipped at random, and the kept pool examples have their loss scaled by
    `1 / (1 - prune_ratio)`, so the expected gradient equals that of the full data. The first epoch (no losses
    yet) and the final `full_data_fraction` of epochs use all the data.

    InfoBatch's pool is the examples below the *mean* loss, whose size changes from epoch to epoch. A lowest-loss
    quantile (the median by default) keeps the same unbiased rescaling but makes every epoch's size known in advance.

    Args:
        prune_ratio: share of the well-learned pool skipped each pruned epoch, in (0, 1) (InfoBatch: 0.5).
        full_data_fraction: final share of the epochs trained on all the data, in (0, 1] (InfoBatch: 0.125).
        well_learned_fraction: share of the data forming the pool, in (0, 1] (default 0.5: below the median).
    """

    name = "loss"

    def __init__(self, prune_ratio: float = 0.5, full_data_fraction: float = 0.125, well_learned_fraction: float = 0.5):
        self.prune_ratio = _check_fraction("prune_ratio", prune_ratio, allow_one=False)
        self.full_data_fraction = _check_fraction("full_data_fraction", full_data_fraction)
        self.well_learned_fraction = _check_fraction("well_learned_fraction", well_learned_fraction)

    def _pool_and_drop(self, num_examples: int) -> tuple[int, int]:
        pool = round(self.well_learned_fraction * num_examples)
        return pool, round(self.prune_ratio * pool)

    def pruned_epochs(self, num_epochs: int) -> range:
        full_at_end = math.ceil(self.full_data_fraction * num_epochs)
        return range(1, max(1, num_epochs - full_at_end))

    def epoch_sizes(self, num_examples: int, num_epochs: int) -> list[int]:
        _, num_drop = self._pool_and_drop(num_examples)
        pruned = self.pruned_epochs(num_epochs)
        return [num_examples - num_drop if epoch in pruned else num_examples for epoch in range(num_epochs)]

    def plan_epoch(self, epoch, previous, statistics, num_examples, seed) -> EpochPlan:
        if epoch not in self.pruned_epochs_for_run:
            return EpochPlan(torch.arange(num_examples))
        pool_size, num_drop = self._pool_and_drop(num_examples)
        losses = statistics.last_loss.cpu().nan_to_num(nan=float("inf"))
        pool = torch.argsort(losses, stable=True)[:pool_size]
        generator = keyed_generator(seed, epoch, _SALT_DROP)
        dropped = pool[torch.randperm(pool_size, generator=generator)[:num_drop]]
        keep_mask = torch.ones(num_examples, dtype=torch.bool)
        keep_mask[dropped] = False
        weights = torch.ones(num_examples)
        weights[pool] = pool_size / (pool_size - num_drop)  # 1 / (1 - drop probability)
        indices = keep_mask.nonzero().flatten()
        return EpochPlan(indices, weights[indices])

    def prepare(self, num_examples: int, num_epochs: int) -> None:
        self.pruned_epochs_for_run = set(self.pruned_epochs(num_epochs))

    def config(self) -> dict:
        return {
            "policy": self.name,
            "prune_ratio": self.prune_ratio,
            "full_data_fraction": self.full_data_fraction,
            "well_learned_fraction": self.well_learned_fraction,
        }


POLICIES: dict[str, type[PruningPolicy]] = {"none": NoPruning, "forgetting": ForgettingPolicy, "loss": LossPolicy}


class ExamplePruner:
    """Owns a run's pruning state: the policy, the statistics, the current epoch's plan and the planned sizes."""

    def __init__(self, policy: PruningPolicy, seed: int):
        self.policy = policy
        self.seed = seed
        self.statistics: ExampleStatistics | None = None
        self.plan: EpochPlan | None = None
        self.plan_epoch = -1
        self.sizes: list[int] = []
        self._weights_by_example: torch.Tensor | None = None

    @property
    def num_examples(self) -> int:
        return self.statistics.num_examples

    def begin(self, num_examples: int, num_epochs: int, device: torch.device | str = "cpu") -> None:
        """Set up for a run (before the dataloader is measured), planning every epoch's size and epoch 0's set."""
        if num_examples < 1:
            raise ValueError("example pruning needs a non-empty training set.")
        self.policy.prepare(num_examples, num_epochs)
        self.sizes = self.policy.epoch_sizes(num_examples, num_epochs)
        if any(size < 1 for size in self.sizes):
            raise ValueError(f"the {self.policy.name!r} policy would leave an epoch empty: planned sizes {self.sizes}.")
        self.statistics = ExampleStatistics(num_examples, device)
        self.plan, self.plan_epoch = None, -1
        self.advance_to(0)

    def epoch_size(self, epoch: int) -> int:
        return self.sizes[min(epoch, len(self.sizes) - 1)]

    def advance_to(self, epoch: int) -> None:
        """Decide the plan of `epoch` (idempotent for the current epoch)."""
        if epoch == self.plan_epoch:
            return
        plan = self.policy.plan_epoch(epoch, self.plan, self.statistics, self.num_examples, self.seed)
        if len(plan.indices) != self.epoch_size(epoch):
            raise RuntimeError(
                f"policy {self.policy.name!r} planned {self.epoch_size(epoch)} examples for epoch {epoch} but "
                f"returned {len(plan.indices)}; a policy must keep its planned sizes."
            )
        self.plan, self.plan_epoch = plan, epoch
        self._weights_by_example = None

    def end_epoch(self, epoch: int) -> None:
        """Gather the epoch's statistics from every rank and decide the next epoch."""
        self.statistics.end_epoch()
        if epoch + 1 < len(self.sizes):
            self.advance_to(epoch + 1)

    def loss_weights(self, example_index: torch.Tensor) -> torch.Tensor | None:
        """Per-example loss weights for a batch, looked up on the device (None when the plan has none)."""
        if self.plan.loss_weights is None:
            return None
        if self._weights_by_example is None or self._weights_by_example.device != example_index.device:
            weights = torch.ones(self.num_examples)
            weights[self.plan.indices] = self.plan.loss_weights
            self._weights_by_example = weights.to(example_index.device)
        return self._weights_by_example[example_index]

    def summary(self) -> dict[str, float | int | str]:
        kept = len(self.plan.indices)
        return {
            "epoch": self.plan_epoch,
            "kept": kept,
            "kept_fraction": kept / self.num_examples,
            "digest": digest(self.plan.indices),
        }

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"statistics.{k}": v for k, v in self.statistics.state_dict().items()}
        tensors["plan.indices"] = self.plan.indices.to(torch.int64).contiguous()
        if self.plan.loss_weights is not None:
            tensors["plan.loss_weights"] = self.plan.loss_weights.float().contiguous()
        return tensors

    def state_metadata(self) -> dict:
        return {
            "plan_epoch": self.plan_epoch,
            "seed": self.seed,
            "sizes": self.sizes,
            "num_examples": self.num_examples,
            "policy": self.policy.config(),
        }

    def load_state(self, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
        """Restore a saved state into a pruner that `begin` set up for the same run."""
        for key, expected in (("policy", self.policy.config()), ("seed", self.seed), ("sizes", self.sizes)):
            if metadata[key] != expected:
                raise ValueError(
                    f"the checkpoint's example pruning {key} {metadata[key]!r} differs from this run's {expected!r}; "
                    "resume with the same pruning settings, seed and epochs."
                )
        self.statistics.load_state_dict(
            {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("statistics.")}
        )
        self.plan = EpochPlan(tensors["plan.indices"], tensors.get("plan.loss_weights"))
        self.plan_epoch = metadata["plan_epoch"]
        self._weights_by_example = None


class PrunedEpochSampler(Sampler[int]):
    """Serves the current epoch's kept examples in a seeded random order, identical on every rank.

    Its length is the planned size of the current epoch (or of `measured_epoch` while the trainer measures every
    epoch's step count), so the DataLoader and accelerate's per-rank sharding of it report exact step counts. The
    order depends only on (seed, epoch, kept set).
    """

    def __init__(self, pruner: ExamplePruner):
        self.pruner = pruner
        self.measured_epoch: int | None = None

    def __len__(self) -> int:
        epoch = self.measured_epoch if self.measured_epoch is not None else max(self.pruner.plan_epoch, 0)
        return self.pruner.epoch_size(epoch)

    def __iter__(self) -> Iterator[int]:
        plan = self.pruner.plan
        generator = keyed_generator(self.pruner.seed, self.pruner.plan_epoch, _SALT_ORDER)
        order = plan.indices[torch.randperm(len(plan.indices), generator=generator)]
        return iter(order.tolist())


def find_pruning_sampler(dataloader) -> PrunedEpochSampler | None:
    """The `PrunedEpochSampler` behind a train dataloader, whether or not accelerate wrapped its batch sampler."""
    batch_sampler = getattr(dataloader, "batch_sampler", None)
    for candidate in (
        getattr(batch_sampler, "sampler", None),
        getattr(getattr(batch_sampler, "batch_sampler", None), "sampler", None),
    ):
        if isinstance(candidate, PrunedEpochSampler):
            return candidate
    return None
