"""Token selection seam: which patch tokens survive a pruning layer, chosen by name like an attention backend.

A `TokenSelector` is an `nn.Module` that each pruning layer owns (so a learned selector's weights live in the
checkpoint under `...layers.{i}.token_selector.`). It scores and decides; the layer only applies the decision. The
config field `token_selector` names the class in a small registry, as `config._attn_implementation` names an
attention function in transformers' `AttentionInterface`:

    register_token_selector("my_selector", MySelector)
    config = TriLevelViTConfig(token_selector="my_selector")

The registry lives in this module: a checkpoint loaded with `trust_remote_code=True` runs its own copy of this file,
so a selector registered in the `hf_trilevel` package is not visible there (and vice versa). The contract (shapes,
padding convention, auxiliary losses) is documented in docs/token_selection.md.

This file is part of the remote-code set copied into every saved checkpoint: it imports only torch, the standard
library and flat siblings.
"""

from dataclasses import dataclass

import torch
from torch import nn

from .token_reduction import class_token_attention, num_kept_tokens, select_top_tokens


@dataclass
class TokenSelection:
    """A selector's decision for one pruning layer.

    Attributes:
        patch_index: `[batch, k]` int64 indices into the layer's current patch axis (0 = first patch token after the
            class token), ascending within each image's valid slots.
        scores: `[batch, tokens]` non-negative weights over the current sequence (class token first) that token
            fusion averages the dropped tokens with; required when `token_fusion=True`.
        kept_counts: `[batch]` int64 number of valid slots per image, or None when every image keeps all `k`.
        valid_mask: `[batch, k]` bool, False at padded slots, or None when every slot is valid. Padded slots come
            after each image's valid ones; their indices are ignored (point them at any dropped patch).
        auxiliary_loss: a scalar tensor the model adds to its loss (e.g. a learned selector's budget term), or None.
    """

    patch_index: torch.Tensor
    scores: torch.Tensor | None = None
    kept_counts: torch.Tensor | None = None
    valid_mask: torch.Tensor | None = None
    auxiliary_loss: torch.Tensor | None = None


class TokenSelector(nn.Module):
    """Base class of token selectors: subclass, implement `forward`, and register the class under a name.

    Built once per pruning layer as `selector_class(config, layer_idx)`.

    A selector that returns per-image counts (`valid_mask`) sets `pads_tokens = True`: the layers then carry the
    padding through the masks of later layers. Rectangular selectors leave it False and pay nothing for padding.
    """

    pads_tokens: bool = False

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(
        self,
        hidden_states: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        patch_positions: torch.Tensor,
        attention_mask: torch.Tensor | None,
        *,
        keep_rate: float,
        fusion: bool,
        scaling: float,
    ) -> TokenSelection | None:
        """Decide which patch tokens survive; return None to keep them all.

        Args:
            hidden_states: `[batch, tokens, hidden]` after the layer's attention block and residual.
            query, key: `[batch, heads, tokens, head_dim]` of the layer's attention (no extra projection needed).
            patch_positions: `[batch, patches]` original positions of the current patch tokens (-1 = padding).
            attention_mask: the additive mask the layer's attention used, or None.
            keep_rate: this forward's `token_keep_rate`.
            fusion: whether the layer will fuse the dropped tokens (then `scores` is required).
            scaling: the attention's logit scale, `head_dim ** -0.5`.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement `forward`.")


class ClassAttentionSelector(TokenSelector):
    """Tri-Level E-ViT / EViT: keep the patches the class token attends to most (heads averaged).

    The decision carries no gradient; the scores do only when fusion uses them as weights.
    """

    def forward(self, hidden_states, query, key, patch_positions, attention_mask, *, keep_rate, fusion, scaling):
        num_patches = patch_positions.shape[1]
        num_keep = num_kept_tokens(num_patches, keep_rate)
        if num_keep >= num_patches:
            return None
        with torch.set_grad_enabled(torch.is_grad_enabled() and fusion):
            scores = class_token_attention(query, key, scaling, attention_mask)
        with torch.no_grad():
            patch_index = select_top_tokens(scores[:, 1 : 1 + num_patches], num_keep)
        return TokenSelection(patch_index=patch_index, scores=scores)


_TOKEN_SELECTORS: dict[str, type[TokenSelector]] = {"class_attention": ClassAttentionSelector}


def register_token_selector(name: str, selector_class: type[TokenSelector], *, overwrite: bool = False) -> None:
    """Make `selector_class` available as `config.token_selector = name` for models built afterwards."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a token selector name must be a non-empty string, got {name!r}.")
    if not (isinstance(selector_class, type) and issubclass(selector_class, TokenSelector)):
        raise ValueError(f"`selector_class` must be a TokenSelector subclass, got {selector_class!r}.")
    if name in _TOKEN_SELECTORS and not overwrite and _TOKEN_SELECTORS[name] is not selector_class:
        raise ValueError(f"a token selector named {name!r} is already registered; pass `overwrite=True` to replace.")
    _TOKEN_SELECTORS[name] = selector_class


def unregister_token_selector(name: str) -> None:
    """Remove a registered selector (the built-in `"class_attention"` stays)."""
    if name == "class_attention":
        raise ValueError("the built-in token selector 'class_attention' cannot be unregistered.")
    _TOKEN_SELECTORS.pop(name, None)


def registered_token_selectors() -> list[str]:
    """Names `config.token_selector` accepts, sorted."""
    return sorted(_TOKEN_SELECTORS)


def check_token_selector(name: object) -> str:
    """Return `name`, or raise `ValueError` listing the registered selectors."""
    if not isinstance(name, str) or name not in _TOKEN_SELECTORS:
        raise ValueError(
            f"`token_selector` must be one of {registered_token_selectors()} (add one with "
            f"`register_token_selector`), got {name!r}."
        )
    return name


def build_token_selector(config, layer_idx: int) -> TokenSelector:
    """The selector `config.token_selector` names, built for layer `layer_idx`."""
    return _TOKEN_SELECTORS[check_token_selector(config.token_selector)](config, layer_idx)


__all__ = [
    "ClassAttentionSelector",
    "TokenSelection",
    "TokenSelector",
    "build_token_selector",
    "check_token_selector",
    "register_token_selector",
    "registered_token_selectors",
    "unregister_token_selector",
]
