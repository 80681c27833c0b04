"""Example level of Tri-Level E-ViT: the pruner that owns a run's pruning state, and the sampler that serves it.

The pieces: `statistics.py` records what each example did, `policies.py` decides which examples each epoch serves,
this module holds the run's state (`ExamplePruner`) and serves the current epoch's kept set (`PrunedEpochSampler`).
`ExamplePruning` (`technique.py`) plugs them into the Trainer through the training-technique seam.
"""

import hashlib
import numbers
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ..training.generators import keyed_generator
from ..training.technique import find_planned_sampler, is_distributed
from .policies import POLICIES, EpochPlan, ForgettingPolicy, LossPolicy, NoPruning, PruningPolicy, RandomPolicy
from .statistics import SALT_ORDER, ExampleStatistics, digest

T = TypeVar("T")
DETERMINISM_ADVICE = (
    "a policy must decide from its arguments alone: draw randomness only from the `seed` `plan_epoch` is given, "
    "e.g. `keyed_generator(seed, epoch, salt)` from hf_trilevel.training.generators, never from global state "
    "(`torch.randperm` or `torch.rand` without `generator=`, `random`, `numpy.random`)."
)


def describe_policy(policy: PruningPolicy) -> str:
    """A policy's class and settings, for error messages: `config()` where the policy defines it, else its public
    attributes (a user's policy that keeps its settings as attributes still shows them)."""
    if type(policy).config is not PruningPolicy.config:
        settings = {key: value for key, value in policy.config().items() if key != "policy"}
    else:
        settings = {key: value for key, value in vars(policy).items() if not key.startswith("_")}
    shown = [f"{key}={_shortened(repr(value))}" for key, value in settings.items()]
    return f"{type(policy).__name__}({', '.join(shown)})"


def _shortened(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _fingerprint(text: str) -> int:
    """A 40-bit integer fingerprint of `text`, exact in an int64 tensor (as a kept-set `digest` read in base 16)."""
    return int(hashlib.sha1(text.encode()).hexdigest()[:10], 16)


FAILED = -1  # what a process that raised contributes instead of a fingerprint (fingerprints are >= 0)


def decide_on_every_process(
    decide: Callable[[], T], fingerprint: Callable[[T], int], device
) -> tuple[T, tuple[int, int] | None]:
    """`decide()` on this process, and the lowest and highest fingerprint over the processes when they differ (None
    when every process decided the same); one all-reduce.

    Every process reaches the collective even when `decide` raises on some only: the raising process re-raises its
    own error after it, and the others stop with a `ValueError` pointing at it, instead of waiting forever.
    """
    try:
        result, error = decide(), None
    except Exception as caught:  # re-raised below, once every process has taken part in the collective
        result, error = None, caught
    low, high = extremes_across_processes(FAILED if error is not None else fingerprint(result), device)
    if error is not None:
        raise error
    if low == FAILED:
        raise ValueError(
            "the example pruning policy raised an error on another process (its traceback is in that process's "
            "output); every process must take the same decision."
        )
    return result, (low, high) if low != high else None


def extremes_across_processes(value: int, device: torch.device | str) -> tuple[int, int]:
    """The lowest and highest `value` over every process, from one all-reduce of two int64s (gloo and NCCL alike);
    `(value, value)` without several processes. Every process must call it at the same point."""
    if not is_distributed():
        return value, value
    both = torch.tensor([value, -value], dtype=torch.int64, device=device)
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    return -int(both[1]), int(both[0])


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
        """Set up for a run (before the dataloader is measured), planning every epoch's size and epoch 0's set.

        The planned sizes are checked here, before training: one whole number from 1 to `num_examples` per epoch,
        the same on every process.
        """
        if num_examples < 1:
            raise ValueError("example pruning needs a non-empty training set.")

        def plan_sizes():
            self.policy.prepare(num_examples, num_epochs)
            return self.policy.epoch_sizes(num_examples, num_epochs)

        sizes, differ = decide_on_every_process(plan_sizes, lambda sizes: _fingerprint(repr(sizes)), device)
        problem = self._sizes_problem(sizes, num_examples, num_epochs)
        if problem is not None:
            raise ValueError(f"the example pruning policy {describe_policy(self.policy)} {problem}")
        if differ:
            raise ValueError(
                f"the example pruning policy {describe_policy(self.policy)} planned different epoch sizes on "
                f"different processes (this one: {sizes}); `epoch_sizes` must depend on its arguments and the "
                "policy's settings alone, never on global random state."
            )
        self.sizes = [int(size) for size in sizes]
        self.statistics = ExampleStatistics(num_examples, device)
        self.plan, self.plan_epoch = None, -1
        self.advance_to(0)

    def _sizes_problem(self, sizes: object, num_examples: int, num_epochs: int) -> str | None:
        """Why `epoch_sizes` cannot be trained (one whole number in [1, num_examples] per epoch), or None."""
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or len(sizes) != num_epochs:
            return (
                f"returned {sizes!r} from `epoch_sizes`, which must be a list of {num_epochs} example counts, one "
                f"per epoch of `num_train_epochs` {num_epochs}."
            )
        for epoch, size in enumerate(sizes):
            if isinstance(size, bool) or not isinstance(size, numbers.Integral) or not 1 <= size <= num_examples:
                return (
                    f"plans {size!r} examples for epoch {epoch}, but an epoch serves a whole number of examples "
                    f"from 1 to the training set's {num_examples}; check the policy's settings (its `epoch_sizes` "
                    "must stay within the data)."
                )
        return None

    def epoch_size(self, epoch: int) -> int:
        return self.sizes[min(epoch, len(self.sizes) - 1)]

    def advance_to(self, epoch: int) -> None:
        """Decide the plan of `epoch` (idempotent for the current epoch).

        The plan must hold the epoch's planned number of examples, all within the training set, and (with several
        processes) be the same on every process: its digest is compared across processes, one small all-reduce.
        """
        if epoch == self.plan_epoch:
            return
        plan, differ = decide_on_every_process(
            lambda: self.policy.plan_epoch(epoch, self.plan, self.statistics, self.num_examples, self.seed),
            lambda plan: int(digest(plan.indices), 16),  # the digest (10 hex digits, as logged) as a 40-bit integer
            self.statistics.device,
        )
        problem = self._plan_problem(epoch, plan)
        if problem is not None:
            raise ValueError(f"the example pruning policy {describe_policy(self.policy)} {problem}")
        if differ:
            raise ValueError(
                f"the example pruning policy {describe_policy(self.policy)} planned different examples for epoch "
                f"{epoch} on different processes (kept-set digests {differ[0]:010x} and {differ[1]:010x}), so the "
                f"processes would train on different data; {DETERMINISM_ADVICE}"
            )
        self.plan, self.plan_epoch = plan, epoch
        self._weights_by_example = None

    def _plan_problem(self, epoch: int, plan: EpochPlan) -> str | None:
        """Why a policy's plan for `epoch` cannot be served (wrong count, indices outside the data), or None."""
        planned, returned = self.epoch_size(epoch), len(plan.indices)
        if returned != planned:
            return (
                f"planned {planned} examples for epoch {epoch} (`epoch_sizes`) but its `plan_epoch` returned "
                f"{returned}; `plan_epoch` must return exactly the planned number of dataset indices, since the "
                "run's steps and learning-rate schedule were fixed from the planned sizes."
            )
        low, high = (int(plan.indices.min()), int(plan.indices.max())) if returned else (0, 0)
        if low < 0 or high >= self.num_examples:
            return (
                f"planned indices from {low} to {high} for epoch {epoch}, outside the training set's positions 0 "
                f"to {self.num_examples - 1}."
            )
        return None

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

    def examples_presented(self) -> int:
        """Example presentations over the finished epochs: each epoch's distinct examples seen on any rank, summed.

        This is what was trained, not what was planned (`sizes`): batches dropped by `dataloader_drop_last` never
        reach the statistics. Identical on every rank, and restored with the statistics on resume.
        """
        return int(self.statistics.presentations.sum())

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

    @property
    def planned_epochs(self) -> int:
        """Number of epochs whose sizes are planned; the trainer measures each by setting `measured_epoch`."""
        return len(self.pruner.sizes)

    @property
    def current_epoch(self) -> int:
        """The epoch whose plan the sampler serves now."""
        return self.pruner.plan_epoch

    def __len__(self) -> int:
        epoch = self.measured_epoch if self.measured_epoch is not None else max(self.pruner.plan_epoch, 0)
        return self.pruner.epoch_size(epoch)

    def __iter__(self) -> Iterator[int]:
        plan = self.pruner.plan
        generator = keyed_generator(self.pruner.seed, self.pruner.plan_epoch, SALT_ORDER)
        order = plan.indices[torch.randperm(len(plan.indices), generator=generator)]
        return iter(order.tolist())


def find_pruning_sampler(dataloader) -> PrunedEpochSampler | None:
    """The `PrunedEpochSampler` behind a train dataloader, whether or not accelerate wrapped its batch sampler."""
    sampler = find_planned_sampler(dataloader)
    return sampler if isinstance(sampler, PrunedEpochSampler) else None


__all__ = [
    "POLICIES",
    "EpochPlan",
    "ExamplePruner",
    "ExampleStatistics",
    "ForgettingPolicy",
    "LossPolicy",
    "NoPruning",
    "PrunedEpochSampler",
    "PruningPolicy",
    "RandomPolicy",
    "describe_policy",
    "digest",
    "extremes_across_processes",
    "find_pruning_sampler",
]
