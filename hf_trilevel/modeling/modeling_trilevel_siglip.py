"""TriLevel SigLIP: the vision tower of transformers' SigLIP with the TriLevel token and attention levels.

SigLIP's vision tower has no class token. Its layers are CLIP's (`clip_layer.TriLevelCLIPLayer`), its tokens are
normed after the last layer (`last_hidden_state`), and the pooled output comes from an attention-pooling head: a
learned probe attends over every token, then a norm and an MLP. With tokens dropped, fused or merged, the head weighs
each token by the original patches it stands for (`log(size)` added to the probe's attention logits, ToMe's
proportional attention; padded slots masked out), so a merged token counts as the patches it holds and a fused token
as those dropped. Without dropping or merging nothing is added and the outputs equal transformers' classes' on the
same weights.

Token dropping ranks tokens by the mean query's attention (no class token to ask; the probe attends only after the
last layer, in its own projection space); see docs/families.md for the choice and its measurement.

* `TriLevelSiglipVisionModel`: `SiglipVisionModel` (`pooler_output` = the head's output).
* `TriLevelSiglipModel`: `SiglipModel` with this vision tower; text tower, logit scale and bias unchanged, so
  `logits_per_image` and the zero-shot pipeline (sigmoid scores, by the "siglip" in the model type) work as before.
* `TriLevelSiglipForImageClassification`: `SiglipForImageClassification`'s head (a linear classifier on the mean of
  every token, over the original patches), on the vision config (transformers' takes the image-text config).

This file is part of the remote-code set copied into SigLIP checkpoints: it imports only torch, transformers, the
standard library and its flat siblings.
"""

import torch
import transformers
from torch import nn

try:  # transformers 5 internals this file builds on; they move between major versions
    from transformers import initialization as init
    from transformers.conversion_mapping import register_checkpoint_conversion_mapping
    from transformers.models.siglip.modeling_siglip import (
        SiglipModel,
        SiglipMultiheadAttentionPoolingHead,
        SiglipPreTrainedModel,
        SiglipTextModel,
        SiglipVisionEmbeddings,
    )
    from transformers.utils.generic import can_return_tuple
except ImportError as error:
    raise ImportError(
        f"The TriLevel SigLIP code needs transformers 5 (tested with 5.25); this environment has "
        f"{transformers.__version__}. Install `transformers>=5,<6` to load this checkpoint. ({error})"
    ) from error

from .clip_layer import (
    EncoderLayers,
    ImageTextKeepRates,
    TriLevelCLIPAttention,
    TriLevelCLIPLayer,
    vision_model_prefix,
)
from .configuration_trilevel_siglip import TriLevelSiglipConfig, TriLevelSiglipVisionConfig
from .modeling_trilevel_vit import (
    TriLevelViTImageClassifierOutput,
    TriLevelViTModel,
    TriLevelViTModelOutput,
    TriLevelViTPreTrainedModel,
)
from .vit_blocks import TriLevelViTMLP

register_checkpoint_conversion_mapping("TriLevelSiglipVisionModel", vision_model_prefix(), overwrite=True)

SIGLIP_VISION_AUTO_MAP = {
    "AutoConfig": "configuration_trilevel_siglip.TriLevelSiglipVisionConfig",
    "AutoModel": "modeling_trilevel_siglip.TriLevelSiglipVisionModel",
    "AutoModelForImageClassification": "modeling_trilevel_siglip.TriLevelSiglipForImageClassification",
}
SIGLIP_AUTO_MAP = {
    "AutoConfig": "configuration_trilevel_siglip.TriLevelSiglipConfig",
    "AutoModel": "modeling_trilevel_siglip.TriLevelSiglipModel",
    "AutoModelForZeroShotImageClassification": "modeling_trilevel_siglip.TriLevelSiglipModel",
}


class TriLevelSiglipPoolingHead(SiglipMultiheadAttentionPoolingHead):
    """SigLIP's attention-pooling head, weighing each token by the original patches it stands for."""

    def forward(self, hidden_state: torch.Tensor, token_weights: torch.Tensor | None = None) -> torch.Tensor:
        """`token_weights`: `[batch, tokens]` patches per token (0 for padding), or None (one patch each)."""
        if token_weights is None:
            return super().forward(hidden_state)
        # A float key-padding mask is added to the probe's attention logits: log(size), -inf for empty slots.
        log_weights = token_weights.to(hidden_state.dtype).log()
        probe = self.probe.repeat(hidden_state.shape[0], 1, 1)  # a copy: a view of a parameter trips module hooks
        hidden_state = self.attention(probe, hidden_state, hidden_state, key_padding_mask=log_weights)[0]
        hidden_state = hidden_state + self.mlp(self.layernorm(hidden_state))
        return hidden_state[:, 0]


class TriLevelSiglipPreTrainedModel(TriLevelViTPreTrainedModel):
    """Weight init, loading, saving and keep-rate control of the TriLevel SigLIP vision classes."""

    config: TriLevelSiglipVisionConfig
    config_class = TriLevelSiglipVisionConfig
    base_model_prefix = "vision_model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["SiglipVisionEmbeddings", "TriLevelCLIPLayer", "TriLevelSiglipPoolingHead"]
    _trilevel_auto_map = SIGLIP_VISION_AUTO_MAP
    _checkpoint_key_renames = []  # the head's keys are SigLIP's; the tower (below) strips an old `vision_model.`

    def _init_weights(self, module):
        """As transformers' SigLIP initialises its vision tower (LeCun normal, Xavier attention and MLP)."""
        super()._init_weights(module)
        if isinstance(module, SiglipVisionEmbeddings):
            init.normal_(module.position_embedding.weight, std=self.config.hidden_size**-0.5)
            init.lecun_normal_(module.patch_embedding.weight)
            init.zeros_(module.patch_embedding.bias)
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
        elif isinstance(module, TriLevelCLIPAttention):
            for linear in (module.q_proj, module.k_proj, module.v_proj, module.out_proj):
                init.xavier_uniform_(linear.weight)
                init.zeros_(linear.bias)
        elif isinstance(module, TriLevelViTMLP):
            for linear in (module.fc1, module.fc2):
                init.xavier_uniform_(linear.weight)
                init.normal_(linear.bias, std=1e-6)
        elif isinstance(module, SiglipMultiheadAttentionPoolingHead):
            init.xavier_uniform_(module.probe)
            init.xavier_uniform_(module.attention.in_proj_weight)
            init.zeros_(module.attention.in_proj_bias)


class TriLevelSiglipVisionModel(TriLevelSiglipPreTrainedModel, TriLevelViTModel):
    """The TriLevel SigLIP vision tower: `SiglipVisionModel` with token and attention sparsity at
    `config.token_prune_layers`. `last_hidden_state` is normed, `pooler_output` the attention-pooling head's output
    (with `vision_use_head`), `patch_token_mean` every token's mean over the original patches."""

    layer_class = TriLevelCLIPLayer
    returns_patch_token_mean = True
    pools_weighted_tokens = True
    _checkpoint_key_renames = vision_model_prefix()

    @property
    def layers(self) -> nn.ModuleList:
        return self.encoder.layers

    def set_layers(self, layers: nn.ModuleList) -> None:
        self.encoder = EncoderLayers(layers)

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embedding

    def patch_projection(self) -> nn.Module:
        return self.embeddings.patch_embedding

    def build_embeddings(self, config: TriLevelSiglipVisionConfig, use_mask_token: bool) -> nn.Module:
        if use_mask_token:
            raise ValueError("`use_mask_token=True`: SigLIP's vision embeddings have no mask token.")
        return SiglipVisionEmbeddings(config)

    def embed(
        self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None, interpolate_pos_encoding: bool | None
    ) -> torch.Tensor:
        if bool_masked_pos is not None:
            raise ValueError("`bool_masked_pos` is not supported: SigLIP's vision embeddings have no mask token.")
        return self.embeddings(pixel_values, interpolate_pos_encoding=bool(interpolate_pos_encoding))

    def build_output_modules(self, config: TriLevelSiglipVisionConfig, add_pooling_layer: bool) -> None:
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.use_head = config.vision_use_head
        if self.use_head:
            self.head = TriLevelSiglipPoolingHead(config)

    def output_tokens(
        self, hidden_states: torch.Tensor, token_weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        sequence_output = self.post_layernorm(hidden_states)
        return sequence_output, self.head(sequence_output, token_weights) if self.use_head else None


class TriLevelSiglipForImageClassification(TriLevelSiglipPreTrainedModel):
    """TriLevel SigLIP vision tower with `SiglipForImageClassification`'s head: a linear classifier on the mean of
    every (normed) token, taken over the original patches when tokens were dropped, fused or merged."""

    def __init__(self, config: TriLevelSiglipVisionConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vision_model = TriLevelSiglipVisionModel(config)
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
            Class indices for the loss (as in `SiglipForImageClassification`); the selectors' `auxiliary_loss`, if
            any, is added to it.
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


class TriLevelSiglipModel(ImageTextKeepRates, SiglipModel):
    """`SiglipModel` whose vision tower is `TriLevelSiglipVisionModel`; text tower, logit scale and bias unchanged.

    Keep rates are the vision tower's: `set_keep_rates` / `keep_rates` forward to it, and `config.token_keep_rate`
    reads `config.vision_config`.
    """

    config: TriLevelSiglipConfig
    config_class = TriLevelSiglipConfig
    _trilevel_auto_map = SIGLIP_AUTO_MAP
    _no_split_modules = [
        "SiglipTextEmbeddings",
        "SiglipEncoderLayer",
        "SiglipVisionEmbeddings",
        "SiglipMultiheadAttentionPoolingHead",
        "TriLevelCLIPLayer",
    ]

    def __init__(self, config: TriLevelSiglipConfig):
        SiglipPreTrainedModel.__init__(self, config)  # SiglipModel's own __init__ would build a dense tower first
        self.text_model = SiglipTextModel._from_config(config.text_config)
        # Built from the composite's own vision config (not a copy), so keep rates set on either are the same.
        self.vision_model = TriLevelSiglipVisionModel(config.vision_config)
        self.logit_scale = nn.Parameter(torch.randn(1))
        self.logit_bias = nn.Parameter(torch.randn(1))
        self.post_init()


TriLevelSiglipVisionConfig.register_for_auto_class()
TriLevelSiglipConfig.register_for_auto_class()
TriLevelSiglipVisionModel.register_for_auto_class("AutoModel")
TriLevelSiglipForImageClassification.register_for_auto_class("AutoModelForImageClassification")
TriLevelSiglipModel.register_for_auto_class("AutoModel")

__all__ = [
    "TriLevelSiglipForImageClassification",
    "TriLevelSiglipModel",
    "TriLevelSiglipPoolingHead",
    "TriLevelSiglipPreTrainedModel",
    "TriLevelSiglipVisionModel",
]
