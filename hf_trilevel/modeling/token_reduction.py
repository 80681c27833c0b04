"""Token level of Tri-Level E-ViT: score patch tokens, decide which to keep, then apply the decision.

The steps are separate functions so that a different scorer (a learned selector) or a different decision (a
per-image adaptive count) can replace one step without touching the others. A `TokenSelector`
(`token_selectors.py`) does the first two; the layer applies its decision with `keep_tokens`:

    scores = class_token_attention(query, key, scaling)              # score
    patch_index = select_top_tokens(patch_scores, num_keep)           # decide
    hidden_states, ... = keep_tokens(hidden_states, patch_positions, patch_index, ...)  # apply

Sequence layout used throughout: `num_prefix_tokens` prefix tokens first (ViT's class token: 1; DeiT's class and
distillation tokens: 2; a model without a class token: 0), never dropped; then the surviving patch tokens; then
(only after a fusing pruning layer) one fused token that summarises everything dropped so far. With per-image counts
the patch axis is padded to the largest count: padded slots come after each image's real patches, carry position -1
in `patch_positions`, and are masked as keys by the attention mask (see `sparse_attention.key_padding_mask`).

This file is part of the remote-code set copied into every saved checkpoint: it imports only torch and the standard
library.
"""

import math

import torch


def num_kept_tokens(num_tokens: int, keep_rate: float) -> int:
    """`ceil(num_tokens * keep_rate)`, at least 1 and at most `num_tokens`.

    The product is rounded to 6 decimals first so that float noise (100 * 0.7 = 70.00000000000001) does not keep an
    extra token.
    """
    return min(num_tokens, max(1, math.ceil(round(num_tokens * keep_rate, 6))))


def token_schedule(num_patches: int, keep_rate: float, num_pruning_layers: int) -> list[int]:
    """Patch tokens alive after each pruning layer when every pruning layer keeps `keep_rate` of its input."""
    counts = []
    for _ in range(num_pruning_layers):
        num_patches = num_kept_tokens(num_patches, keep_rate)
        counts.append(num_patches)
    return counts


def class_token_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    attention_mask: torch.Tensor | None = None,
    num_heads: int | None = None,
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """Head-averaged attention probabilities of the prefix (class) tokens over every token.

    Args:
        query, key: `[batch, heads, tokens, head_dim]`, with the prefix tokens first.
        attention_mask: the additive mask the layer's attention used (`[batch, 1, tokens or 1, tokens]`), or None.
            Its prefix rows are all zeros except at padded keys, which therefore score 0.
        num_heads: the model's head count (`config.num_attention_heads`) when this layer has fewer heads (a
            physically slimmed model): each missing head counts as uniform attention over the valid keys, which is
            exactly what a pruned head (zero queries and keys) of the masked model computed, so slimming changes
            no score. None: average the heads given.
        num_prefix_tokens: how many prefix tokens lead the sequence. Their rows are averaged with the heads (DeiT's
            class and distillation tokens both feed its prediction). With none (no class token), the row is the mean
            query's over the keys each query may see: `mean_i(q_i) . k_j = mean_i(q_i . k_j)`, so per head it ranks
            tokens by the geometric mean of the attention they receive (a row normaliser is the same for every j).

    Returns:
        `[batch, tokens]` in float32, each row summing to 1.

    Only the prefix query rows (or the one mean row) are multiplied with the keys (batch x heads x rows x head_dim
    work), so this works with fused attention kernels (sdpa, flash) that never materialise the tokens x tokens matrix.
    """
    if num_prefix_tokens > 0:
        rows = query[:, :, :num_prefix_tokens]
        row_mask = None if attention_mask is None else attention_mask[:, :, :num_prefix_tokens]
    else:
        rows, row_mask = mean_query(query, attention_mask)
    logits = torch.matmul(rows, key.transpose(-1, -2)) * scaling
    missing = 0 if num_heads is None else num_heads - logits.shape[1]
    if missing > 0:
        logits = torch.cat([logits, logits.new_zeros(logits.shape[0], missing, *logits.shape[2:])], dim=1)
    if row_mask is not None:
        logits = logits + row_mask
    return logits.softmax(dim=-1, dtype=torch.float32).mean(dim=(1, 2))


def mean_query(query: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`([batch, heads, 1, head_dim], [batch, 1, 1, tokens] or None)`: the mean query over the real tokens, and the
    keys every row may see (the mask's column-wise maximum: a key masked for every query is padding).

    Padded tokens (masked as keys in every row) are left out of the mean, so an image's row does not depend on the
    padding its batch carries.
    """
    if attention_mask is None:
        return query.mean(dim=2, keepdim=True), None
    row_mask = attention_mask.amax(dim=2, keepdim=True)
    real = (row_mask > torch.finfo(row_mask.dtype).min / 2).to(query.dtype).transpose(-1, -2)  # [batch, 1, tokens, 1]
    total = (query * real).sum(dim=2, keepdim=True)
    return total / real.sum(dim=2, keepdim=True).clamp_min(1), row_mask


def select_top_tokens(patch_scores: torch.Tensor, num_keep: int) -> torch.Tensor:
    """Indices of the `num_keep` highest-scoring patch tokens of each image, ascending.

    Indices carry no gradient; a selector that learns does so through its scores (fusion weights, an auxiliary
    loss), which is why this function does not switch gradients off itself.

    Args:
        patch_scores: `[batch, patches]`.

    Returns:
        `[batch, num_keep]` int64 indices into the patch axis. Ascending order keeps surviving tokens in their
        original relative order, which makes the reported positions easy to read; attention does not depend on it.
    """
    top = torch.topk(patch_scores, num_keep, dim=-1, sorted=False).indices
    return top.sort(dim=-1).values


def select_top_tokens_per_image(
    patch_scores: torch.Tensor, kept_counts: torch.Tensor, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `kept_counts[i]` highest-scoring patches of image `i`, padded to the largest count.

    Args:
        patch_scores: `[batch, patches]`.
        kept_counts: `[batch]` int64, each in [1, patches].
        width: `max(kept_counts)` if the caller already read it on the host; otherwise it is read here (one device
            synchronisation).

    Returns:
        `(patch_index, valid_mask)`, both `[batch, max(kept_counts)]`: each row holds its kept patches in ascending
        order, then padded slots (`valid_mask` False) whose indices point at dropped patches and must be ignored.
    """
    num_patches = patch_scores.shape[1]
    width = int(kept_counts.max()) if width is None else width
    ranked = torch.topk(patch_scores, width, dim=-1, sorted=True).indices
    valid_mask = torch.arange(width, device=ranked.device) < kept_counts.unsqueeze(1)
    order = torch.where(valid_mask, ranked, ranked + num_patches).sort(dim=-1).indices
    return torch.gather(ranked, 1, order), torch.gather(valid_mask, 1, order)


def kept_counts_for_rate(num_valid: torch.Tensor, keep_rate: float) -> torch.Tensor:
    """`num_kept_tokens` per image: `ceil(n * keep_rate)` of each image's `n` valid patches, at least 1 and at most n.

    Integer arithmetic on the rate in millionths (the 6-decimal rounding `num_kept_tokens` applies), so a fixed-rate
    count and a per-image count of the same `n` agree, and no float64 is needed (some accelerators lack it).
    """
    millionths = round(keep_rate * 1_000_000)
    counts = (num_valid.long() * millionths + 999_999) // 1_000_000
    return torch.minimum(counts.clamp_min(1), num_valid.long().clamp_min(1))


def mass_kept_counts(
    importance: torch.Tensor, num_valid: torch.Tensor, keep_mass: float, keep_rate: float, min_keep_rate: float
) -> torch.Tensor:
    """Per-image counts (SaiT): the fewest patches whose importance reaches `keep_mass`, within the rate bounds.

    Args:
        importance: `[batch, patches]` non-negative, each row summing to 1 over its valid patches and 0 at padding.
        num_valid: `[batch]` int64 valid patches per image.
        keep_mass: share of the importance to keep, in (0, 1]; 1.0 gives the upper bound.
        keep_rate: upper bound, `ceil(n * keep_rate)`.
        min_keep_rate: lower bound, `ceil(n * min(min_keep_rate, keep_rate))`.

    Returns:
        `[batch]` int64 counts in [lower, upper].
    """
    upper = kept_counts_for_rate(num_valid, keep_rate)
    if keep_mass >= 1.0:  # a float cumulative sum may never reach 1.0 exactly; the bound is the answer anyway
        return upper
    lower = kept_counts_for_rate(num_valid, min(min_keep_rate, keep_rate))
    cumulative = importance.sort(dim=-1, descending=True).values.cumsum(dim=-1)
    reached = (cumulative < keep_mass).sum(dim=-1) + 1
    return torch.maximum(torch.minimum(reached, upper), lower)


def gumbel_top_tokens(
    log_scores: torch.Tensor,
    num_keep: int | torch.Tensor,
    temperature: float,
    noise_scale: float = 1.0,
    width: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Gumbel top-k with a straight-through hard decision: which patches to keep, and gates that carry gradients.

    Each patch's log-score is perturbed with Gumbel(0, 1) noise and the top `num_keep` perturbed patches are kept (a
    sample without replacement from the softmax of the scores). The soft decision of patch `i` is
    `sigmoid((z_i - t) / temperature)`, with `z` the perturbed scores and `t` (no gradient) half-way between the
    last kept and the first dropped one. Its straight-through gate `soft - soft.detach() + 1` is exactly 1 in value,
    so multiplying the kept tokens by it changes nothing in the forward pass while the backward pass gives the
    scorer the gradient of keeping each kept token more or less (dropped tokens are gone and get none; the noise
    gives every token turns at being kept).

    Args:
        log_scores: `[batch, patches]`; `-inf` at padded slots.
        num_keep: the same count for every image (int), or `[batch]` int64 per-image counts.
        temperature: > 0, of the soft decision only (the sample does not depend on it): high early in training
            (gradient for many tokens near the boundary), low late (for the tokens at the boundary).
        noise_scale: in [0, 1], multiplies the Gumbel noise: 1.0 samples from the softmax of the scores, 0.0 keeps
            their top `num_keep` (as evaluation does) while the gates still pass gradients.
        width: with per-image counts, their maximum if already read on the host (see `select_top_tokens_per_image`).

    Returns:
        `(patch_index, valid_mask, gates)`: as `select_top_tokens` (valid_mask None) or `select_top_tokens_per_image`
        for per-image counts, and `[batch, kept]` gates (1 at padded slots).
    """
    uniform = torch.rand_like(log_scores, dtype=torch.float32).clamp_(1e-10, 1.0 - 1e-7)
    perturbed = log_scores.float() - noise_scale * torch.log(-torch.log(uniform))
    ranked = perturbed.detach().sort(dim=-1, descending=True).values
    if isinstance(num_keep, int):
        patch_index, valid_mask = select_top_tokens(perturbed.detach(), num_keep), None
        boundary = ranked[:, num_keep - 1 : num_keep + 1]
    else:
        patch_index, valid_mask = select_top_tokens_per_image(perturbed.detach(), num_keep, width)
        last_kept = (num_keep - 1).clamp(0, ranked.shape[1] - 1).unsqueeze(1)
        first_dropped = num_keep.clamp(max=ranked.shape[1] - 1).unsqueeze(1)
        boundary = torch.cat([ranked.gather(1, last_kept), ranked.gather(1, first_dropped)], dim=1)
    # An image that keeps everything (or whose next patch is padding) has no dropped neighbour: use the kept one.
    threshold = torch.where(torch.isfinite(boundary), boundary, boundary[:, :1]).mean(dim=1, keepdim=True)
    soft = torch.sigmoid((perturbed - threshold) / temperature).gather(1, patch_index)
    gates = soft - soft.detach() + 1.0
    if valid_mask is not None:
        gates = torch.where(valid_mask, gates, torch.ones_like(gates))
    return patch_index, valid_mask, gates


def gather_tokens(states: torch.Tensor, index: torch.Tensor, token_dim: int = 1) -> torch.Tensor:
    """Select tokens per image along `token_dim` with a `[batch, k]` index; other dims are kept whole."""
    shape = [1] * states.dim()
    shape[0], shape[token_dim] = index.shape
    sizes = list(states.shape)
    sizes[token_dim] = index.shape[1]
    return torch.gather(states, token_dim, index.view(shape).expand(sizes))


def dropped_token_weights(
    token_scores: torch.Tensor,
    patch_index: torch.Tensor,
    valid_mask: torch.Tensor | None = None,
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """`[batch, patches (+ 1 fused)]`: each token's score if it is dropped (fused), 0 if kept.

    Args:
        token_scores: `[batch, prefix + patches (+ 1 fused)]` non-negative weights, e.g. from `class_token_attention`.
        patch_index: `[batch, kept]` indices of the kept patches.
        valid_mask: `[batch, kept]` False at padded slots (per-image counts), or None when every slot is kept.
        num_prefix_tokens: prefix tokens leading `token_scores` (never dropped, so never weighted).

    A row summing to 0 means the image dropped nothing with any weight (possible only with per-image counts): its
    fused token would be empty, and the layer masks it out.
    """
    scores = token_scores[:, num_prefix_tokens:]
    if valid_mask is None:
        return scores.scatter(1, patch_index, 0.0)
    # Padded slots point at dropped tokens, which must keep their weight.
    kept = torch.zeros_like(scores).scatter_reduce(1, patch_index, valid_mask.to(token_scores), "amax")
    return scores * (1 - kept)


def fuse_dropped_tokens(
    hidden_states: torch.Tensor,
    token_scores: torch.Tensor,
    patch_index: torch.Tensor,
    valid_mask: torch.Tensor | None = None,
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """One token per image: the average of every non-kept token, weighted by its score (class-token attention).

    Like EViT, the dropped tokens are summarised by their class-token attention. Unlike EViT, whose fused token is
    the unnormalised attention-weighted sum (its norm shrinks with the attention the dropped tokens got), this is
    the weighted mean, so the fused token stays on the scale of a token; and an earlier fused token is folded into
    the new one rather than competing with patches for a place.

    Args:
        hidden_states: `[batch, prefix + patches (+ 1 fused), hidden]`.
        token_scores: `[batch, prefix + patches (+ 1 fused)]` non-negative weights, e.g. from `class_token_attention`.
        patch_index: `[batch, kept]` indices of the kept patches.
        valid_mask: `[batch, kept]` False at padded slots (per-image counts), or None when every slot is kept.
        num_prefix_tokens: prefix tokens leading the sequence (never fused).

    Returns:
        `[batch, 1, hidden]`. A previous fused token is folded in with its own attention weight, so a single fused
        token summarises everything dropped at every layer so far.
    """
    weights = dropped_token_weights(token_scores, patch_index, valid_mask, num_prefix_tokens)
    return fuse_weighted_tokens(hidden_states, weights, num_prefix_tokens)


def fuse_weighted_tokens(
    hidden_states: torch.Tensor, weights: torch.Tensor, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """`[batch, 1, hidden]`: the mean of the tokens after the prefix weighted by `weights` (`dropped_token_weights`)."""
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    return torch.matmul(weights.to(hidden_states.dtype).unsqueeze(1), hidden_states[:, num_prefix_tokens:])


def keep_tokens(
    hidden_states: torch.Tensor,
    patch_positions: torch.Tensor,
    patch_index: torch.Tensor,
    fused_token: torch.Tensor | None,
    valid_mask: torch.Tensor | None = None,
    num_prefix_tokens: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply a keep decision.

    Args:
        hidden_states: `[batch, prefix + patches (+ 1 fused), hidden]`.
        patch_positions: `[batch, patches]` original patch index of each current patch token.
        patch_index: `[batch, kept]` from a selector.
        fused_token: `[batch, 1, hidden]` to append, or None.
        valid_mask: `[batch, kept]` False at padded slots (per-image counts), or None when every slot is kept.
        num_prefix_tokens: prefix tokens leading the sequence, all kept.

    Returns:
        `(hidden_states, patch_positions, sequence_index)`: the new sequence `[prefix, kept patches (, fused)]`,
        the original positions of the kept patches (-1 at padded slots), and `[batch, prefix + kept]` indices of the
        prefix tokens and kept patches in the old sequence (for gathering per-token state such as queries and keys).
    """
    prefix_index = torch.arange(num_prefix_tokens, device=patch_index.device).expand(patch_index.shape[0], -1)
    sequence_index = torch.cat([prefix_index, patch_index + num_prefix_tokens], dim=1)
    kept = gather_tokens(hidden_states, sequence_index)
    if fused_token is not None:
        kept = torch.cat([kept, fused_token], dim=1)
    positions = torch.gather(patch_positions, 1, patch_index)
    if valid_mask is not None:
        positions = positions.masked_fill(~valid_mask, -1)
    return kept, positions, sequence_index
