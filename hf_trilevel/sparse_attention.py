"""Attention level of Tri-Level E-ViT: keep only the strongest connections of each query row.

At each pruning layer a 0/1 mask is computed from the head-averaged attention among the kept tokens; it is shared
by all heads and reused by the following layers until the next pruning layer. The mask reaches the attention
kernels through the standard `attention_mask` argument of transformers' attention interface, as the additive mask
both `eager` and `sdpa` take, so `sdpa` keeps running its fused kernel.

Summary tokens (the class token, and the fused token when token fusion is on) keep their whole row and column:
they are how information flows between the kept tokens.

This file is part of the remote-code set copied into every saved checkpoint: it imports only torch, transformers
and the standard library.
"""

import torch

from .token_reduction import num_kept_tokens

MASKED_ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")


def check_masked_attention_implementation(attn_implementation: str | None) -> None:
    """Raise `ValueError` unless `attn_implementation` can apply an arbitrary attention mask."""
    if attn_implementation not in MASKED_ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"`attention_keep_rate` < 1 needs an attention implementation that takes an arbitrary mask, one of "
            f"{list(MASKED_ATTENTION_IMPLEMENTATIONS)}; the model uses {attn_implementation!r}. Load it with "
            f"`attn_implementation='sdpa'`, or keep `attention_keep_rate=1.0`."
        )


@torch.no_grad()
def select_connections(
    connection_scores: torch.Tensor, keep_rate: float, has_trailing_summary_token: bool
) -> torch.Tensor:
    """Boolean mask keeping the top `ceil(tokens * keep_rate)` connections of every query row.

    Args:
        connection_scores: `[batch, tokens, tokens]`, query rows by key columns; the class token is at index 0.
        keep_rate: fraction of each row to keep, in (0, 1].
        has_trailing_summary_token: whether the last token is a fused summary token (treated like the class token).

    Returns:
        `[batch, tokens, tokens]` bool, True where attention is allowed. Summary columns are part of each row's
        budget and always chosen, so an ordinary row keeps exactly `max(k, number of summary tokens)` entries;
        summary rows are kept whole.
    """
    num_tokens = connection_scores.shape[-1]
    num_keep = num_kept_tokens(num_tokens, keep_rate)
    summary = [0, num_tokens - 1] if has_trailing_summary_token else [0]
    scores = connection_scores.clone()
    scores[..., summary] = float("inf")
    keep_index = torch.topk(scores, num_keep, dim=-1, sorted=False).indices
    mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, keep_index, True)
    mask[:, summary, :] = True
    return mask


def connection_scores(query: torch.Tensor, key: torch.Tensor, scaling: float) -> torch.Tensor:
    """Head-averaged attention probabilities among the given tokens, `[batch, tokens, tokens]` float32.

    Args:
        query, key: `[batch, heads, tokens, head_dim]`.
    """
    logits = torch.matmul(query, key.transpose(-1, -2)) * scaling
    return logits.softmax(dim=-1, dtype=torch.float32).mean(dim=1)


def sparse_attention_mask(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    keep_rate: float,
    has_trailing_summary_token: bool,
) -> torch.Tensor:
    """Mask for the layers that follow a pruning layer, `[batch, 1, tokens, tokens]` bool.

    Args:
        query, key: `[batch, heads, tokens, head_dim]` of the kept class and patch tokens, as computed in the pruning
            layer. A fused token, if `has_trailing_summary_token`, has no query or key yet; it is added as a last
            row and column that are always kept.
    """
    with torch.no_grad():
        scores = connection_scores(query, key, scaling)
        if has_trailing_summary_token:
            scores = torch.nn.functional.pad(scores, (0, 1, 0, 1))
        return select_connections(scores, keep_rate, has_trailing_summary_token).unsqueeze(1)


def additive_attention_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Turn a boolean keep-mask into the additive mask both `eager` and `sdpa` apply: 0 where kept, the dtype's most
    negative value elsewhere.

    Done once per pruning layer and reused by the following layers: handed a boolean mask, sdpa would convert it to
    this form again in every layer (measured on CPU: about 3% of a DeiT-Tiny forward).
    """
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return additive.masked_fill_(~mask, torch.finfo(dtype).min)
