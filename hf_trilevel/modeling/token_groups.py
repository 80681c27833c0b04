"""Groups of similar token counts: how per-image counts save real time in batches instead of padding it away.

A selector with per-image counts pads the batch to its widest image, and a batch of hundreds nearly always holds
one image at the upper bound, so padding alone computes about what the fixed upper rate computes. After such a
pruning layer the model sorts the images by count, splits them into a few groups (`count_groups`), trims each
group to its own widest image (`trim_group`) and runs the remaining layers per group; `merge_groups` puts the
results back in the batch's order. Layers treat images independently, so no image's result changes.

Sequence layout (see token_reduction.py): `[prefix (class), patches (valid first, padding after), (fused)]`.

This file is part of the remote-code set copied into every saved checkpoint: it imports only torch and the standard
library.
"""

from dataclasses import dataclass, field

import torch

# A split must save at least this share of the padded tokens, or the extra, smaller batches cost more than they save.
MIN_SAVED_SHARE = 0.05


@dataclass
class EncodedTokens:
    """What a run of layers returns: the final sequence and positions and, per pruning layer run, kept positions
    and counts."""

    hidden_states: torch.Tensor
    patch_positions: torch.Tensor
    kept_token_indices: list[torch.Tensor]
    kept_token_counts: list[torch.Tensor]
    auxiliary_loss: torch.Tensor | None
    token_importance: list[torch.Tensor] = field(default_factory=list)  # recorded only for unsplit batches
    token_sources: torch.Tensor | None = None  # recorded only for unsplit batches
    token_sizes: torch.Tensor | None = None  # `[batch, tokens]` patches each final token holds, once a layer merged


def count_groups(counts: torch.Tensor, max_groups: int) -> list[tuple[torch.Tensor, int]]:
    """Split a batch into at most `max_groups` groups of similar counts: `[(rows, width), ...]`.

    The images are sorted by count and cut into equal-sized runs; runs with the same widest count are merged, since
    splitting them saves nothing. Returns one group (the whole batch) unless the split saves at least
    `MIN_SAVED_SHARE` of the padded tokens. Reads the counts on the host (one synchronisation).
    """
    batch_size = len(counts)
    widest = int(counts.max())
    whole = [(torch.arange(batch_size, device=counts.device), widest)]
    if max_groups < 2 or batch_size < 2:
        return whole
    order = torch.argsort(counts, stable=True)
    sorted_counts = counts[order].tolist()
    groups: list[tuple[int, int, int]] = []  # (start, end, width) over the sorted order
    num_groups = min(max_groups, batch_size)
    for index in range(num_groups):
        start, end = index * batch_size // num_groups, (index + 1) * batch_size // num_groups
        width = sorted_counts[end - 1]
        if groups and groups[-1][2] == width:
            groups[-1] = (groups[-1][0], end, width)
        else:
            groups.append((start, end, width))
    padded = sum((end - start) * width for start, end, width in groups)
    if len(groups) < 2 or padded > (1 - MIN_SAVED_SHARE) * batch_size * widest:
        return whole
    return [(order[start:end], width) for start, end, width in groups]


def trim_group(
    hidden_states: torch.Tensor,
    patch_positions: torch.Tensor,
    attention_mask: torch.Tensor,
    rows: torch.Tensor,
    width: int,
    num_prefix_tokens: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The images `rows`, their patch axis cut to `width` slots (their widest count) and the fused token kept.

    Valid slots come first in every row, so the cut removes padding only; the additive mask is cut the same way
    (its query rows too, unless it is a `[batch, 1, 1, tokens]` key mask).
    """
    has_fused_token = hidden_states.shape[1] > num_prefix_tokens + patch_positions.shape[1]
    token_index = torch.arange(num_prefix_tokens + width, device=hidden_states.device)
    if has_fused_token:
        token_index = torch.cat([token_index, token_index.new_tensor([hidden_states.shape[1] - 1])])
    mask = attention_mask[rows][..., token_index]
    if mask.shape[2] > 1:
        mask = mask[:, :, token_index]
    return hidden_states[rows][:, token_index], patch_positions[rows][:, :width], mask


def merge_groups(results: list[EncodedTokens], rows: list[torch.Tensor], num_prefix_tokens: int = 1) -> EncodedTokens:
    """Put per-group results back in batch order, padding patch axes to the widest group.

    Padded sequence slots are zeros and padded positions -1; a group without a fused token (all its images kept
    every patch) gets a zero one when another group has one, so the layout stays `[prefix, patches, (fused)]`.
    Auxiliary losses (batch means) are weighted by each group's share of the images.
    """
    order = torch.cat(rows)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    prefix = num_prefix_tokens
    has_fused = [result.hidden_states.shape[1] > prefix + result.patch_positions.shape[1] for result in results]
    width = max(result.patch_positions.shape[1] for result in results)
    sequences = []
    for result, fused in zip(results, has_fused, strict=True):
        states = result.hidden_states
        patches = states[:, prefix : prefix + result.patch_positions.shape[1]]
        parts = [states[:, :prefix], torch.nn.functional.pad(patches, (0, 0, 0, width - patches.shape[1]))]
        if any(has_fused):
            parts.append(states[:, -1:] if fused else torch.zeros_like(states[:, -1:]))
        sequences.append(torch.cat(parts, dim=1))
    positions = torch.cat([pad_positions(result.patch_positions, width) for result in results])[inverse]
    indices, counts = [], []
    for layer in range(len(results[0].kept_token_indices)):
        layer_width = max(result.kept_token_indices[layer].shape[1] for result in results)
        indices.append(torch.cat([pad_positions(result.kept_token_indices[layer], layer_width) for result in results]))
        indices[-1] = indices[-1][inverse]
        counts.append(torch.cat([result.kept_token_counts[layer] for result in results])[inverse])
    loss = None
    for result, group in zip(results, rows, strict=True):
        if result.auxiliary_loss is not None:
            term = result.auxiliary_loss * (len(group) / len(order))
            loss = term if loss is None else loss + term
    return EncodedTokens(torch.cat(sequences)[inverse], positions, indices, counts, loss)


def pad_positions(patch_positions: torch.Tensor, width: int) -> torch.Tensor:
    """`[batch, width]` positions: `patch_positions` followed by -1 (padding) up to `width` slots."""
    return torch.nn.functional.pad(patch_positions, (0, width - patch_positions.shape[1]), value=-1)


__all__ = ["EncodedTokens", "count_groups", "merge_groups", "pad_positions", "trim_group"]
