"""What CLIP's and SigLIP's TriLevel vision towers share: their layer, where they hold it, the encoder seams, the image
classifier on the patch mean, and the image-text model's keep-rate control.

Both towers use the same pre-norm layer as ViT (norm, attention, residual; norm, MLP, residual) under other names:
`layer_norm1`, `self_attn` (whose output projection is `out_proj`), `layer_norm2`, `mlp`, held at
`encoder.layers.N`. Keeping their names in memory makes the TriLevel state dict the transformers one, key for key,
so their checkpoints need no renaming beyond transformers' own. The reduction is `TriLevelViTLayer`'s, unchanged.

This file is part of the remote-code set copied into CLIP and SigLIP checkpoints: it imports only torch,
transformers, the standard library and its flat siblings.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import transformers
from torch import nn

try:  # transformers 5 internals this file builds on; they move between major versions
    from transformers.core_model_loading import PrefixChange
    from transformers.modeling_layers import GradientCheckpointingLayer
    from transformers.utils.generic import can_return_tuple
except ImportError as error:
    raise ImportError(
        f"The TriLevel CLIP/SigLIP code needs transformers 5 (tested with 5.25); this environment has "
        f"{transformers.__version__}. Install `transformers>=5,<6` to load this checkpoint. ({error})"
    ) from error

from .modeling_trilevel_vit import TriLevelViTImageClassifierOutput, TriLevelViTModelOutput
from .vit_blocks import TriLevelViTAttention, TriLevelViTMLP
from .vit_layer import TriLevelViTLayer


def vision_model_prefix() -> list[PrefixChange]:
    """The rule for vision-tower folders written before transformers 5, which hold the tower under `vision_model.`
    (transformers strips it for its own CLIPVisionModel and SiglipVisionModel by class name). Each family registers it
    for its tower (`from_pretrained`) and lists it as the tower's `_checkpoint_key_renames` (a plain
    `load_state_dict`), each time a fresh object: transformers marks a rule used when it renames a key and reverses
    used rules on save, so a rule shared with the plain-load hook would make a later save add the prefix twice."""
    return [PrefixChange(prefix_to_remove="vision_model")]


class TriLevelCLIPAttention(TriLevelViTAttention):
    """`TriLevelViTAttention` under CLIP's names (`out_proj`) and with CLIP's `attention_dropout`."""

    output_projection_name = "out_proj"

    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.attention_dropout = config.attention_dropout


class TriLevelCLIPLayer(TriLevelViTLayer):
    """A CLIP / SigLIP encoder layer (`layer_norm1`, `self_attn`, `layer_norm2`, `mlp`) with the TriLevel reduction
    between attention and MLP. These towers have no dropout after attention or MLP."""

    def __init__(self, config, layer_idx: int):
        GradientCheckpointingLayer.__init__(self)  # the family's modules, not ViT's
        self.self_attn = TriLevelCLIPAttention(config, layer_idx)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = TriLevelViTMLP(config, layer_idx)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.init_token_reduction(config, layer_idx)

    @property
    def attention(self) -> TriLevelCLIPAttention:
        """The reduction reads the attention's scaling and config as `self.attention` (ViT's name)."""
        return self.self_attn

    def attention_block(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        residual = hidden_states
        hidden_states, _, query_key = self.self_attn(self.layer_norm1(hidden_states), attention_mask, **kwargs)
        return residual + hidden_states, query_key

    def mlp_block(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class EncoderLayers(nn.Module):
    """Holds the layers at `encoder.layers`, where CLIP's and SigLIP's encoders hold them."""

    def __init__(self, layers: nn.ModuleList):
        super().__init__()
        self.layers = layers


class EncoderLayersTower:
    """The encoder seams of a CLIP-style tower (a `TriLevelViTModel` subclass lists this first): layers at
    `encoder.layers`, the patch embedding `embeddings.patch_embedding`, the family's `embeddings_class` called as
    CLIP's and SigLIP's embeddings take their arguments, and no mask token."""

    embeddings_class: type[nn.Module]

    @property
    def layers(self) -> nn.ModuleList:
        return self.encoder.layers

    def set_layers(self, layers: nn.ModuleList) -> None:
        self.encoder = EncoderLayers(layers)

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embedding

    def patch_projection(self) -> nn.Module:
        return self.embeddings.patch_embedding

    def build_embeddings(self, config, use_mask_token: bool) -> nn.Module:
        if use_mask_token:
            raise ValueError(f"`use_mask_token=True`: {self.embeddings_class.__name__} has no mask token.")
        return self.embeddings_class(config)

    def embed(
        self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None, interpolate_pos_encoding: bool | None
    ) -> torch.Tensor:
        if bool_masked_pos is not None:
            raise ValueError(f"`bool_masked_pos` is not supported: {self.embeddings_class.__name__} has no mask token.")
        return self.embeddings(pixel_values, interpolate_pos_encoding=bool(interpolate_pos_encoding))


class PatchMeanImageClassifier:
    """An image classifier on a vision tower (`tower_class`, held at `vision_model`): a linear layer on the mean of the
    patch tokens the tower returns (`patch_token_mean`, over the original patches when tokens were dropped, fused or
    merged), as transformers' `CLIPForImageClassification` and `SiglipForImageClassification` compute it. Listed
    first, before the family's pre-trained model class."""

    tower_class: type[nn.Module]

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vision_model = self.tower_class(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_kept_token_indices: bool | None = None,
        output_token_importance: bool | None = None,
        output_token_sources: bool | None = None,
        **kwargs,
    ) -> TriLevelViTImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `[batch]`, *optional*):
            Class indices for the loss (as in transformers' classifier); the selectors' `auxiliary_loss`, if any, is
            added to it.
        output_kept_token_indices, output_token_importance, output_token_sources (`bool`, *optional*):
            See [`TriLevelViTModel.forward`].
        """
        outputs: TriLevelViTModelOutput = self.vision_model(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_kept_token_indices=output_kept_token_indices,
            output_token_importance=output_token_importance,
            output_token_sources=output_token_sources,
            **kwargs,
        )
        logits = self.classifier(outputs.patch_token_mean)
        return TriLevelViTImageClassifierOutput(
            loss=self.task_loss(labels, logits, outputs.auxiliary_loss, **kwargs),
            logits=logits,
            **outputs.head_fields(),
        )


class ImageTextKeepRates:
    """What an image-text model (CLIP's, SigLIP's) with a TriLevel vision tower adds to transformers' class: keep-rate
    control, which is the vision tower's, and every Auto class of the checkpoint in `auto_map` (`_trilevel_auto_map`;
    transformers writes only the saved class's)."""

    _trilevel_auto_map: dict[str, str] = {}

    def set_keep_rates(
        self,
        token_keep_rate: float | None = None,
        attention_keep_rate: float | None = None,
        token_merge_r: int | list[int] | None = None,
    ) -> None:
        """The vision tower's `set_keep_rates` (see `TriLevelViTPreTrainedModel.set_keep_rates`)."""
        self.vision_model.set_keep_rates(token_keep_rate, attention_keep_rate, token_merge_r)

    @contextmanager
    def keep_rates(
        self,
        token_keep_rate: float | None = None,
        attention_keep_rate: float | None = None,
        token_merge_r: int | list[int] | None = None,
    ) -> Iterator[None]:
        """The vision tower's `keep_rates` (temporarily other rates; see `TriLevelViTPreTrainedModel.keep_rates`)."""
        with self.vision_model.keep_rates(token_keep_rate, attention_keep_rate, token_merge_r):
            yield

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as transformers' class does, with every Auto class of this checkpoint in `auto_map`."""
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **self._trilevel_auto_map}
        return super().save_pretrained(save_directory, *args, **kwargs)


__all__ = [
    "EncoderLayers",
    "EncoderLayersTower",
    "ImageTextKeepRates",
    "PatchMeanImageClassifier",
    "TriLevelCLIPAttention",
    "TriLevelCLIPLayer",
    "vision_model_prefix",
]
