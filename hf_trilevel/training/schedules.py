"""Schedules of the training techniques, as pure functions of the optimizer step: nothing to save on a checkpoint.

Shared by the techniques that move a model setting over training (`KeepRateSchedule` and `DenseSparseTraining` warm
the token keep rate up; `SelectorTemperatureSchedule` anneals the learned scores' temperature), so that none of them
imports another's internals.
"""

import math


def cosine_keep_rate(
    step: int, total_steps: int, target: float, warmup_fraction: float, decay_fraction: float
) -> float:
    """Keep rate at `step`: 1.0 during warm-up, then a cosine from 1.0 down to `target`, then `target`."""
    warmup_steps = warmup_fraction * total_steps
    decay_steps = max(decay_fraction * total_steps, 1.0)
    progress = min(max((step - warmup_steps) / decay_steps, 0.0), 1.0)
    return target + (1.0 - target) * 0.5 * (1.0 + math.cos(math.pi * progress))


def linear_temperature(step: int, total_steps: int, start: float, end: float) -> float:
    """Temperature at `step`: a straight line from `start` (step 0) to `end` (the last step)."""
    progress = min(max(step / max(total_steps - 1, 1), 0.0), 1.0)
    return start + (end - start) * progress


__all__ = ["cosine_keep_rate", "linear_temperature"]
