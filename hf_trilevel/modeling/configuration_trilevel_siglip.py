"""TriLevel SigLIP configurations: SigLIP's vision config with the TriLevel sparsity fields, and SigLIP's image-text
config whose vision tower carries them.

SigLIP's vision tower has no class token (`num_prefix_tokens = 0`): every token is a patch, token dropping ranks
them by the mean query's attention (`token_reduction.class_token_attention` with no prefix; see docs/families.md for
why), and merging needs no class token at all. Fields SigLIP and ViT both have keep SigLIP's defaults (GELU with the
tanh approximation, `layer_norm_eps=1e-6`).

The composite `TriLevelSiglipConfig` forwards the sparsity fields to its vision config, as `TriLevelCLIPConfig` does.
Both model types keep "siglip" in their name: transformers' zero-shot pipeline picks SigLIP's sigmoid scores and
tokenizer padding by it.

This file is part of the remote-code set copied into SigLIP checkpoints: it imports only transformers,
huggingface_hub, the standard library and its flat siblings.
"""

import transformers
from huggingface_hub.dataclasses import strict

try:  # transformers 5 internals this file builds on; they move between major versions
    from transformers.models.siglip.configuration_siglip import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
except ImportError as error:
    raise ImportError(
        f"The TriLevel SigLIP code needs transformers 5 (tested with 5.25); this environment has "
        f"{transformers.__version__}. Install `transformers>=5,<6` to load this checkpoint. ({error})"
    ) from error

from .configuration_trilevel_vit import TriLevelViTConfig
from .image_text_config import CompositeConfigLoading, forward_vision_fields


@strict
class TriLevelSiglipVisionConfig(TriLevelViTConfig, SiglipVisionConfig):
    r"""
    Configuration of [`TriLevelSiglipVisionModel`] and [`TriLevelSiglipForImageClassification`]: every field of
    [`SiglipVisionConfig`] (a plain SigLIP vision `config.json`, or a SigLIP image-text one's `vision_config`, loads as
    is) and every sparsity field of [`TriLevelViTConfig`]. Token keep rates count every token (there is no class
    token); `token_fusion` adds one fused token, which the attention-pooling head weighs by the patches it stands for.
    """

    model_type = "trilevel_siglip_vision_model"
    plain_model_type = "siglip_vision_model"
    only_own_model_types = True
    base_config_key = "vision_config"
    composite_model_types = ("siglip", "trilevel_siglip")

    # SigLIP's defaults where ViT's differ (the ViT base class would otherwise supply its own).
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6

    @property
    def num_prefix_tokens(self) -> int:
        """No class token: every token is a patch."""
        return 0


@forward_vision_fields
@strict
class TriLevelSiglipConfig(CompositeConfigLoading, SiglipConfig):
    r"""
    Configuration of [`TriLevelSiglipModel`]: [`SiglipConfig`] with a [`TriLevelSiglipVisionConfig`] as
    `vision_config` (the text config is SigLIP's). The sparsity fields are the vision config's; the composite config
    forwards them (`config.token_keep_rate = 0.7` sets `config.vision_config.token_keep_rate`).
    """

    model_type = "trilevel_siglip"
    plain_model_type = "siglip"
    sub_configs_defaults = {"vision_config": TriLevelSiglipVisionConfig, "text_config": SiglipTextConfig}


__all__ = ["TriLevelSiglipConfig", "TriLevelSiglipVisionConfig"]
