"""One TriLevel ViT layer: its two blocks (`vit_blocks.py`), and the token/attention reduction between them.

The layer reads top to bottom like ViT's: norm, attention, residual; at a pruning layer its `TokenSelector` decides
which tokens stay and the layer applies that decision (`token_reduction.keep_tokens`) and rebuilds the attention
mask (`sparse_attention`); then norm, MLP, residual. A family whose blocks differ (DINOv2's LayerScale) overrides
`attention_block` and `mlp_block` and keeps the reduction.

This file is part of the remote-code set copied into every saved checkpoint: it imports only torch, transformers,
the standard library and flat siblings.
"""

import torch
import transformers
from torch import nn

try:  # transformers 5 internals this file builds on; they move between major versions
    from transformers.modeling_layers import GradientCheckpointingLayer
except ImportError as error:
    raise ImportError(
        f"The TriLevel ViT code needs transformers 5 (tested with 5.25); this environment has "
        f"{transformers.__version__}. Install `transformers>=5,<6` to load this checkpoint. ({error})"
    ) from error

from .configuration_trilevel_vit import SparsitySettings
from .sparse_attention import key_padding_mask, sparse_attention_mask
from .token_merging import (
    follow_kept_tokens,
    follow_sources,
    match_tokens,
    max_merge,
    merge_tokens,
    proportional_attention_mask,
)
from .token_reduction import (
    class_token_attention,
    dropped_token_weights,
    fuse_weighted_tokens,
    gather_tokens,
    keep_tokens,
)
from .token_selectors import TokenSelection, accepts_settings, build_token_selector, patch_log_scores
from .vit_blocks import TriLevelViTAttention, TriLevelViTMLP


class TriLevelViTLayer(GradientCheckpointingLayer):
    """A ViT layer; at a pruning layer, tokens and attention connections are reduced between attention and MLP.

    The reduction (`forward`'s middle, `reduce`, `merge`) is the same for every family; what runs before and after it
    is the family's: `attention_block` (norm, attention, residual) and `mlp_block` (norm, MLP, residual). A family
    whose layer differs from ViT's (DINOv2's layer scale) subclasses this, builds its own modules, calls
    `init_token_reduction` and overrides the two blocks.
    """

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.attention = TriLevelViTAttention(config, layer_idx)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = TriLevelViTMLP(config, layer_idx)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.init_token_reduction(config, layer_idx)

    def init_token_reduction(self, config, layer_idx: int) -> None:
        """The reduction's state: this layer's token selector (where the config prunes) and the config facts it reads.
        `self.attention` must exist: its `scaling` scores the tokens."""
        self.layer_idx = layer_idx
        # Built where the config prunes; a selector is a module so that a learned one's weights are checkpointed.
        prunes = layer_idx in config.token_prune_layers
        self.token_selector = build_token_selector(config, layer_idx) if prunes else None
        self.is_last_layer = layer_idx == config.num_hidden_layers - 1
        self.num_prefix_tokens = getattr(config, "num_prefix_tokens", 1)  # never dropped or merged (class token)
        self.selector_takes_settings = prunes and accepts_settings(self.token_selector)

    def forward(
        self,
        hidden_states: torch.Tensor,
        patch_positions: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_sizes: torch.Tensor | None = None,
        token_sources: torch.Tensor | None = None,
        *,
        sparsity: SparsitySettings,
        **kwargs,
    ) -> tuple[torch.Tensor | None, ...]:
        """
        Args:
            hidden_states: `[batch, tokens, hidden]`, class token first (and a fused token last, after fusion).
            patch_positions: `[batch, patches]` original position of each patch token (after the prefix tokens),
                -1 at padded slots (per-image counts).
            attention_mask: the additive mask built by the last pruning layer (or, with merging, the proportional
                attention mask of the last merge), or None (dense, no padding).
            token_sizes: `[batch, tokens]` float, the original patches each token holds, once a layer has merged
                (token merging); None while every token holds one.
            token_sources: `[batch, original patches]` int64, the sequence index of the token holding each original
                patch (-1: dropped), tracked only when `sparsity.record_token_sources`; else None.
            sparsity: this forward's settings, passed by keyword so a checkpointing recompute reuses them.

        Returns:
            `(hidden_states, patch_positions, attention_mask, token_sizes, token_sources, auxiliary_loss,
            *token_importance)`, reduced if this is a pruning layer or merges; `auxiliary_loss` is the selector's
            (or None). The importance tensors come last, each
            at the top level of the tuple, where reentrant gradient checkpointing keeps their gradients (it drops
            those of tensors nested deeper). `token_importance` is empty unless
            `sparsity.record_token_importance`: then a pruning layer adds the `[batch, patches]` log importance its
            selector ranks the incoming patch tokens by, and the last layer its log class-token attention (-inf at
            padding, with gradients); see `TriLevelViTModelOutput.token_importance`.
        """
        hidden_states, query_key = self.attention_block(hidden_states, attention_mask, **kwargs)

        token_importance = ()
        if sparsity.record_token_importance:
            token_importance = self.token_importance(hidden_states, patch_positions, *query_key, attention_mask)
        auxiliary_loss = sequence_index = None
        if self.layer_idx in sparsity.token_prune_layers:
            incoming = hidden_states.shape[1]
            hidden_states, patch_positions, attention_mask, auxiliary_loss, sequence_index = self.reduce(
                hidden_states, patch_positions, *query_key, attention_mask, sparsity
            )
            if sequence_index is not None:
                token_sizes, token_sources = follow_kept_tokens(
                    sequence_index, incoming, hidden_states.shape[1], token_sizes, token_sources
                )
        merge_r = sparsity.token_merge_r[self.layer_idx] if sparsity.token_merge_r else 0
        if merge_r:
            # Head-averaged keys, [batch, tokens, head_dim], reduced over the projection's contiguous head axis.
            metric = query_key[1].detach().transpose(1, 2).mean(dim=2)
            if sequence_index is not None:
                metric = gather_tokens(metric, sequence_index)
            hidden_states, patch_positions, token_sizes, token_sources = self.merge(
                hidden_states, patch_positions, metric, token_sizes, token_sources, merge_r
            )
        if token_sizes is not None and sparsity.token_merge_proportional_attention:
            attention_mask = proportional_attention_mask(token_sizes, query_key[0].dtype)
        del query_key  # as large as the hidden states twice over: free them before the MLP's wide activations

        hidden_states = self.mlp_block(hidden_states)
        return (
            hidden_states,
            patch_positions,
            attention_mask,
            token_sizes,
            token_sources,
            auxiliary_loss,
            *token_importance,
        )

    def attention_block(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Norm, attention, residual (ViT's); returns the new hidden states and the attention's query and key states,
        which the reduction scores tokens and connections by."""
        residual = hidden_states
        hidden_states = self.layernorm_before(hidden_states)
        hidden_states, _, query_key = self.attention(hidden_states, attention_mask, **kwargs)
        return self.dropout(hidden_states) + residual, query_key

    def mlp_block(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Norm, MLP, residual (ViT's), on the tokens the reduction left."""
        residual = hidden_states
        hidden_states = self.layernorm_after(hidden_states)
        hidden_states = self.mlp(hidden_states)
        return self.dropout(hidden_states) + residual

    def merge(
        self,
        hidden_states: torch.Tensor,
        patch_positions: torch.Tensor,
        metric: torch.Tensor,
        token_sizes: torch.Tensor | None,
        token_sources: torch.Tensor | None,
        merge_r: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Merge `merge_r` patch tokens into their most similar partners (`token_merging`); the class token and a
        fused token are never merged. Returns the new hidden states, positions, sizes and sources."""
        num_patches = patch_positions.shape[1]
        if merge_r > max_merge(num_patches):
            raise ValueError(
                f"`token_merge_r` merges {merge_r} tokens in layer {self.layer_idx}, which has {num_patches} patch "
                f"tokens there for these images (at most {max_merge(num_patches)} can merge); lower `token_merge_r` "
                "for this image size."
            )
        if token_sizes is None:
            token_sizes = hidden_states.new_ones(hidden_states.shape[:2], dtype=torch.float32)
        prefix = self.num_prefix_tokens
        source, destination = match_tokens(metric, merge_r, num_patches, prefix)
        hidden_states, token_sizes, sequence_index, slot_of = merge_tokens(
            hidden_states, token_sizes, source, destination
        )
        survivors = sequence_index[:, prefix : prefix + num_patches - merge_r]
        patch_positions = torch.gather(patch_positions, 1, survivors - prefix)
        if token_sources is not None:
            token_sources = follow_sources(token_sources, slot_of)
        return hidden_states, patch_positions, token_sizes, token_sources

    def token_importance(
        self,
        hidden_states: torch.Tensor,
        patch_positions: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, ...]:
        """`[batch, patches]` log importance of the current patches: the selector's ranking scores at a pruning
        layer, then the class token's log attention at the last layer (what the prediction reads)."""
        found = []
        log_importance = getattr(self.token_selector, "log_importance", None)
        if callable(log_importance):
            scaling = self.attention.scaling
            found.append(log_importance(hidden_states, query, key, patch_positions, attention_mask, scaling=scaling))
        if self.is_last_layer:
            prefix, heads = self.num_prefix_tokens, self.attention.config.num_attention_heads
            attention = class_token_attention(query, key, self.attention.scaling, attention_mask, heads, prefix)
            found.append(patch_log_scores(None, hidden_states, attention, patch_positions, prefix))
        return tuple(found)

    def reduce(
        self,
        hidden_states: torch.Tensor,
        patch_positions: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        sparsity: SparsitySettings,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Apply the selector's decision (token level), then mask connections among the survivors (attention level).

        Returns `(hidden_states, patch_positions, attention_mask, auxiliary_loss, sequence_index)`; `sequence_index`
        (`[batch, prefix + kept]`, the survivors' old sequence indices) is None when no token was dropped.
        """
        if self.token_selector is None:
            raise ValueError(
                f"`token_prune_layers` is {list(sparsity.token_prune_layers)} but layer {self.layer_idx} was built "
                "without a token selector: pruning layers are fixed when the model is built; build it from a config "
                "with the pruning layers you want."
            )
        num_patches = patch_positions.shape[1]
        # Selectors written before `**settings` existed take only the three keywords; they keep working.
        settings = {"sparsity": sparsity} if self.selector_takes_settings else {}
        selection = self.token_selector(
            hidden_states,
            query,
            key,
            patch_positions,
            attention_mask,
            keep_rate=sparsity.token_keep_rate,
            fusion=sparsity.token_fusion,
            scaling=self.attention.scaling,
            **settings,
        )
        keep_all_loss = None
        if selection is not None and selection.patch_index is None:  # keeps every token, returns only a loss
            keep_all_loss, selection = selection.auxiliary_loss, None
        if selection is None and sparsity.attention_keep_rate >= 1.0:
            return hidden_states, patch_positions, attention_mask, keep_all_loss, None  # same tokens, same mask

        # With a padding selector, an incoming mask may carry padding from an earlier per-image decision; re-applying
        # it is exact (a masked_fill with nothing to fill) when there is none, and avoids a host sync to find out.
        returned_padding = selection is not None and selection.valid_mask is not None
        if returned_padding and not self.token_selector.pads_tokens:
            raise ValueError(
                f"{type(self.token_selector).__name__} returned a `valid_mask` (per-image counts) but does not set "
                "`pads_tokens = True`; set it so later layers keep the padding masked."
            )
        padded = self.token_selector.pads_tokens and (attention_mask is not None or returned_padding)
        sequence_index = fused_valid = None  # sequence_index: the surviving class and patch tokens' old positions
        dropped_index = None
        if selection is not None:
            hidden_states, patch_positions, sequence_index, fused_valid = self.apply_selection(
                hidden_states, patch_positions, selection, sparsity.token_fusion, padded
            )
            dropped_index = sequence_index

        prefix = self.num_prefix_tokens
        has_fused_token = hidden_states.shape[1] > prefix + patch_positions.shape[1]
        if padded and fused_valid is None and has_fused_token and attention_mask is not None:
            fused_valid = attention_mask[:, 0, 0, -1] == 0  # unchanged sequence: keep the fused token's validity

        mask = None
        if sparsity.attention_keep_rate < 1.0:
            if sequence_index is None:  # nothing dropped; an earlier fused token (last) is a summary, not a candidate
                sequence_index = torch.arange(prefix + num_patches, device=hidden_states.device)
                sequence_index = sequence_index.expand(hidden_states.shape[0], -1)
            key_valid = None
            if padded:
                prefix_positions = patch_positions.new_zeros(patch_positions.shape[0], prefix)
                key_valid = torch.cat([prefix_positions, patch_positions], dim=1) >= 0
            mask = sparse_attention_mask(
                query,
                key,
                self.attention.scaling,
                sparsity.attention_keep_rate,
                sequence_index,
                attention_mask,
                has_trailing_summary_token=has_fused_token,
                dtype=query.dtype,
                key_valid=key_valid,
                num_heads=self.attention.config.num_attention_heads,
                num_prefix_tokens=prefix,
            )
        if padded:
            mask = key_padding_mask(patch_positions, hidden_states.shape[1], mask, query.dtype, fused_valid, prefix)
        return (
            hidden_states,
            patch_positions,
            mask,
            selection.auxiliary_loss if selection is not None else keep_all_loss,
            dropped_index,
        )

    def apply_selection(
        self,
        hidden_states: torch.Tensor,
        patch_positions: torch.Tensor,
        selection: TokenSelection,
        fusion: bool,
        padded: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Keep the selected tokens (and fuse the rest); returns `keep_tokens`' results and the fused token's validity.

        The validity (`[batch]` bool, or None) is computed only with padding: an image of a per-image decision that
        dropped nothing has an empty fused token, which must be masked like padding.
        """
        fused = fused_valid = None
        prefix = self.num_prefix_tokens
        if fusion:
            if selection.scores is None:
                raise ValueError(f"`token_fusion=True` needs scores from the {type(self.token_selector).__name__}.")
            weights = dropped_token_weights(selection.scores, selection.patch_index, selection.valid_mask, prefix)
            fused = fuse_weighted_tokens(hidden_states, weights, prefix)
            if padded:
                fused_valid = weights.sum(dim=-1) > 0
        kept, positions, sequence_index = keep_tokens(
            hidden_states, patch_positions, selection.patch_index, fused, selection.valid_mask, prefix
        )
        if selection.token_gates is not None:
            kept = gate_kept_patches(kept, selection.token_gates, prefix)
        return kept, positions, sequence_index, fused_valid


def gate_kept_patches(hidden_states: torch.Tensor, gates: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Multiply the kept patch tokens (after the `num_prefix_tokens` prefix tokens) by `[batch, k]` gates; prefix and
    fused tokens are left alone."""
    end = num_prefix_tokens + gates.shape[1]
    patches = hidden_states[:, num_prefix_tokens:end] * gates.unsqueeze(-1).to(hidden_states.dtype)
    return torch.cat([hidden_states[:, :num_prefix_tokens], patches, hidden_states[:, end:]], dim=1)


__all__ = ["TriLevelViTAttention", "TriLevelViTLayer", "TriLevelViTMLP"]  # the blocks re-exported: their old home
