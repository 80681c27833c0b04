"""Unstructured weight masks (SViTE): which weights are masked, how dense each starts, and one prune-and-grow step.

Pure tensor functions, no Trainer: `hf_trilevel.weight_sparsity.technique.WeightSparsity` composes them.

* **What is masked**: the 2-D weights, i.e. the patch projection (a convolution, read as `[out, in * kh * kw]`), the
  q/k/v/o projections, fc1, fc2 and the classifier. Biases, norms, the class token and the position embeddings stay
  dense: they are a sliver of the parameters and zeroing them removes no multiply-add.
* **Erdos-Renyi-Kernel densities** (`erk_densities`): a layer's density is proportional to `sum(shape) /
  prod(shape)`, so small layers (the patch projection, the classifier) keep more of their weights than the wide MLP
  matrices, at one overall budget; a layer the rule would make denser than 1 is kept dense and the rest re-solved.
* **Prune and grow** (`prune_and_grow`, RigL as SViTE uses it): drop the active weights with the smallest magnitude,
  regrow as many at inactive positions with the largest gradient magnitude (the dense gradient, which the masked
  weights still receive). The count of active weights never changes. With the `2:4` pattern every group of four
  consecutive inputs keeps exactly two, the layout sparse tensor cores run (`torch.sparse.to_sparse_semi_structured`).
"""

import math
import re
from collections.abc import Iterable

import torch
from torch import nn

from ..modeling.value_checks import check_fraction

#: Module names (relative to the model) whose weight is masked: the patch projection, q/k/v/o, fc1, fc2, the
#: classifier (DeiT's two heads: `cls_classifier`, `distillation_classifier`); CLIP's and SigLIP's names for the
#: same (`embeddings.patch_embedding`, `self_attn.q_proj` ... `self_attn.out_proj`).
MASKED_MODULE = re.compile(
    r"(^|\.)patch_embeddings\.projection$|(^|\.)attention\.[qkvo]_proj$|(^|\.)mlp\.fc[12]$"
    r"|(^|\.)embeddings\.patch_embedding$|(^|\.)self_attn\.(q|k|v|out)_proj$"
    r"|^(cls_|distillation_)?classifier$"
)
#: Modules outside the vision tower's layers that SViTE leaves dense although their names match: an image-text
#: model's text tower and SigLIP's attention-pooling head (which its image classifier does not even read).
UNMASKED_MODULE = re.compile(r"(^|\.)(text_model|head)\.")
PATTERNS = ("unstructured", "2:4")
GROUP = 4  # 2:4: two of every four consecutive inputs
GROUP_KEPT = 2


def masked_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights SViTE masks, by parameter name (`vit.layers.0.mlp.fc1.weight`), in model order."""
    found = {
        f"{name}.weight": module.weight
        for name, module in model.named_modules()
        if MASKED_MODULE.search(name)
        and not UNMASKED_MODULE.search(name)
        and isinstance(module, (nn.Linear, nn.Conv2d))
    }
    if not found:
        raise ValueError(
            f"{type(model).__name__} has none of the weights SViTE masks (patch projection, q/k/v/o_proj, fc1, fc2, "
            "classifier): weight sparsity needs a TriLevel (or transformers ViT-layout) model."
        )
    return found


@torch.no_grad()
def count_nonzero_weights(weights: Iterable[torch.Tensor]) -> tuple[int, int] | None:
    """`(non-zero, total)` entries of `weights` (e.g. `masked_weights(model).values()`), or None if there are none."""
    nonzero = total = 0
    for tensor in weights:
        nonzero += int(torch.count_nonzero(tensor.detach()))
        total += tensor.numel()
    return (nonzero, total) if total else None


def nonzero_fraction(model: nn.Module) -> float:
    """Share of non-zero entries over the weights `masked_weights` names (what weight sparsity leaves)."""
    nonzero, total = count_nonzero_weights(masked_weights(model).values())
    return nonzero / total


def as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    """A weight as `[outputs, inputs]` (a convolution's kernel folded into its inputs), as a view."""
    return tensor.reshape(tensor.shape[0], -1)


def erk_densities(shapes: dict[str, tuple[int, ...]], density: float) -> dict[str, float]:
    """Per-layer densities whose non-zeros add up to `density` of all weights, by the Erdos-Renyi-Kernel rule."""
    density = check_fraction("weight_density", density)
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    raw = {name: sum(shape) / sizes[name] for name, shape in shapes.items()}
    budget = density * sum(sizes.values())
    dense: set[str] = set()
    while True:
        sparse = [name for name in shapes if name not in dense]
        if not sparse:
            return dict.fromkeys(shapes, 1.0)
        scale = (budget - sum(sizes[name] for name in dense)) / sum(raw[name] * sizes[name] for name in sparse)
        densest = max(sparse, key=lambda name: raw[name])
        if scale * raw[densest] <= 1.0:
            return {name: 1.0 if name in dense else scale * raw[name] for name in shapes}
        dense.add(densest)  # one at a time: making it dense lowers the scale for the others


def active_count(density: float, size: int) -> int:
    """Non-zeros a layer of `size` weights keeps at `density` (at least one)."""
    return max(1, min(size, round(density * size)))


def check_pattern(pattern: str, shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse an unknown pattern, or `2:4` on a weight whose input size is not a multiple of 4."""
    if pattern not in PATTERNS:
        raise ValueError(f"`pattern` must be one of {list(PATTERNS)}, got {pattern!r}.")
    if pattern != "2:4":
        return
    for name, shape in shapes.items():
        inputs = math.prod(shape[1:])
        if inputs % GROUP:
            raise ValueError(
                f"`pattern` '2:4' keeps two of every four consecutive inputs of each weight, but {name} has {inputs} "
                "inputs, not a multiple of 4; use pattern 'unstructured' for this model."
            )


def random_mask(shape: tuple[int, ...], count: int, generator: torch.Generator) -> torch.Tensor:
    """A bool mask of `shape` with exactly `count` positions set, uniformly at random."""
    size = math.prod(shape)
    mask = torch.zeros(size, dtype=torch.bool)
    mask[torch.randperm(size, generator=generator)[:count]] = True
    return mask.reshape(shape)


def largest_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """A bool mask of `scores`' shape keeping its `count` largest entries."""
    flat = scores.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.topk(count, sorted=False).indices] = True
    return mask.reshape(scores.shape)


def two_four_mask(scores: torch.Tensor) -> torch.Tensor:
    """A bool mask keeping, in every group of four consecutive inputs, the two largest `scores`."""
    matrix = as_matrix(scores)
    groups = matrix.reshape(matrix.shape[0], -1, GROUP)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, groups.topk(GROUP_KEPT, dim=-1, sorted=False).indices, True)
    return mask.reshape(scores.shape)


def is_two_four(mask: torch.Tensor) -> bool:
    """Whether every group of four consecutive inputs of `mask` has exactly two positions set."""
    groups = as_matrix(mask).reshape(mask.shape[0], -1, GROUP)
    return bool((groups.sum(-1) == GROUP_KEPT).all())


def initial_mask(
    weight: torch.Tensor, density: float, pattern: str, how: str, generator: torch.Generator
) -> torch.Tensor:
    """A layer's first mask: random (training from scratch, as SViTE) or by magnitude (sparsifying trained weights)."""
    scores = weight.detach().abs().float().cpu() if how == "magnitude" else None
    if pattern == "2:4":
        if scores is None:
            scores = torch.rand(weight.shape, generator=generator)
        return two_four_mask(scores)
    count = active_count(density, weight.numel())
    if scores is None:
        return random_mask(tuple(weight.shape), count, generator)
    return largest_mask(scores, count)


def prune_count(death_rate: float, active: int) -> int:
    """Weights one update drops and regrows in a layer: `ceil(death_rate * active)`, as SViTE."""
    return min(active, math.ceil(death_rate * active))


def prune_and_grow(
    mask: torch.Tensor, weight: torch.Tensor, gradient: torch.Tensor, count: int, pattern: str = "unstructured"
) -> torch.Tensor:
    """The next mask: drop the `count` active weights of smallest |weight|, regrow as many of largest |gradient|.

    Regrowth may pick any position inactive after the drop, a just-dropped one included (its gradient then says it
    matters more than its magnitude did). With `2:4` the drop is the same and each group of four is refilled to two
    by gradient, so the total stays half the weights. The same tensors give the same mask (the callback broadcasts
    rank 0's anyway).
    """
    magnitude = torch.where(mask, weight.detach().abs(), torch.inf)
    drop = largest_mask(-magnitude, count)
    kept = mask & ~drop
    growth = torch.nan_to_num(gradient.detach().abs(), nan=0.0, posinf=0.0)  # an overflowed gradient never wins
    if pattern == "2:4":
        return two_four_mask(torch.where(kept, torch.inf, growth))
    grow = largest_mask(torch.where(kept, -torch.inf, growth), count)
    return kept | grow


def cosine_death_rate(step: int, end_step: int, start: float, end: float) -> float:
    """The share of each layer's active weights an update at `step` replaces: `start` cosine-decayed to `end`."""
    progress = min(max(step / end_step, 0.0), 1.0) if end_step > 0 else 1.0
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


__all__ = [
    "MASKED_MODULE",
    "PATTERNS",
    "active_count",
    "as_matrix",
    "check_pattern",
    "cosine_death_rate",
    "count_nonzero_weights",
    "erk_densities",
    "initial_mask",
    "is_two_four",
    "largest_mask",
    "masked_weights",
    "nonzero_fraction",
    "prune_and_grow",
    "prune_count",
    "random_mask",
    "two_four_mask",
]
