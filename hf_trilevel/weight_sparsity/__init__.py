"""The weight level (SViTE): sparse weights within a fixed budget, unstructured or structured, and slimming.

`WeightSparsity` prunes and regrows weight masks (or whole heads and MLP neurons) during training; `slim` removes
the pruned heads and neurons from a trained model, so structured sparsity is faster on any hardware.
"""

from .slimming import slim, structured_unit_masks
from .technique import WeightSparsity

__all__ = ["WeightSparsity", "slim", "structured_unit_masks"]
