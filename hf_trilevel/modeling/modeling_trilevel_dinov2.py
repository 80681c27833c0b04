"""TriLevel DINOv2: transformers' DINOv2 with the TriLevel token and attention levels.

A DINOv2 layer differs from ViT's around the reduction, not in it: LayerScale multiplies both residual branches and
stochastic depth (drop path) replaces dropout, so `TriLevelDinov2Layer` supplies its own `attention_block` and
`mlp_block` and reuses the reduction unchanged. The embeddings always interpolate their position embeddings (any
image size), and the classifier reads the class token and the mean of the patch tokens: with tokens dropped, fused
or merged, that mean is taken over the original patches (`TriLevelViTModelOutput.patch_token_mean`: a merged token
counts as the patches it holds, a fused token as those dropped), so it estimates the dense model's mean. With every
rate at 1.0 and no merging the outputs equal `Dinov2Model`'s and `Dinov2ForImageClassification`'s.

Checkpoints are written with the key names transformers' own DINOv2 writes (`encoder.layer.N...`), so plain DINOv2
folders load and TriLevel DINOv2 folders load back into transformers' DINOv2 classes. `Dinov2Backbone` (feature maps,
which need every patch token at every stage) has no TriLevel twin.

This file is part of the remote-code set copied into every saved checkpoint: it imports only torch, transformers,
the standard library and its flat siblings.
"""

import torch
import transformers
from torch import nn

try:  # transformers 5 internals this file builds on; they move between major versions
    from transformers import initialization as init
    from transformers.conversion_mapping import (
        get_checkpoint_conversion_mapping,
        register_checkpoint_conversion_mapping,
    )
    from transformers.core_model_loading import WeightRenaming
    from transformers.modeling_layers import GradientCheckpointingLayer
    from transformers.models.dinov2.modeling_dinov2 import Dinov2DropPath, Dinov2Embeddings, Dinov2LayerScale
    from transformers.utils.generic import can_return_tuple
except ImportError as error:
    raise ImportError(
        f"The TriLevel DINOv2 code needs transformers 5 (tested with 5.25); this environment has "
        f"{transformers.__version__}. Install `transformers>=5,<6` to load this checkpoint. ({error})"
    ) from error

from .configuration_trilevel_dinov2 import TriLevelDinov2Config
from .modeling_trilevel_vit import (
    TriLevelViTImageClassifierOutput,
    TriLevelViTModel,
    TriLevelViTModelOutput,
    TriLevelViTPreTrainedModel,
)
from .vit_blocks import TriLevelViTAttention, TriLevelViTMLP
from .vit_layer import TriLevelViTLayer


# DINOv2's own renamings (v4 attention names on disk, `q_proj`... in memory, layers under `encoder.layer` in both).
# Renamings only: they reverse on save, so saved folders keep DINOv2's names and load into transformers' DINOv2
# (the mapping's SwiGLU weight converters would not reverse, and SwiGLU is refused by the config).
# Two copies: transformers marks a rule used when it renames a key and reverses used rules on save, so the rules the
# plain-load hook applies (`_checkpoint_key_renames`) must not be the registered objects.
def _dinov2_renames() -> list[WeightRenaming]:
    return [rule for rule in get_checkpoint_conversion_mapping("Dinov2Model") if isinstance(rule, WeightRenaming)]


_DINOV2_RENAMES = _dinov2_renames()
register_checkpoint_conversion_mapping("trilevel_dinov2", _dinov2_renames(), overwrite=True)

DINOV2_AUTO_MAP = {
    "AutoConfig": "configuration_trilevel_dinov2.TriLevelDinov2Config",
    "AutoModel": "modeling_trilevel_dinov2.TriLevelDinov2Model",
    "AutoModelForImageClassification": "modeling_trilevel_dinov2.TriLevelDinov2ForImageClassification",
}


class TriLevelDinov2Layer(TriLevelViTLayer):
    """A DINOv2 layer (norm, attention, LayerScale, drop path; norm, MLP, LayerScale, drop path) with the TriLevel
    reduction between its two blocks."""

    def __init__(self, config: TriLevelDinov2Config, layer_idx: int):
        GradientCheckpointingLayer.__init__(self)  # DINOv2's modules, not ViT's
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = TriLevelViTAttention(config, layer_idx)
        self.layer_scale1 = Dinov2LayerScale(config)
        self.drop_path = Dinov2DropPath(config.drop_path_rate) if config.drop_path_rate > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = TriLevelViTMLP(config, layer_idx)
        self.layer_scale2 = Dinov2LayerScale(config)
        self.init_token_reduction(config, layer_idx)

    def attention_block(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        residual = hidden_states
        hidden_states, _, query_key = self.attention(self.norm1(hidden_states), attention_mask, **kwargs)
        return self.drop_path(self.layer_scale1(hidden_states)) + residual, query_key

    def mlp_block(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.drop_path(self.layer_scale2(self.mlp(self.norm2(hidden_states)))) + hidden_states


class LayerStack(nn.Module):
    """Holds the layers at `encoder.layer`, where `Dinov2Encoder` holds them, so weights keep DINOv2's names."""

    def __init__(self, layers: nn.ModuleList):
        super().__init__()
        self.layer = layers


class ClassTokenPooler(nn.Module):
    """DINOv2's pooled output: the final (normalised) class token."""

    def __init__(self, config: TriLevelDinov2Config):
        super().__init__()

    def forward(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return sequence_output[:, 0]


class TriLevelDinov2PreTrainedModel(TriLevelViTPreTrainedModel):
    """Weight init, loading, saving and keep-rate control of the TriLevel DINOv2 classes."""

    config: TriLevelDinov2Config
    config_class = TriLevelDinov2Config
    base_model_prefix = "dinov2"
    _no_split_modules = ["Dinov2Embeddings", "TriLevelDinov2Layer"]
    _trilevel_auto_map = DINOV2_AUTO_MAP
    _checkpoint_key_renames = _DINOV2_RENAMES

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, Dinov2Embeddings):  # as transformers' DINOv2 initialises them
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=self.config.initializer_range)
            init.trunc_normal_(module.cls_token, mean=0.0, std=self.config.initializer_range)
            if module.mask_token is not None:
                init.zeros_(module.mask_token)
        if isinstance(module, Dinov2LayerScale):
            init.constant_(module.lambda1, self.config.layerscale_value)


class TriLevelDinov2Model(TriLevelDinov2PreTrainedModel, TriLevelViTModel):
    """The TriLevel DINOv2 encoder: `Dinov2Model` with token and attention sparsity at `config.token_prune_layers`.

    `pooler_output` is the final class token, as in `Dinov2Model`; `patch_token_mean` is the patch tokens' mean over
    the original patches (what `TriLevelDinov2ForImageClassification` reads).
    """

    pooler_class = ClassTokenPooler
    layer_class = TriLevelDinov2Layer
    returns_patch_token_mean = True
    interpolates_always = True

    @property
    def layers(self) -> nn.ModuleList:
        return self.encoder.layer

    def set_layers(self, layers: nn.ModuleList) -> None:
        self.encoder = LayerStack(layers)

    def build_embeddings(self, config: TriLevelDinov2Config, use_mask_token: bool) -> nn.Module:
        return Dinov2Embeddings(config)  # its mask token follows `config.use_mask_token`

    def embed(
        self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None, interpolate_pos_encoding: bool | None
    ) -> torch.Tensor:
        return self.embeddings(pixel_values, bool_masked_pos=bool_masked_pos)  # interpolates at every size


class TriLevelDinov2ForImageClassification(TriLevelDinov2PreTrainedModel):
    """TriLevel DINOv2 with `Dinov2ForImageClassification`'s head: a linear classifier on the final class token
    concatenated with the patch tokens' mean (over the original patches, see `TriLevelDinov2Model`)."""

    def __init__(self, config: TriLevelDinov2Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.dinov2 = TriLevelDinov2Model(config)
        self.classifier = (
            nn.Linear(config.hidden_size * 2, config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_kept_token_indices: bool | None = None,
        output_token_importance: bool | None = None,
        output_token_sources: bool | None = None,
        **kwargs,
    ) -> TriLevelViTImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `[batch]`, *optional*):
            Class indices for the loss (as in `Dinov2ForImageClassification`); the selectors' `auxiliary_loss`, if
            any, is added to it.
        output_kept_token_indices, output_token_importance, output_token_sources (`bool`, *optional*):
            See [`TriLevelViTModel.forward`].
        """
        outputs: TriLevelViTModelOutput = self.dinov2(
            pixel_values,
            output_kept_token_indices=output_kept_token_indices,
            output_token_importance=output_token_importance,
            output_token_sources=output_token_sources,
            **kwargs,
        )
        class_token = outputs.last_hidden_state[:, 0]
        logits = self.classifier(torch.cat([class_token, outputs.patch_token_mean], dim=1))
        return TriLevelViTImageClassifierOutput(
            loss=self.task_loss(labels, logits, outputs.auxiliary_loss, **kwargs),
            logits=logits,
            **outputs.head_fields(),
        )


TriLevelDinov2Config.register_for_auto_class()
TriLevelDinov2Model.register_for_auto_class("AutoModel")
TriLevelDinov2ForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "TriLevelDinov2ForImageClassification",
    "TriLevelDinov2Layer",
    "TriLevelDinov2Model",
    "TriLevelDinov2PreTrainedModel",
]
