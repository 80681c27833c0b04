"""TriLevel SigLIP: the vision tower of transformers' SigLIP with the TriLevel token and attention levels.

SigLIP's vision tower has no class token. Its layers are CLIP's (`vision_towers.TriLevelCLIPLayer`), its tokens are
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
except ImportError as error:
    raise ImportError(
        f"The TriLevel SigLIP code needs transformers 5 (tested with 5.25); this environment has "
        f"{transformers.__version__}. Install `transformers>=5,<6` to load this checkpoint. ({error})"
    ) from error

from .configuration_trilevel_siglip import TriLevelSiglipConfig, TriLevelSiglipVisionConfig
from .modeling_trilevel_vit import (
    TriLevelViTModel,
    TriLevelViTPreTrainedModel,
)
from .token_selectors import ZeroInitLinear
from .vision_towers import (
    EncoderLayersTower,
    ImageTextKeepRates,
    PatchMeanImageClassifier,
    TriLevelCLIPLayer,
    vision_model_prefix,
)

register_checkpoint_conversion_mapping("TriLevelSiglipVisionModel", vision_model_prefix(), overwrite=True)

# The attribute naming a linear's SigLIP initialisation (`mark_init_roles`; unmarked linears: LeCun normal).
INIT_ROLE = "trilevel_init_role"

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
        log_weights = token_weights.float().log().to(hidden_state.dtype)
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
        """As transformers' SigLIP initialises its vision tower: Xavier attention and MLP weights (`INIT_ROLE` marks
        them), LeCun normal for every other linear and convolution, SigLIP's position embeddings, probe and head.

        transformers initialises a custom model module by module, each holding parameters of its own, so the roles
        are read from the linears themselves, not from their attention or MLP parents (which hold none)."""
        super()._init_weights(module)
        if isinstance(module, SiglipVisionEmbeddings):
            init.normal_(module.position_embedding.weight, std=self.config.hidden_size**-0.5)
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
        elif isinstance(module, SiglipMultiheadAttentionPoolingHead):
            init.xavier_uniform_(module.probe)
            init.xavier_uniform_(module.attention.in_proj_weight)
            init.zeros_(module.attention.in_proj_bias)
        elif isinstance(module, (nn.Linear, nn.Conv2d)) and not isinstance(module, ZeroInitLinear):
            role = getattr(module, INIT_ROLE, None)
            if role == "classifier":
                init.normal_(module.weight, std=self.config.hidden_size**-0.5)
            elif role is not None:
                init.xavier_uniform_(module.weight)
            else:
                init.lecun_normal_(module.weight)
            if module.bias is not None:
                init.normal_(module.bias, std=1e-6) if role == "mlp" else init.zeros_(module.bias)


def mark_init_roles(attentions: list[nn.Module], mlps: list[nn.Module], classifier: nn.Module | None = None) -> None:
    """Tag the linears whose SigLIP initialisation differs from LeCun normal (`INIT_ROLE`): the layers' attention
    projections and every MLP (Xavier; an MLP's biases near zero), the classifier (normal, std hidden**-0.5)."""
    for attention in attentions:
        for linear in (attention.q_proj, attention.k_proj, attention.v_proj, attention.output_projection):
            setattr(linear, INIT_ROLE, "attention")
    for mlp in mlps:
        for linear in (mlp.fc1, mlp.fc2):
            setattr(linear, INIT_ROLE, "mlp")
    if isinstance(classifier, nn.Linear):
        setattr(classifier, INIT_ROLE, "classifier")


class TriLevelSiglipVisionModel(EncoderLayersTower, TriLevelSiglipPreTrainedModel, TriLevelViTModel):
    """The TriLevel SigLIP vision tower: `SiglipVisionModel` with token and attention sparsity at
    `config.token_prune_layers`. `last_hidden_state` is normed, `pooler_output` the attention-pooling head's output
    (with `vision_use_head`), `patch_token_mean` every token's mean over the original patches."""

    embeddings_class = SiglipVisionEmbeddings
    layer_class = TriLevelCLIPLayer
    returns_patch_token_mean = True
    pools_weighted_tokens = True
    _checkpoint_key_renames = vision_model_prefix()

    def build_output_modules(self, config: TriLevelSiglipVisionConfig, add_pooling_layer: bool) -> None:
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.use_head = config.vision_use_head
        if self.use_head:
            self.head = TriLevelSiglipPoolingHead(config)
        # Before `post_init` initialises them: the layers' attention and MLPs and the head's MLP take SigLIP's schemes.
        mlps = [layer.mlp for layer in self.layers] + ([self.head.mlp] if self.use_head else [])
        mark_init_roles([layer.self_attn for layer in self.layers], mlps)

    def output_tokens(
        self, hidden_states: torch.Tensor, token_weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        sequence_output = self.post_layernorm(hidden_states)
        return sequence_output, self.head(sequence_output, token_weights) if self.use_head else None


class TriLevelSiglipForImageClassification(PatchMeanImageClassifier, TriLevelSiglipPreTrainedModel):
    """TriLevel SigLIP vision tower with `SiglipForImageClassification`'s head: a linear classifier on the mean of
    every (normed) token, taken over the original patches when tokens were dropped, fused or merged."""

    tower_class = TriLevelSiglipVisionModel

    def post_init(self):
        mark_init_roles([], [], self.classifier)  # before the weights are initialised
        super().post_init()


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
        "TriLevelSiglipPoolingHead",
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
