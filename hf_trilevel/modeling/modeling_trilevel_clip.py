"""TriLevel CLIP: the vision tower of transformers' CLIP with the TriLevel token and attention levels.

CLIP's vision tower is a pre-norm ViT with three differences around the layers, not in them: a norm
(`pre_layrnorm`) before the first layer, tokens returned un-normed (`last_hidden_state`), and the pooled output
(what the projection turns into `image_embeds`) the class token normed by `post_layernorm`. `TriLevelCLIPVisionModel`
supplies those through the encoder's seams and reuses the reduction; the layer is `vision_towers.TriLevelCLIPLayer`.
CLIP has one class token, so token dropping ranks patches by its attention, as for ViT.

* `TriLevelCLIPVisionModel`: `CLIPVisionModel` (`pooler_output` = normed class token).
* `TriLevelCLIPModel`: `CLIPModel` with this vision tower; the text tower, projections and logit scale are CLIP's, so
  `get_image_features`, `get_text_features`, `logits_per_image` and the zero-shot pipeline work unchanged. Its keep
  rates are the vision tower's (`set_keep_rates` forwards to it).
* `TriLevelCLIPForImageClassification`: `CLIPForImageClassification`'s head (a linear classifier on the mean of the
  patch tokens, over the original patches when tokens were dropped or merged), on a vision config: transformers'
  class takes the image-text config, this one the vision tower's, so it trains from a CLIP vision or image-text
  folder (the classifier is new).

With every rate at 1.0 and no merging, the outputs equal transformers' classes' on the same weights. Weight names are
CLIP's (`embeddings.patch_embedding`, `encoder.layers.N.self_attn.out_proj`, ...), so folders load both ways.

This file is part of the remote-code set copied into CLIP checkpoints: it imports only torch, transformers, the
standard library and its flat siblings.
"""

import torch
import transformers
from torch import nn

try:  # transformers 5 internals this file builds on; they move between major versions
    from transformers import initialization as init
    from transformers.conversion_mapping import register_checkpoint_conversion_mapping
    from transformers.models.clip.modeling_clip import (
        CLIPModel,
        CLIPPreTrainedModel,
        CLIPTextModel,
        CLIPVisionEmbeddings,
    )
except ImportError as error:
    raise ImportError(
        f"The TriLevel CLIP code needs transformers 5 (tested with 5.25); this environment has "
        f"{transformers.__version__}. Install `transformers>=5,<6` to load this checkpoint. ({error})"
    ) from error

from .configuration_trilevel_clip import TriLevelCLIPConfig, TriLevelCLIPVisionConfig
from .modeling_trilevel_vit import (
    TriLevelViTModel,
    TriLevelViTPreTrainedModel,
)
from .vision_towers import (
    EncoderLayersTower,
    ImageTextKeepRates,
    PatchMeanImageClassifier,
    TriLevelCLIPLayer,
    vision_model_prefix,
)

register_checkpoint_conversion_mapping("TriLevelCLIPVisionModel", vision_model_prefix(), overwrite=True)

CLIP_VISION_AUTO_MAP = {
    "AutoConfig": "configuration_trilevel_clip.TriLevelCLIPVisionConfig",
    "AutoModel": "modeling_trilevel_clip.TriLevelCLIPVisionModel",
    "AutoModelForImageClassification": "modeling_trilevel_clip.TriLevelCLIPForImageClassification",
}
CLIP_AUTO_MAP = {
    "AutoConfig": "configuration_trilevel_clip.TriLevelCLIPConfig",
    "AutoModel": "modeling_trilevel_clip.TriLevelCLIPModel",
    "AutoModelForZeroShotImageClassification": "modeling_trilevel_clip.TriLevelCLIPModel",
}


class TriLevelCLIPPreTrainedModel(TriLevelViTPreTrainedModel):
    """Weight init, loading, saving and keep-rate control of the TriLevel CLIP vision classes."""

    config: TriLevelCLIPVisionConfig
    config_class = TriLevelCLIPVisionConfig
    base_model_prefix = "vision_model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["CLIPVisionEmbeddings", "TriLevelCLIPLayer"]
    _trilevel_auto_map = CLIP_VISION_AUTO_MAP
    _checkpoint_key_renames = []  # the head's keys are CLIP's; the tower (below) strips an old `vision_model.`

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, CLIPVisionEmbeddings):  # as transformers' CLIP initialises them
            factor = self.config.initializer_factor
            init.normal_(module.class_embedding, mean=0.0, std=module.embed_dim**-0.5 * factor)
            init.normal_(module.patch_embedding.weight, std=module.config.initializer_range * factor)
            init.normal_(module.position_embedding.weight, std=module.config.initializer_range * factor)
            init.copy_(module.position_ids, torch.arange(module.num_positions).expand((1, -1)))


class TriLevelCLIPVisionModel(EncoderLayersTower, TriLevelCLIPPreTrainedModel, TriLevelViTModel):
    """The TriLevel CLIP vision tower: `CLIPVisionModel` with token and attention sparsity at
    `config.token_prune_layers`. `last_hidden_state` is un-normed (as CLIP's), `pooler_output` the normed class token,
    and `patch_token_mean` the patch tokens' mean over the original patches (what the classifier reads)."""

    embeddings_class = CLIPVisionEmbeddings
    layer_class = TriLevelCLIPLayer
    returns_patch_token_mean = True
    _checkpoint_key_renames = vision_model_prefix()

    def build_embeddings(self, config: TriLevelCLIPVisionConfig, use_mask_token: bool) -> nn.Module:
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # part of the input side
        return super().build_embeddings(config, use_mask_token)

    def embed(
        self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None, interpolate_pos_encoding: bool | None
    ) -> torch.Tensor:
        return self.pre_layrnorm(super().embed(pixel_values, bool_masked_pos, interpolate_pos_encoding))

    def build_output_modules(self, config: TriLevelCLIPVisionConfig, add_pooling_layer: bool) -> None:
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def output_tokens(
        self, hidden_states: torch.Tensor, token_weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return hidden_states, self.post_layernorm(hidden_states[:, 0])


class TriLevelCLIPForImageClassification(PatchMeanImageClassifier, TriLevelCLIPPreTrainedModel):
    """TriLevel CLIP vision tower with `CLIPForImageClassification`'s head: a linear classifier on the mean of the
    (un-normed) patch tokens, taken over the original patches when tokens were dropped, fused or merged."""

    tower_class = TriLevelCLIPVisionModel


class TriLevelCLIPModel(ImageTextKeepRates, CLIPModel):
    """`CLIPModel` whose vision tower is `TriLevelCLIPVisionModel`; text tower, projections and logit scale unchanged.

    Every `CLIPModel` method works as before (`get_image_features`, `get_text_features`, `forward` with
    `logits_per_image`, the zero-shot pipeline); `vision_model_output` carries the TriLevel fields. Keep rates are the
    vision tower's: `set_keep_rates` / `keep_rates` forward to it, and `config.token_keep_rate` reads
    `config.vision_config`.
    """

    config: TriLevelCLIPConfig
    config_class = TriLevelCLIPConfig
    _trilevel_auto_map = CLIP_AUTO_MAP
    _no_split_modules = ["CLIPTextEmbeddings", "CLIPEncoderLayer", "CLIPVisionEmbeddings", "TriLevelCLIPLayer"]

    def __init__(self, config: TriLevelCLIPConfig):
        CLIPPreTrainedModel.__init__(self, config)  # CLIPModel's own __init__ would build a dense vision tower first
        self.projection_dim = config.projection_dim
        self.text_embed_dim = config.text_config.hidden_size
        self.vision_embed_dim = config.vision_config.hidden_size
        self.text_model = CLIPTextModel._from_config(config.text_config)
        # Built from the composite's own vision config (not a copy), so keep rates set on either are the same.
        self.vision_model = TriLevelCLIPVisionModel(config.vision_config)
        self.visual_projection = nn.Linear(self.vision_embed_dim, self.projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_embed_dim, self.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.post_init()


TriLevelCLIPVisionConfig.register_for_auto_class()
TriLevelCLIPConfig.register_for_auto_class()
TriLevelCLIPVisionModel.register_for_auto_class("AutoModel")
TriLevelCLIPForImageClassification.register_for_auto_class("AutoModelForImageClassification")
TriLevelCLIPModel.register_for_auto_class("AutoModel")

__all__ = [
    "TriLevelCLIPForImageClassification",
    "TriLevelCLIPModel",
    "TriLevelCLIPPreTrainedModel",
    "TriLevelCLIPVisionModel",
]
