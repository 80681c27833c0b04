"""Example level, policies: how many examples each epoch serves (planned before training) and which ones.

Epoch sizes are planned before training, so the Trainer's `max_steps`, LR schedule, progress bar and gradient
accumulation are exact. A policy is deterministic given the statistics and the run seed, so every rank takes the same
decision without broadcasting it. A new policy subclasses `PruningPolicy`; `ExamplePruning(policy=...)`
then uses it with no change anywhere else.

The four built-in policies stay in this one module (about 400 lines, most of it `LossPolicy`'s budget arithmetic and
its messages): they are read side by side, share the keyed-generator salts and the base contract, and `POLICIES`
registers them here; a fifth would earn its own module.
"""

import math
from dataclasses import dataclass

import torch

from ..modeling.value_checks import check_fraction
from ..training.generators import keyed_generator
from .statistics import SALT_DROP, SALT_INITIAL, SALT_RANDOM, SALT_SWAP, ExampleStatistics


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

    A new policy subclasses this and implements the two methods; `ExamplePruning(policy=MyPolicy(...))`
    then uses it with no change anywhere else.
    """

    name = "custom"

    def check_epochs(self, num_epochs: int) -> None:
        """Check the settings against the run's length alone, before any data is loaded; raise `ValueError`."""

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


class KeptFractionPolicy(PruningPolicy):
    """A policy that serves `round(keep_fraction x N)` examples (at least one) in every epoch: `random` and
    `forgetting` share this budget, so comparing them compares only which examples they pick."""

    def __init__(self, keep_fraction: float):
        self.keep_fraction = check_fraction("keep_fraction", keep_fraction)

    def num_kept(self, num_examples: int) -> int:
        return max(1, round(self.keep_fraction * num_examples))

    def epoch_sizes(self, num_examples: int, num_epochs: int) -> list[int]:
        return [self.num_kept(num_examples)] * num_epochs


class RandomPolicy(KeptFractionPolicy):
    """A fresh uniform draw of `keep_fraction` of the data every epoch: the control for every importance policy.

    A data-pruning claim means little until importance beats chance at the same budget, so this serves exactly the
    kept-set size `forgetting` serves (`round(keep_fraction x N)`, at least 1) in every epoch, the first included,
    with no statistics read. Draws are keyed by (seed, epoch), so every rank and a resumed run draw the same set, and
    the sets differ from epoch to epoch: over a run every example is seen about `keep_fraction` of the time.

    Args:
        keep_fraction: share of the data served every epoch, in (0, 1].
    """

    name = "random"

    def __init__(self, keep_fraction: float = 0.8):
        super().__init__(keep_fraction)

    def plan_epoch(self, epoch, previous, statistics, num_examples, seed) -> EpochPlan:
        order = torch.randperm(num_examples, generator=keyed_generator(seed, epoch, SALT_RANDOM))
        return EpochPlan(order[: self.num_kept(num_examples)].sort().values)

    def config(self) -> dict:
        return {"policy": self.name, "keep_fraction": self.keep_fraction}


class ForgettingPolicy(KeptFractionPolicy):
    """Tri-Level E-ViT's example level: a fixed kept fraction, refreshed by swapping out unforgettable examples.

    Epoch 0 keeps a random `keep_fraction` of the data. At each swap epoch, the `swap_fraction x N` kept examples with
    the lowest forgetting rates leave, and as many return, drawn at random from the removed pool. The kept-set size
    never changes. Rates, not counts (`ExampleStatistics.forgetting_rates`: events per pair of consecutive
    presentations, smoothed towards the run's mean rate), so an example that returned a few epochs ago is not swapped
    straight back out for having had fewer chances to be forgotten; only examples presented at least twice can leave
    (one presentation says nothing about forgetting), and never-learned examples count as the most forgettable.

    Args:
        keep_fraction: share of the data kept every epoch, in (0, 1] (paper: 0.8).
        swap_fraction: share of the whole data swapped at each swap epoch, in (0, 1] (paper: 0.05).
        swap_epochs: 0-indexed epochs that start with a swap. Default: every tenth of training until half-way,
            scaling the paper's epochs 30, 60, ..., 150 of 300 to the run, from epoch 2 on (the first epoch at which
            an example can have been presented twice).
    """

    name = "forgetting"

    def __init__(self, keep_fraction: float = 0.8, swap_fraction: float = 0.05, swap_epochs: list[int] | None = None):
        super().__init__(keep_fraction)
        self.swap_fraction = check_fraction("swap_fraction", swap_fraction)
        if swap_epochs is not None and (
            isinstance(swap_epochs, (str, bytes))
            or not all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in swap_epochs)
        ):
            raise ValueError(f"`swap_epochs` must be a list of epoch numbers >= 1, got {swap_epochs!r}.")
        self.swap_epochs = sorted(set(swap_epochs)) if swap_epochs is not None else None

    def resolved_swap_epochs(self, num_epochs: int) -> list[int]:
        if self.swap_epochs is not None:
            return self.swap_epochs
        return sorted({round(num_epochs * tenth / 10) for tenth in range(1, 6)} - {0, 1})

    def check_epochs(self, num_epochs: int) -> None:
        beyond = [e for e in self.resolved_swap_epochs(num_epochs) if e >= num_epochs]
        if not beyond:
            return
        if num_epochs == 1:
            raise ValueError(
                f"`swap_epochs` {beyond} are beyond training: `num_train_epochs` 1 has no epoch after the "
                "first to swap at; train for more epochs or leave `swap_epochs` unset."
            )
        raise ValueError(
            f"`swap_epochs` {beyond} are beyond training: epochs are 0-indexed and `num_train_epochs` "
            f"{num_epochs} runs epochs 0 to {num_epochs - 1}, so swap epochs must be in [1, {num_epochs - 1}]."
        )

    def prepare(self, num_examples: int, num_epochs: int) -> None:
        self.check_epochs(num_epochs)
        self.swap_epochs_for_run = set(self.resolved_swap_epochs(num_epochs))

    def plan_epoch(self, epoch, previous, statistics, num_examples, seed) -> EpochPlan:
        num_kept = self.num_kept(num_examples)
        if previous is None:
            order = torch.randperm(num_examples, generator=keyed_generator(seed, epoch, SALT_INITIAL))
            return EpochPlan(order[:num_kept].sort().values)
        if epoch not in self.swap_epochs_for_run:
            return previous

        kept = previous.indices
        removed_mask = torch.ones(num_examples, dtype=torch.bool)
        removed_mask[kept] = False
        removed = removed_mask.nonzero().flatten()
        scores = statistics.forgetting_rates().cpu()[kept]
        scores[statistics.presentations.cpu()[kept] < 2] = float("inf")  # no evidence yet: it stays
        can_leave = int(scores.isfinite().sum())  # never-learned (infinite) and unproven examples stay
        num_swap = min(round(self.swap_fraction * num_examples), len(kept) - 1, len(removed), can_leave)
        if num_swap <= 0:
            return previous
        generator = keyed_generator(seed, epoch, SALT_SWAP)
        # Ties (many examples have no forgetting event) are broken at random, not by dataset order: a random order,
        # then a stable sort by rate.
        shuffled = torch.randperm(len(kept), generator=generator)
        ranking = shuffled[torch.argsort(scores[shuffled], stable=True)]
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
    share of the pool is skipped at random, and the kept pool examples have their loss scaled by `pool / kept pool`,
    so the expected gradient equals that of the full data; the rest of the data (the highest losses) is always served.
    The first epoch (no losses yet) and the final `full_data_fraction` of epochs use all the data.

    The share skipped is either `prune_ratio` of the pool (InfoBatch's knob: the run then serves
    `1 - prune_ratio x well_learned_fraction` in pruned epochs, more over the run because of the full epochs) or
    whatever a `budget` needs: `budget` is the share of the full-data examples the whole run serves, full epochs
    counted, the same meaning as `random`'s and `forgetting`'s `keep_fraction`, so policies compare at equal cost.
    With a budget and no `well_learned_fraction`, half of each pruned epoch's served examples are the highest losses
    and half are drawn from the rest (the pool is `(N + skipped) / 2` examples).

    InfoBatch's pool is the examples below the *mean* loss, whose size changes from epoch to epoch. A lowest-loss
    quantile keeps the same unbiased rescaling but makes every epoch's size known in advance.

    Args:
        prune_ratio: share of the well-learned pool skipped each pruned epoch, in (0, 1) (InfoBatch: 0.5; the
            default without `budget`).
        full_data_fraction: final share of the epochs trained on all the data, in (0, 1] (InfoBatch: 0.125).
        well_learned_fraction: share of the data forming the pool, in (0, 1] (default 0.5 without `budget`: below the
            median).
        budget: share of the full-data examples served over the run, in (0, 1); replaces `prune_ratio`.
    """

    name = "loss"

    def __init__(
        self,
        prune_ratio: float | None = None,
        full_data_fraction: float = 0.125,
        well_learned_fraction: float | None = None,
        budget: float | None = None,
    ):
        if budget is not None and prune_ratio is not None:
            raise ValueError(
                "give the loss policy `budget` (share of the run's examples served) or `prune_ratio` (share of the "
                "pool skipped), not both: a budget decides how many are skipped."
            )
        self.budget = None if budget is None else check_fraction("budget", budget, allow_one=False)
        self.prune_ratio = None
        if budget is None:
            prune_ratio = 0.5 if prune_ratio is None else prune_ratio
            self.prune_ratio = check_fraction("prune_ratio", prune_ratio, allow_one=False)
        self.full_data_fraction = check_fraction("full_data_fraction", full_data_fraction)
        self.well_learned_fraction = 0.5 if budget is None else None
        if well_learned_fraction is not None:
            self.well_learned_fraction = check_fraction("well_learned_fraction", well_learned_fraction)

    def pruned_epochs(self, num_epochs: int) -> range:
        full_at_end = math.ceil(self.full_data_fraction * num_epochs)
        return range(1, max(1, num_epochs - full_at_end))

    def check_epochs(self, num_epochs: int) -> None:
        if self.budget is None:
            return
        pruned = len(self.pruned_epochs(num_epochs))
        lowest = (num_epochs - pruned) / num_epochs  # every pruned epoch serving nothing
        if self.budget <= lowest:
            raise ValueError(self._budget_out_of_reach(num_epochs))

    def _budget_out_of_reach(self, num_epochs: int) -> str:
        """Why `budget` cannot be reached in `num_epochs`, the lowest budget that can, and the flags that help.

        The first epoch (no losses yet) and the final `ceil(full_data_fraction x epochs)` serve every example, so a
        run of `E` epochs of which `F` are full serves at least `F / E` of its examples: a budget must lie above that.
        With no pruned epoch left (`F = E`) no budget below 1 can be reached at all.
        """
        budget, fraction = self.budget, self.full_data_fraction
        full = num_epochs - len(self.pruned_epochs(num_epochs))
        final = full - 1  # the first epoch is always full
        settings = f"`num_train_epochs` {num_epochs} and `full_data_fraction` {fraction:g}"
        which = "the first, which has no losses yet to prune by"
        if final:
            which += f", and the last {final}: `full_data_fraction` x `num_train_epochs`, rounded up"
        lowest = full / num_epochs
        if full >= num_epochs:
            every = "the only epoch uses" if num_epochs == 1 else f"all {num_epochs} epochs use"
            text = (
                f"the loss policy's `budget` {budget:g} cannot be reached with {settings}: {every} all the data "
                f"({which}), so no epoch is pruned and no budget below 1 can be reached."
            )
            remedies = []
        else:
            text = (
                f"the loss policy's `budget` {budget:g} is out of reach with {settings}: {full} of the {num_epochs} "
                f"epochs use all the data ({which}), so the lowest reachable budget is above {lowest:.4g}."
            )
            remedies = [f"raise `budget` above {lowest:.4g}"]
        longer = self._epochs_for_budget(num_epochs)
        if longer is not None:
            remedies.append(f"train longer (`num_train_epochs` {longer} or more)")
        most_final = math.ceil(budget * num_epochs) - 2  # 1 + the last full epochs must stay below budget x epochs
        if 1 <= most_final < final:
            lower = math.floor(most_final / num_epochs * 1e4) / 1e4
            while lower > 0 and math.ceil(lower * num_epochs) > most_final:  # rounded up as `pruned_epochs` does
                lower -= 1e-4
            remedies.append(f"lower `full_data_fraction` to {lower:.4g} or less")
        elif longer is None:
            remedies.append(f"lower `full_data_fraction` below the budget and train longer than {num_epochs} epochs")
        remedies[0] = remedies[0][0].upper() + remedies[0][1:]
        return f"{text} {', '.join(remedies[:-1])}{', or ' if len(remedies) > 1 else ''}{remedies[-1]}."

    def _epochs_for_budget(self, num_epochs: int) -> int | None:
        """The fewest epochs beyond `num_epochs` at which `budget` is reachable with this `full_data_fraction`, or
        None when no run length reaches it (the full epochs' share tends to `full_data_fraction` from above)."""
        gap = self.budget - self.full_data_fraction
        if gap <= 0:
            return None
        enough = max(math.ceil(2 / gap), num_epochs + 1)  # full share < (2 + fraction x E) / E <= budget
        for epochs in range(num_epochs + 1, min(enough, num_epochs + 100_000)):
            if self.budget > (epochs - len(self.pruned_epochs(epochs))) / epochs:
                return epochs
        return enough

    def _skips(self, num_examples: int, num_epochs: int) -> list[int]:
        """Examples skipped in each epoch (0 in full epochs)."""
        pruned = self.pruned_epochs(num_epochs)
        skips = [0] * num_epochs
        if self.budget is None:
            pool = self._pool_size(num_examples, 0)
            skip = min(round(self.prune_ratio * pool), max(pool - 1, 0))
            for epoch in pruned:
                skips[epoch] = skip
            return skips
        if not pruned:  # refused by check_epochs; no epoch to skip from
            return skips
        # Served = round(budget x N x E) exactly (rounding the skipped share instead can miss by one).
        total = num_examples * num_epochs - round(self.budget * num_examples * num_epochs)
        for position, epoch in enumerate(pruned):
            skips[epoch] = total // len(pruned) + (position < total % len(pruned))
        return skips

    def _pool_size(self, num_examples: int, skip: int) -> int:
        if self.well_learned_fraction is not None:
            return round(self.well_learned_fraction * num_examples)
        return math.ceil((num_examples + skip) / 2)  # half of the served examples are the highest losses

    def prepare(self, num_examples: int, num_epochs: int) -> None:
        self.check_epochs(num_epochs)
        self.skips_for_run = self._skips(num_examples, num_epochs)
        for skip in set(self.skips_for_run) - {0}:
            pool = self._pool_size(num_examples, skip)
            if skip <= pool - 1:  # at least one pool example stays, so the rescaling is finite
                continue
            if self.well_learned_fraction is not None and skip < num_examples - 1:
                raise ValueError(
                    f"the loss policy's `budget` {self.budget:g} skips {skip} of {num_examples} examples per pruned "
                    f"epoch, more than the well-learned pool of {pool} (`well_learned_fraction` "
                    f"{self.well_learned_fraction:g}) can give while keeping one; raise `well_learned_fraction` "
                    f"to at least {(skip + 1) / num_examples:.4g}, or the budget."
                )
            pruned = len(self.pruned_epochs(num_epochs))
            reachable = 1 - pruned * max(num_examples - 2, 0) / (num_examples * num_epochs)
            raise ValueError(
                f"the loss policy's `budget` {self.budget:g} would skip {skip} of {num_examples} examples in a pruned "
                f"epoch, leaving too few to sample from; on {num_examples} examples and `num_train_epochs` "
                f"{num_epochs} the budget must be at least {reachable:.4g}."
            )

    def epoch_sizes(self, num_examples: int, num_epochs: int) -> list[int]:
        return [num_examples - skip for skip in self._skips(num_examples, num_epochs)]

    def plan_epoch(self, epoch, previous, statistics, num_examples, seed) -> EpochPlan:
        num_drop = self.skips_for_run[epoch]
        if num_drop == 0:  # a full epoch, or a pool too small to skip from (a tiny data set): all data, unweighted
            return EpochPlan(torch.arange(num_examples))
        pool_size = self._pool_size(num_examples, num_drop)
        losses = statistics.last_loss.cpu().nan_to_num(nan=float("inf"))
        pool = torch.argsort(losses, stable=True)[:pool_size]
        generator = keyed_generator(seed, epoch, SALT_DROP)
        dropped = pool[torch.randperm(pool_size, generator=generator)[:num_drop]]
        keep_mask = torch.ones(num_examples, dtype=torch.bool)
        keep_mask[dropped] = False
        weights = torch.ones(num_examples)
        weights[pool] = pool_size / (pool_size - num_drop)  # 1 / (1 - drop probability)
        indices = keep_mask.nonzero().flatten()
        return EpochPlan(indices, weights[indices])

    def config(self) -> dict:
        config = {
            "policy": self.name,
            "prune_ratio": self.prune_ratio,
            "full_data_fraction": self.full_data_fraction,
            "well_learned_fraction": self.well_learned_fraction,
        }
        return config if self.budget is None else config | {"budget": self.budget}  # older checkpoints resume


POLICIES: dict[str, type[PruningPolicy]] = {
    "none": NoPruning,
    "random": RandomPolicy,
    "forgetting": ForgettingPolicy,
    "loss": LossPolicy,
}
