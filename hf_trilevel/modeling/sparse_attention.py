"""Attention level of Tri-Level E-ViT: keep only the strongest connections of each query row.

At each pruning layer a 0/1 mask is computed from the head-averaged attention among the kept tokens; it is shared
by all heads and reused by the following layers until the next pruning layer. The mask reaches the attention
kernels through the standard `attention_mask` argument of transformers' attention interface, as the additive mask
both `eager` and `sdpa` take, so `sdpa` keeps running its fused kernel.

Summary tokens (the prefix tokens such as the class token, and the fused token when token fusion is on) keep their
whole row and column: they are how information flows between the kept tokens.

Per-image token counts pad the patch axis (see token_reduction.py); `key_padding_mask` folds the padding into the
same additive mask, so padded tokens are never attended to and every kernel that takes a mask still applies.

This file is part of the remote-code set copied into every saved checkpoint: it imports only torch, transformers
and the standard library.
"""

import torch

from .token_reduction import gather_tokens, kept_counts_for_rate, num_kept_tokens

MASKED_ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")


def check_masked_attention_implementation(
    attn_implementation: str | None,
    needed_by: str = "`attention_keep_rate` < 1",
    alternative: str = "keep `attention_keep_rate=1.0`",
) -> None:
    """Raise `ValueError` unless `attn_implementation` can apply an arbitrary attention mask.

    `needed_by` names the setting that needs the mask (attention sparsity, or a selector that pads per-image counts)
    and `alternative` how to do without it.
    """
    if attn_implementation not in MASKED_ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"{needed_by} needs an attention implementation that takes an arbitrary mask, one of "
            f"{list(MASKED_ATTENTION_IMPLEMENTATIONS)}; the model uses {attn_implementation!r}. Load it with "
            f"`attn_implementation='sdpa'`, or {alternative}."
        )


@torch.no_grad()
def select_connections(
    connection_scores: torch.Tensor,
    keep_rate: float,
    has_trailing_summary_token: bool,
    num_valid: torch.Tensor | None = None,
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """Boolean mask keeping, in every query row, the top `ceil(patches * keep_rate)` patch connections.

    Args:
        connection_scores: `[batch, tokens, tokens]`, query rows by key columns, laid out as
            `[prefix..., patches..., (fused)]`.
        keep_rate: fraction of each row's patch connections to keep, in (0, 1].
        has_trailing_summary_token: whether the last token is a fused summary token (treated like the class token).
        num_prefix_tokens: summary tokens leading the sequence (the class token; none without one).
        num_valid: `[batch]` valid patches per image when the patch axis is padded (per-image counts), or None.
            Each image's budget is then `ceil(num_valid * keep_rate)`, what it would get alone, so its result does
            not depend on the other images of the batch.

    Returns:
        `[batch, tokens, tokens]` bool, True where attention is allowed. As in Tri-Level E-ViT, summary columns are
        always kept on top of the patch budget, so an ordinary row keeps `ceil(patches * keep_rate)` patch entries
        plus the summary entries; summary rows are kept whole. Among equal scores at the budget's edge the lowest
        key indices are kept, so the mask is the same on every device and in ONNX Runtime.
    """
    num_tokens = connection_scores.shape[-1]
    num_patches = num_tokens - num_prefix_tokens - int(has_trailing_summary_token)
    num_keep = num_kept_tokens(num_patches, keep_rate)
    summary = list(range(num_prefix_tokens)) + ([num_tokens - 1] if has_trailing_summary_token else [])
    patch_scores = connection_scores[..., num_prefix_tokens : num_prefix_tokens + num_patches]
    ranked = torch.topk(patch_scores, num_keep, dim=-1, sorted=num_valid is not None).values
    if num_valid is None:
        budget, threshold = num_keep, ranked.amin(dim=-1, keepdim=True)
    else:
        budget = kept_counts_for_rate(num_valid, keep_rate)[:, None, None]
        threshold = ranked.gather(-1, (budget - 1).expand(*ranked.shape[:-1], 1))
    # Ties at the threshold go to the lowest key index. Connections masked in the previous interval all score
    # exactly 0 and often fill a budget together; top-k's own choice among equal scores is unspecified (it differs
    # between PyTorch devices and ONNX Runtime), this one is not. Without a tie it is top-k's choice.
    above = patch_scores > threshold
    tied = patch_scores == threshold
    keep = above | (tied & (tied.cumsum(dim=-1) <= budget - above.sum(dim=-1, keepdim=True)))
    mask = torch.nn.functional.pad(keep, (num_prefix_tokens, num_tokens - num_prefix_tokens - num_patches))
    if summary:
        mask[..., summary] = True
        mask[:, summary, :] = True
    return mask


def sparse_attention_mask(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    keep_rate: float,
    sequence_index: torch.Tensor,
    previous_mask: torch.Tensor | None,
    has_trailing_summary_token: bool,
    dtype: torch.dtype,
    key_valid: torch.Tensor | None = None,
    num_heads: int | None = None,
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """Additive mask for the layers that follow a pruning layer, `[batch, 1, tokens, tokens]` in `dtype`.

    The scores are the pruning layer's own attention, as it was computed: under its incoming mask and normalised over
    all its tokens, averaged over heads, then restricted to the kept tokens' rows and columns (Tri-Level E-ViT).
    A connection masked in one interval therefore scores about zero and stays masked in the next.

    Args:
        query, key: `[batch, heads, tokens, head_dim]` of the pruning layer, before tokens were dropped.
        sequence_index: `[batch, kept]` positions of the kept prefix and patch tokens in that layer's sequence.
        previous_mask: the additive mask the pruning layer's attention used, `[batch, 1, tokens, tokens]`, or None.
        has_trailing_summary_token: whether the new sequence ends with a fused token. It has no query or key yet;
            its row and column are always kept.
        dtype: the attention's compute dtype (the query's), so the kernels never cast the mask.
        key_valid: `[batch, kept]` False at padded slots of the new sequence (per-image counts), or None. Padded
            columns are scored below every real one, so they never take a place in a row's budget, and each image's
            budget follows its own valid count.
        num_heads: the model's head count when this layer has fewer (a slimmed model): each missing head counts in
            the average as the uniform attention a pruned head (zero queries and keys) had, as in
            `token_reduction.class_token_attention`. None: average the heads given.
        num_prefix_tokens: prefix (summary) tokens leading the sequence, whose rows and columns are kept whole.
    """
    with torch.no_grad():
        rows = gather_tokens(query, sequence_index, token_dim=2)
        logits = torch.matmul(rows, key.transpose(-1, -2)) * scaling
        if previous_mask is not None:
            logits = logits + gather_tokens(previous_mask, sequence_index, token_dim=2)
        probabilities = logits.softmax(dim=-1, dtype=torch.float32)
        missing = 0 if num_heads is None else num_heads - probabilities.shape[1]
        total = probabilities.sum(dim=1)
        if missing > 0:  # zero logits under the same mask: uniform over each row's allowed keys
            uniform = torch.zeros_like(logits[:, :1])
            if previous_mask is not None:
                uniform = uniform + gather_tokens(previous_mask, sequence_index, token_dim=2)
            total = total + missing * uniform.softmax(dim=-1, dtype=torch.float32)[:, 0]
        probabilities = total / (probabilities.shape[1] + max(missing, 0))
        scores = gather_tokens(probabilities, sequence_index, token_dim=2)
        if key_valid is not None:
            scores = scores.masked_fill(~key_valid[:, None, :], -1.0)
        if has_trailing_summary_token:
            scores = torch.nn.functional.pad(scores, (0, 1, 0, 1))
        num_valid = None if key_valid is None else key_valid[:, num_prefix_tokens:].sum(dim=1)
        keep = select_connections(scores, keep_rate, has_trailing_summary_token, num_valid, num_prefix_tokens)
        keep = keep.unsqueeze(1)
        return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill_(~keep, torch.finfo(dtype).min)


def key_padding_mask(
    patch_positions: torch.Tensor,
    num_tokens: int,
    mask: torch.Tensor | None,
    dtype: torch.dtype,
    fused_valid: torch.Tensor | None = None,
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """`mask` with every padded key (patch position -1) masked out, `[batch, 1, rows, tokens]` in `dtype`.

    Args:
        patch_positions: `[batch, patches]` original positions of the patch tokens, -1 at padded slots.
        num_tokens: length of the sequence (prefix tokens, patches, and a trailing fused token if any).
        mask: an additive mask to extend, `[batch, 1, tokens, tokens]`, or None (then the result is
            `[batch, 1, 1, tokens]`, broadcast over query rows by eager and sdpa alike).
        dtype: the attention's compute dtype.
        fused_valid: `[batch]` bool, False where the trailing fused token is empty (the image dropped nothing), or
            None to leave the fused token's column as `mask` has it.
        num_prefix_tokens: prefix tokens leading the sequence (never padding).
    """
    batch_size, num_patches = patch_positions.shape
    padded = torch.zeros(batch_size, num_tokens, dtype=torch.bool, device=patch_positions.device)
    padded[:, num_prefix_tokens : num_prefix_tokens + num_patches] = patch_positions < 0
    if fused_valid is not None:
        padded[:, -1] = ~fused_valid
    if mask is None:
        mask = torch.zeros(batch_size, 1, 1, num_tokens, dtype=dtype, device=patch_positions.device)
    return mask.masked_fill(padded[:, None, None, :], torch.finfo(mask.dtype).min)
