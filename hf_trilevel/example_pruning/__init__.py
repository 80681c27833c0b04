"""The data level: `ExamplePruning` serves each epoch a planned subset of the training examples.

Policies decide the subset (`forgetting`: Tri-Level E-ViT's forgetting events; `loss`: InfoBatch; `random`: the
control every importance policy must beat; or a user's `PruningPolicy`), from statistics recorded on the device.
"""

from .policies import EpochPlan, ForgettingPolicy, LossPolicy, NoPruning, PruningPolicy, RandomPolicy
from .pruner import ExamplePruner
from .statistics import ExampleStatistics
from .technique import ExamplePruning

__all__ = [
    "EpochPlan",
    "ExamplePruner",
    "ExamplePruning",
    "ExampleStatistics",
    "ForgettingPolicy",
    "LossPolicy",
    "NoPruning",
    "PruningPolicy",
    "RandomPolicy",
]
