"""TriLevel ViT: transformers' ViT with token dropping and top-k attention sparsity at chosen layers.

Parameter names are those of `transformers.ViTModel` / `ViTForImageClassification`, so ViT and DeiT checkpoints load
unchanged, and with both keep rates at 1.0 the outputs equal transformers' ViT. At each pruning layer, after the
attention block and its residual and before the MLP:

1. tokens: the patch tokens are scored by the class token's attention (averaged over heads) and the top
   `ceil(n * token_keep_rate)` are kept, optionally fusing the rest into one token;
2. attention: a top-k connection mask is built among the kept tokens and used by the following layers until the
   next pruning layer.

This file is part of the remote-code set copied into every saved checkpoint: it imports only torch, transformers,
the standard library and its flat siblings.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import transformers
from torch import nn

try:  # transformers 5 internals this file builds on; they move between major versions
    from transformers.conversion_mapping import (
        get_checkpoint_conversion_mapping,
        register_checkpoint_conversion_mapping,
    )
    from transformers.modeling_layers import GradientCheckpointingLayer
    from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.vit.modeling_vit import (
        ViTAttention,
        ViTEmbeddings,
        ViTMLP,
        ViTPooler,
        ViTPreTrainedModel,
        eager_attention_forward,
    )
    from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
    from transformers.utils.output_capturing import capture_outputs
except ImportError as error:
    raise ImportError(
        f"The TriLevel ViT code needs transformers 5 (tested with 5.23); this environment has "
        f"{transformers.__version__}. Install `transformers>=5,<6` to load this checkpoint. ({error})"
    ) from error

from .configuration_trilevel_vit import SparsitySettings, TriLevelViTConfig, check_keep_rate
from .sparse_attention import check_masked_attention_implementation, sparse_attention_mask
from .token_reduction import (
    class_token_attention,
    fuse_dropped_tokens,
    keep_tokens,
    num_kept_tokens,
    select_top_tokens,
)

# transformers writes ViT checkpoints with their v4 key names and renames them on load only for its own classes;
# registering the ViT renames under our model type makes plain ViT/DeiT folders (and our own saves) load.
register_checkpoint_conversion_mapping("trilevel_vit", get_checkpoint_conversion_mapping("ViTModel"), overwrite=True)

AUTO_MAP = {
    "AutoConfig": "configuration_trilevel_vit.TriLevelViTConfig",
    "AutoModel": "modeling_trilevel_vit.TriLevelViTModel",
    "AutoModelForImageClassification": "modeling_trilevel_vit.TriLevelViTForImageClassification",
}


@dataclass
class TriLevelViTModelOutput(BaseModelOutputWithPooling):
    r"""
    Sequences shrink at each pruning layer: `last_hidden_state` and `hidden_states` hold the class token, the surviving
    patch tokens and, with `token_fusion=True`, one fused token last. `hidden_states[i][:, 1:]` is therefore one longer
    than `kept_token_indices` after fusion; pool over `[:, 1 : 1 + kept]` to average patch tokens only.

    kept_token_indices (`tuple[torch.LongTensor]`, *optional*, returned with `output_kept_token_indices=True`):
        One `[batch, kept]` tensor per pruning layer (in `config.token_prune_layers` order): the original patch
        positions (0-indexed, row-major over the patch grid) of the patch tokens alive after that layer, ascending.
    """

    kept_token_indices: tuple[torch.LongTensor, ...] | None = None


@dataclass
class TriLevelViTImageClassifierOutput(ImageClassifierOutput):
    r"""
    kept_token_indices (`tuple[torch.LongTensor]`, *optional*, returned with `output_kept_token_indices=True`):
        See [`TriLevelViTModelOutput`].
    """

    kept_token_indices: tuple[torch.LongTensor, ...] | None = None


class TriLevelViTAttention(ViTAttention):
    """`ViTAttention` that also returns its query and key states.

    A pruning layer scores tokens and connections from these, so it needs neither a second projection nor the
    attention matrix, which fused kernels (sdpa, flash) never materialise.
    """

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
        attn_output = self.o_proj(attn_output.reshape(*input_shape, -1).contiguous())
        return attn_output, attn_weights, (query_states, key_states)


class TriLevelViTLayer(GradientCheckpointingLayer):
    """A ViT layer; at a pruning layer, tokens and attention connections are reduced between attention and MLP."""

    def __init__(self, config: TriLevelViTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.attention = TriLevelViTAttention(config)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ViTMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        patch_positions: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        sparsity: SparsitySettings,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """
        Args:
            hidden_states: `[batch, tokens, hidden]`, class token first (and a fused token last, after fusion).
            patch_positions: `[batch, patches]` original position of each patch token in `hidden_states[:, 1:]`.
            attention_mask: the additive mask built by the last pruning layer, or None (dense).
            sparsity: this forward's settings, passed by keyword so a checkpointing recompute reuses them.

        Returns:
            `(hidden_states, patch_positions, attention_mask)`, reduced if this is a pruning layer.
        """
        residual = hidden_states
        hidden_states = self.layernorm_before(hidden_states)
        hidden_states, _, query_key = self.attention(hidden_states, attention_mask, **kwargs)
        hidden_states = self.dropout(hidden_states) + residual

        if self.layer_idx in sparsity.token_prune_layers:
            hidden_states, patch_positions, attention_mask = self.reduce(
                hidden_states, patch_positions, *query_key, attention_mask, sparsity
            )
        del query_key  # as large as the hidden states twice over: free them before the MLP's wide activations

        residual = hidden_states
        hidden_states = self.layernorm_after(hidden_states)
        hidden_states = self.mlp(hidden_states)
        hidden_states = self.dropout(hidden_states) + residual
        return hidden_states, patch_positions, attention_mask

    def reduce(
        self,
        hidden_states: torch.Tensor,
        patch_positions: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        sparsity: SparsitySettings,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Drop tokens (token level), then build the connection mask among the survivors (attention level)."""
        num_patches = patch_positions.shape[1]
        num_keep = num_kept_tokens(num_patches, sparsity.token_keep_rate)
        sequence_index = None  # positions of the surviving class and patch tokens in this layer's sequence

        if num_keep < num_patches:
            # Scores only decide which tokens stay, unless fusion also uses them as weights.
            with torch.set_grad_enabled(torch.is_grad_enabled() and sparsity.token_fusion):
                class_attention = class_token_attention(query, key, self.attention.scaling)
            patch_index = select_top_tokens(class_attention[:, 1 : 1 + num_patches], num_keep)
            fused = fuse_dropped_tokens(hidden_states, class_attention, patch_index) if sparsity.token_fusion else None
            hidden_states, patch_positions, sequence_index = keep_tokens(
                hidden_states, patch_positions, patch_index, fused
            )

        if sparsity.attention_keep_rate >= 1.0:
            return hidden_states, patch_positions, None
        if sequence_index is None:  # nothing dropped; an earlier fused token (last) is a summary, not a candidate
            sequence_index = torch.arange(1 + num_patches, device=hidden_states.device).expand(len(hidden_states), -1)
        mask = sparse_attention_mask(
            query,
            key,
            self.attention.scaling,
            sparsity.attention_keep_rate,
            sequence_index,
            attention_mask,
            has_trailing_summary_token=hidden_states.shape[1] > 1 + patch_positions.shape[1],
            dtype=query.dtype,
        )
        return hidden_states, patch_positions, mask


class TriLevelViTPreTrainedModel(ViTPreTrainedModel):
    """Weight init, loading and saving shared by the TriLevel ViT classes, plus keep-rate control."""

    config: TriLevelViTConfig
    config_class = TriLevelViTConfig
    _no_split_modules = ["ViTEmbeddings", "TriLevelViTLayer"]
    _supports_flex_attn = False
    _can_record_outputs = {
        "hidden_states": TriLevelViTLayer,
        "attentions": TriLevelViTAttention,
    }

    def set_keep_rates(self, token_keep_rate: float | None = None, attention_keep_rate: float | None = None) -> None:
        """Change the token and/or attention keep rates; the next forward uses them. No reload, no new weights.

        The rates live in `model.config`, as every transformers setting does, so models built from the same config
        object (e.g. `Cls(model.config)` for an EMA or teacher copy) change together; build copies from
        `copy.deepcopy(model.config)` to set them apart.

        Raises `ValueError` (and changes nothing) if a rate is outside (0, 1], or if attention sparsity is asked of
        an attention implementation that cannot apply a mask.
        """
        updates = {
            name: check_keep_rate(name, value)
            for name, value in (("token_keep_rate", token_keep_rate), ("attention_keep_rate", attention_keep_rate))
            if value is not None
        }
        if updates.get("attention_keep_rate", 1.0) < 1.0:
            check_masked_attention_implementation(self.config._attn_implementation)
        for name, value in updates.items():
            setattr(self.config, name, value)

    @contextmanager
    def keep_rates(
        self, token_keep_rate: float | None = None, attention_keep_rate: float | None = None
    ) -> Iterator[None]:
        """Temporarily use other keep rates (e.g. to evaluate several operating points of one checkpoint)."""
        previous = (self.config.token_keep_rate, self.config.attention_keep_rate)
        self.set_keep_rates(token_keep_rate, attention_keep_rate)
        try:
            yield
        finally:
            self.set_keep_rates(*previous)

    def post_init(self):
        super().post_init()
        # `from_pretrained(..., token_keep_rate=x)` sets config attributes after the config validated itself.
        self.config.check_trilevel_fields()
        if self.config.attention_keep_rate < 1.0:
            check_masked_attention_implementation(self.config._attn_implementation)

    def save_pretrained(self, save_directory, *args, save_original_format: bool = False, **kwargs):
        """Save like transformers does, with two differences that keep TriLevel checkpoints self-consistent.

        * `auto_map` gets every Auto class (transformers writes only the saved class and its config), so
          AutoConfig, AutoModel and AutoModelForImageClassification all resolve from any TriLevel checkpoint.
        * Weights keep the names they have in memory (`save_original_format=False`). transformers would otherwise
          write ViT's v4 names, which `from_pretrained` renames back but `Trainer(resume_from_checkpoint=...)`
          (a plain `load_state_dict`) does not, so a resumed run would silently restart from random weights.
        """
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **AUTO_MAP}
        return super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)


def check_pixel_values(pixel_values: torch.Tensor | None, config: TriLevelViTConfig, interpolate: bool) -> None:
    """Raise `ValueError` naming what is wrong with `pixel_values` before any layer runs."""
    if pixel_values is None:
        raise ValueError("`pixel_values` is required: a float tensor of shape [batch, channels, height, width].")
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise ValueError(f"`pixel_values` must be a 4-D tensor [batch, channels, height, width], got {shape}.")
    if not pixel_values.is_floating_point():
        raise ValueError(
            f"`pixel_values` must be a floating-point tensor (normalised images, as an image processor returns), "
            f"got dtype {pixel_values.dtype}."
        )
    if pixel_values.shape[1] != config.num_channels:
        raise ValueError(
            f"`pixel_values` has {pixel_values.shape[1]} channels but the config expects "
            f"num_channels={config.num_channels}."
        )
    size = config.image_size if isinstance(config.image_size, (list, tuple)) else (config.image_size,) * 2
    if not interpolate and tuple(pixel_values.shape[2:]) != tuple(size):
        raise ValueError(
            f"`pixel_values` is {pixel_values.shape[2]}x{pixel_values.shape[3]} pixels but the config expects "
            f"image_size={size[0]}x{size[1]}; resize the images or pass `interpolate_pos_encoding=True`."
        )


class TriLevelViTModel(TriLevelViTPreTrainedModel):
    """The TriLevel ViT encoder: `ViTModel` with token and attention sparsity at `config.token_prune_layers`."""

    def __init__(self, config: TriLevelViTConfig, add_pooling_layer: bool = True, use_mask_token: bool = False):
        super().__init__(config)
        self.embeddings = ViTEmbeddings(config, use_mask_token=use_mask_token)
        self.layers = nn.ModuleList([TriLevelViTLayer(config, index) for index in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = ViTPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.BoolTensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_kept_token_indices: bool | None = None,
        **kwargs,
    ) -> TriLevelViTModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `[batch, channels, height, width]`):
            Normalised images, as the image processor returns them.
        bool_masked_pos (`torch.BoolTensor` of shape `[batch, patches]`, *optional*):
            Patches replaced by the mask token (only if the model was built with `use_mask_token=True`).
        output_kept_token_indices (`bool`, *optional*):
            Also return, per pruning layer, the original positions of the surviving patches.
        """
        if kwargs.get("attention_mask") is not None:
            raise ValueError(
                "`attention_mask` is not supported: the TriLevel ViT builds its own attention masks among the tokens "
                "it keeps. Drop the argument (images have no padding tokens to mask)."
            )
        kwargs.pop("attention_mask", None)
        check_pixel_values(pixel_values, self.config, bool(interpolate_pos_encoding))
        sparsity = SparsitySettings.from_config(self.config)
        if sparsity.attention_keep_rate < 1.0:
            check_masked_attention_implementation(self.config._attn_implementation)
        pixel_values = pixel_values.to(self.embeddings.patch_embeddings.projection.weight.dtype)

        hidden_states = self.embeddings(
            pixel_values, bool_masked_pos=bool_masked_pos, interpolate_pos_encoding=interpolate_pos_encoding
        )
        batch_size, num_tokens = hidden_states.shape[:2]
        patch_positions = torch.arange(num_tokens - 1, device=hidden_states.device).expand(batch_size, -1)
        attention_mask = None
        kept_token_indices = []
        for layer in self.layers:
            hidden_states, patch_positions, attention_mask = layer(
                hidden_states, patch_positions, attention_mask, sparsity=sparsity, **kwargs
            )
            if attention_mask is not None:
                attention_mask = attention_mask.detach()  # reentrant checkpointing marks outputs as requiring grad
            if output_kept_token_indices and layer.layer_idx in sparsity.token_prune_layers:
                kept_token_indices.append(patch_positions)

        sequence_output = self.layernorm(hidden_states)
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        return TriLevelViTModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            kept_token_indices=tuple(kept_token_indices) if output_kept_token_indices else None,
        )


class TriLevelViTForImageClassification(TriLevelViTPreTrainedModel):
    """TriLevel ViT with a linear classifier on the final class token, like `ViTForImageClassification`."""

    def __init__(self, config: TriLevelViTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = TriLevelViTModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_kept_token_indices: bool | None = None,
        **kwargs,
    ) -> TriLevelViTImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `[batch]`, *optional*):
            Class indices for the loss (cross-entropy for `num_labels > 1`, as in transformers' ViT).
        output_kept_token_indices (`bool`, *optional*):
            See [`TriLevelViTModel.forward`].
        """
        outputs: TriLevelViTModelOutput = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_kept_token_indices=output_kept_token_indices,
            **kwargs,
        )
        logits = self.classifier(outputs.last_hidden_state[:, 0, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return TriLevelViTImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            kept_token_indices=outputs.kept_token_indices,
        )


TriLevelViTConfig.register_for_auto_class()
TriLevelViTModel.register_for_auto_class("AutoModel")
TriLevelViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "TriLevelViTForImageClassification",
    "TriLevelViTImageClassifierOutput",
    "TriLevelViTModel",
    "TriLevelViTModelOutput",
    "TriLevelViTPreTrainedModel",
]
