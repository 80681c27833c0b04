"""Token merging (ToMe-style bipartite soft matching): average similar tokens instead of dropping them.

In every layer with `r > 0`, between the attention block and the MLP (after the pruning layer's drop, if the layer
is one), the current patch tokens are split alternately into two sets A and B; each A token is matched to its most
similar B token (cosine similarity of the attention keys averaged over heads, which the attention block computed
anyway) and the `r` A tokens with the best matches are merged into their partners. A merged token is the
size-weighted mean of what it holds, and its size (how many original patches it holds) is carried on, so later
merges stay true averages. With proportional attention, `log(size)` is added to every key's attention logit, so a
token that stands for `s` patches gets the attention those `s` copies would have had; it is an additive mask of
shape `[batch, 1, 1, tokens]`, which keeps `sdpa` on its fused kernel.

The class token (position 0) is never a candidate, nor is a fused token (last, after a fusing pruning layer): it is
a summary of dropped tokens, not a patch. Surviving tokens keep their original relative order, so the reported
positions (a merged token reports the position of its B token, the one that stayed) stay ascending.

The matching itself is not differentiable (as in ToMe); gradients flow through the averages.

This file is part of the remote-code set copied into every saved checkpoint: it imports only torch and the standard
library.
"""

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .token_reduction import num_kept_tokens
from .value_checks import check_int


@dataclass(frozen=True)
class LayerTokens:
    """Patch tokens one layer sees: entering its attention block, after its drop (a pruning layer), after its merge."""

    attention: int
    after_drop: int
    after_merge: int


def max_merge(num_patches: int) -> int:
    """The most patch tokens one layer can merge away: every A token (A holds every other patch, the larger half
    when the count is odd) merges at most once, and at least one token must stay; so `num_patches // 2`."""
    return num_patches // 2


def layer_token_counts(
    num_patches: int,
    num_layers: int,
    token_prune_layers: Sequence[int],
    kept_after_drop: Sequence[int] | float,
    merge_r: Sequence[int],
) -> list[LayerTokens]:
    """Patch tokens per layer under dropping and merging, for one image.

    Args:
        num_patches: patch tokens out of the embedding.
        token_prune_layers: the pruning layers, ascending.
        kept_after_drop: the token keep rate (each pruning layer keeps `ceil(n * rate)` of its `n`), or the count
            each pruning layer keeps, one per pruning layer.
        merge_r: tokens merged away in each layer (one entry per layer); an entry above what the layer can merge is
            not clamped here (see `merge_problem`).
    """
    counts, patches = [], num_patches
    drops = iter(kept_after_drop) if not isinstance(kept_after_drop, (int, float)) else None
    for layer in range(num_layers):
        attention = patches
        if layer in token_prune_layers:
            patches = next(drops) if drops is not None else num_kept_tokens(patches, float(kept_after_drop))
        after_drop = patches
        patches = max(1, patches - merge_r[layer])
        counts.append(LayerTokens(attention, after_drop, patches))
    return counts


def merge_problem(counts: Sequence[LayerTokens], merge_r: Sequence[int], field: str = "token_merge_r") -> str | None:
    """A message naming the first layer whose `r` exceeds what it can merge (`max_merge`), or None if all fit."""
    for layer, (tokens, r) in enumerate(zip(counts, merge_r, strict=True)):
        if r > max_merge(tokens.after_drop):
            return (
                f"`{field}` merges {r} tokens in layer {layer}, which has {tokens.after_drop} patch tokens there "
                f"(at most {max_merge(tokens.after_drop)} can merge: half of them, rounded down). Lower `{field}` "
                f"(a list gives each layer its own r) or merge in fewer layers."
            )
    return None


@torch.no_grad()
def match_tokens(
    metric: torch.Tensor, r: int, num_patches: int, num_prefix_tokens: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bipartite soft matching: which `r` patch tokens merge, and into which.

    Args:
        metric: `[batch, tokens, channels]` per-token features to compare (the head-averaged keys): the prefix
            tokens (`num_prefix_tokens`, e.g. the class token), then the `num_patches` patch tokens; anything after
            them (a fused token) is ignored.
        r: tokens to merge away, at most `max_merge(num_patches)`.

    Returns:
        `(source, destination)`, both `[batch, r]` int64 sequence indices: token `source[b, i]` (from set A, the
        first, third, ... patch token) merges into `destination[b, i]` (set B, the second, fourth, ...). Ties are
        broken by position (a stable sort), so an image's result does not depend on the batch it is in. A decision,
        not differentiable: computed without recording gradients.
    """
    patches = metric[:, num_prefix_tokens : num_prefix_tokens + num_patches].float()
    patches = patches / patches.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    set_a, set_b = patches[:, 0::2], patches[:, 1::2]
    similarity = torch.matmul(set_a, set_b.transpose(-1, -2))
    best, partner = similarity.max(dim=-1)
    chosen = torch.sort(best, dim=-1, descending=True, stable=True).indices[:, :r]
    source = num_prefix_tokens + 2 * chosen
    destination = num_prefix_tokens + 1 + 2 * partner.gather(1, chosen)
    return source, destination


def merge_tokens(
    hidden_states: torch.Tensor,
    token_sizes: torch.Tensor,
    source: torch.Tensor,
    destination: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge each `source` token into its `destination` as a size-weighted mean, then remove the sources.

    Args:
        hidden_states: `[batch, tokens, hidden]`.
        token_sizes: `[batch, tokens]` float: original patches each token holds (1 for the class and fused tokens).
        source, destination: `[batch, r]` sequence indices from `match_tokens`.

    Returns:
        `(hidden_states, token_sizes, sequence_index, slot_of)`: the `tokens - r` survivors in their original order,
        their sizes, `[batch, tokens - r]` the survivors' old sequence indices, and `[batch, tokens]` the new index
        of the token now holding each old token (a merged source maps to its destination's new index).
    """
    batch, tokens, width = hidden_states.shape
    merged_away = source.shape[1]
    removed = torch.zeros(batch, tokens, dtype=torch.bool, device=hidden_states.device).scatter(1, source, True)
    # Survivors first, each group in ascending order: a stable sort of the removed flags.
    order = torch.sort(removed.to(torch.uint8), dim=1, stable=True).indices
    sequence_index = order[:, : tokens - merged_away]
    slot_of = torch.empty_like(order).scatter_(1, order, torch.arange(tokens, device=order.device).expand(batch, -1))
    slot_of = slot_of.scatter(1, source, slot_of.gather(1, destination))

    # Only the r merged rows change: gather the survivors once and add to each destination d, holding s_d patches,
    # sum_i s_i (x_i - x_d) / S over its sources i, with S = s_d + sum_i s_i. That is x_d moved to the size-weighted
    # mean (s_d x_d + sum_i s_i x_i) / S, without a pass over every token.
    new_sizes = token_sizes.scatter_add(1, destination, token_sizes.gather(1, source))
    expand = (batch, merged_away, width)
    source_states = hidden_states.gather(1, source.unsqueeze(-1).expand(expand))
    destination_states = hidden_states.gather(1, destination.unsqueeze(-1).expand(expand))
    share = (token_sizes.gather(1, source) / new_sizes.gather(1, destination)).to(hidden_states.dtype)
    kept = hidden_states.gather(1, sequence_index.unsqueeze(-1).expand(-1, -1, width))
    kept = kept.scatter_add(
        1,
        slot_of.gather(1, destination).unsqueeze(-1).expand(expand),
        share.unsqueeze(-1) * (source_states - destination_states),
    )
    return kept, new_sizes.gather(1, sequence_index), sequence_index, slot_of


def follow_sources(token_sources: torch.Tensor, slot_of: torch.Tensor) -> torch.Tensor:
    """Update `[batch, original patches]` sequence indices (-1: dropped) through a reduction's old -> new map
    (`slot_of`, `[batch, old tokens]`, -1 for a dropped token)."""
    followed = slot_of.gather(1, token_sources.clamp_min(0))
    return torch.where(token_sources >= 0, followed, -1)


def follow_kept_tokens(
    sequence_index: torch.Tensor,
    old_tokens: int,
    new_tokens: int,
    token_sizes: torch.Tensor | None,
    token_sources: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Carry merged sizes and patch sources through a drop from `old_tokens` to `new_tokens`: keep the survivors'
    entries (`sequence_index`, `[batch, 1 + kept]`); a fused token (last, when `new_tokens` is one more) holds size 1,
    and dropped (or fused) patches get source -1."""
    if token_sizes is not None:
        token_sizes = token_sizes.gather(1, sequence_index)
        if new_tokens > sequence_index.shape[1]:  # a fused token at the end: a summary, counted as one token
            token_sizes = torch.cat([token_sizes, token_sizes.new_ones(token_sizes.shape[0], 1)], dim=1)
    if token_sources is not None:
        slot_of = sequence_index.new_full((sequence_index.shape[0], old_tokens), -1)
        new_slots = torch.arange(sequence_index.shape[1], device=sequence_index.device).expand_as(sequence_index)
        slot_of = slot_of.scatter(1, sequence_index, new_slots)
        token_sources = follow_sources(token_sources, slot_of)
    return token_sizes, token_sources


def proportional_attention_mask(token_sizes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`[batch, 1, 1, tokens]` additive mask `log(size)`: each key counts as the patches it holds."""
    return token_sizes.log().to(dtype)[:, None, None, :]


def check_merge_r(value: object, num_layers: int, field: str = "token_merge_r") -> list[int]:
    """`token_merge_r` as one non-negative int per layer, or a `ValueError` naming the field and allowed values."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_layers:
            raise ValueError(
                f"`{field}` must be an integer >= 0 or a list of {num_layers} integers >= 0 (one per layer, "
                f"`num_hidden_layers={num_layers}`), got a list of {len(value)}: {list(value)!r}."
            )
        return [check_int(f"{field}[{layer}]", entry, low=0) for layer, entry in enumerate(value)]
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return [check_int(field, value, low=0)] * num_layers
    raise ValueError(
        f"`{field}` must be an integer >= 0 (tokens merged away in every layer) or a list of {num_layers} integers "
        f">= 0 (one per layer), got {value!r} of type {type(value).__name__}."
    )


__all__ = [
    "LayerTokens",
    "check_merge_r",
    "follow_kept_tokens",
    "follow_sources",
    "layer_token_counts",
    "match_tokens",
    "max_merge",
    "merge_problem",
    "merge_tokens",
    "proportional_attention_mask",
]
