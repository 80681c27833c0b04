"""Example level of Tri-Level E-ViT: the pruner that owns a run's pruning state, and the sampler that serves it.

The pieces: `statistics.py` records what each example did, `policies.py` decides which examples each epoch serves,
this module holds the run's state (`ExamplePruner`) and serves the current epoch's kept set (`PrunedEpochSampler`).
`ExamplePruning` (`technique.py`) plugs them into the Trainer through the training-technique seam.
"""

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from ..training.generators import keyed_generator
from ..training.technique import find_planned_sampler
from .policies import POLICIES, EpochPlan, ForgettingPolicy, LossPolicy, NoPruning, PruningPolicy, RandomPolicy
from .statistics import SALT_ORDER, ExampleStatistics, digest


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
    "digest",
    "find_pruning_sampler",
]
