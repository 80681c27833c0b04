"""The two blocks of a ViT layer, sized per layer: multi-head self-attention (which also returns its query and key
states, what the token and attention levels score) and the MLP.

transformers' `ViTAttention` and `ViTMLP` read the uniform `num_attention_heads` / `intermediate_size`; these read
`config.layer_num_attention_heads(i)` / `config.layer_intermediate_size(i)`, so a structurally slimmed model (fewer
heads or MLP neurons in some layers) is an ordinary checkpoint. Parameter names and shapes are those of
transformers' ViT (and DINOv2), so uniform checkpoints load unchanged. The head size stays
`hidden_size / num_attention_heads`.

This file is part of the remote-code set copied into every saved checkpoint: it imports only torch, transformers and
the standard library.
"""

from collections.abc import Callable

import torch
import transformers
from torch import nn

try:  # transformers 5 internals this file builds on; they move between major versions
    from transformers.activations import ACT2FN
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.vit.modeling_vit import eager_attention_forward
except ImportError as error:
    raise ImportError(
        f"The TriLevel ViT code needs transformers 5 (tested with 5.25); this environment has "
        f"{transformers.__version__}. Install `transformers>=5,<6` to load this checkpoint. ({error})"
    ) from error


class TriLevelViTAttention(nn.Module):
    """Multi-head self-attention with this layer's number of heads; also returns its query and key states.

    A pruning layer scores tokens and connections from the query and key states, so it needs neither a second
    projection nor the attention matrix, which fused kernels (sdpa, flash) never materialise.
    """

    # The output projection's name: ViT's `o_proj`; CLIP and SigLIP checkpoints call it `out_proj`.
    output_projection_name = "o_proj"

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config = config
        self.num_attention_heads = config.layer_num_attention_heads(layer_idx)
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.attention_dropout = config.attention_probs_dropout_prob
        self.scaling = self.head_dim**-0.5
        self.is_causal = False

        inner_size = self.num_attention_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, inner_size, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, inner_size, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, inner_size, bias=config.qkv_bias)
        self.add_module(self.output_projection_name, nn.Linear(inner_size, config.hidden_size, bias=True))

    @property
    def output_projection(self) -> nn.Linear:
        """The output projection (`o_proj`, or the family's name for it), for code that reads heads' columns."""
        return getattr(self, self.output_projection_name)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor]]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)

        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = self.output_projection(attn_output.reshape(*input_shape, -1).contiguous())
        return attn_output, attn_weights, (query_states, key_states)


class TriLevelViTMLP(nn.Module):
    """The feed-forward block with this layer's intermediate size (`fc1`, activation, `fc2`, as in ViT)."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config = config
        self.activation_fn = ACT2FN[config.hidden_act]
        intermediate_size = config.layer_intermediate_size(layer_idx)
        self.fc1 = nn.Linear(config.hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


__all__ = ["TriLevelViTAttention", "TriLevelViTMLP"]
