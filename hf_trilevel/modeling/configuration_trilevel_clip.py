"""TriLevel CLIP configurations: CLIP's vision config with the TriLevel sparsity fields, and CLIP's image-text config
whose vision tower carries them.

`TriLevelCLIPVisionConfig` is `CLIPVisionConfig` plus every field of `TriLevelViTConfig`; fields both have keep
CLIP's defaults (patch 32, quick GELU, `layer_norm_eps=1e-5`), and CLIP's `attention_dropout` is the attention's
dropout. It reads plain CLIP vision folders and the vision tower of CLIP image-text folders.

`TriLevelCLIPConfig` is `CLIPConfig` with a `TriLevelCLIPVisionConfig` as `vision_config`; the text config is
CLIP's, unchanged. The sparsity fields live on the vision config (the text tower has no patches); the composite
config reads and writes them there (`config.token_keep_rate` is `config.vision_config.token_keep_rate`), so
`from_pretrained(folder, token_keep_rate=0.7)` and tools that read a model's keep rates work on either class.

This file is part of the remote-code set copied into every saved checkpoint: it imports only transformers,
huggingface_hub, the standard library and its flat siblings.
"""

import transformers
from huggingface_hub.dataclasses import strict

try:  # transformers 5 internals this file builds on; they move between major versions
    from transformers.models.clip.configuration_clip import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
except ImportError as error:
    raise ImportError(
        f"The TriLevel CLIP code needs transformers 5 (tested with 5.25); this environment has "
        f"{transformers.__version__}. Install `transformers>=5,<6` to load this checkpoint. ({error})"
    ) from error

from .configuration_trilevel_vit import TriLevelViTConfig
from .image_text_config import CompositeConfigLoading, forward_vision_fields


@strict
class TriLevelCLIPVisionConfig(TriLevelViTConfig, CLIPVisionConfig):
    r"""
    Configuration of [`TriLevelCLIPVisionModel`] and [`TriLevelCLIPForImageClassification`]: every field of
    [`CLIPVisionConfig`] (a plain CLIP vision `config.json`, or a CLIP image-text one's `vision_config`, loads as is)
    and every sparsity field of [`TriLevelViTConfig`], with the same meanings. CLIP has one class token, which every
    level keeps and whose attention ranks the patches.
    """

    model_type = "trilevel_clip_vision_model"
    plain_model_type = "clip_vision_model"
    only_own_model_types = True
    base_config_key = "vision_config"
    composite_model_types = ("clip", "trilevel_clip")

    # CLIP's defaults where ViT's differ (the ViT base class would otherwise supply its own).
    patch_size: int | list[int] | tuple[int, int] = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5


@forward_vision_fields
@strict
class TriLevelCLIPConfig(CompositeConfigLoading, CLIPConfig):
    r"""
    Configuration of [`TriLevelCLIPModel`]: [`CLIPConfig`] with a [`TriLevelCLIPVisionConfig`] as `vision_config`
    (the text config is CLIP's). The sparsity fields are the vision config's; the composite config forwards them
    (`config.token_keep_rate = 0.7` sets `config.vision_config.token_keep_rate`).
    """

    model_type = "trilevel_clip"
    plain_model_type = "clip"
    sub_configs_defaults = {"vision_config": TriLevelCLIPVisionConfig, "text_config": CLIPTextConfig}


__all__ = [
    "TriLevelCLIPConfig",
    "TriLevelCLIPVisionConfig",
    "forward_vision_fields",
]
