"""TriLevel DINOv2 configuration: `Dinov2Config` with the TriLevel sparsity fields of `TriLevelViTConfig`.

DINOv2 has one class token, like ViT, but its layers scale both residual branches (LayerScale), its MLP width is
`hidden_size * mlp_ratio` (no `intermediate_size` field: it is derived here, so per-layer MLP sizes and FLOPs read it
as for ViT), and its classifier reads the class token and the mean of the patch tokens. Fields ViT and DINOv2 both
have keep DINOv2's defaults (`patch_size=14`, `layer_norm_eps=1e-6`).

This file is part of the remote-code set copied into every saved checkpoint: it imports only transformers,
huggingface_hub, the standard library and its flat siblings.
"""

from typing import Any

import transformers
from huggingface_hub.dataclasses import strict

try:  # transformers 5 internals this file builds on; they move between major versions
    from transformers.models.dinov2.configuration_dinov2 import Dinov2Config
except ImportError as error:
    raise ImportError(
        f"The TriLevel DINOv2 code needs transformers 5 (tested with 5.25); this environment has "
        f"{transformers.__version__}. Install `transformers>=5,<6` to load this checkpoint. ({error})"
    ) from error

from .configuration_trilevel_vit import TriLevelViTConfig


@strict
class TriLevelDinov2Config(TriLevelViTConfig, Dinov2Config):
    r"""
    Configuration of [`TriLevelDinov2Model`] and [`TriLevelDinov2ForImageClassification`]: every field of
    [`Dinov2Config`] (a plain DINOv2 `config.json` loads as is) and every sparsity field of [`TriLevelViTConfig`].

    intermediate_size (`int`, *optional*):
        The MLP width, always `int(hidden_size * mlp_ratio)` (what `Dinov2MLP` builds); derived, not chosen.

    `use_swiglu_ffn=True` (DINOv2 giant's MLP) is refused for now: its fused `weights_in` and three-matrix MLP have no
    TriLevel layer yet.
    """

    model_type = "trilevel_dinov2"
    plain_model_type = "dinov2"
    only_own_model_types = True

    # DINOv2's defaults where ViT's differ (the ViT base class would otherwise supply its own).
    patch_size: int | list[int] | tuple[int, int] = 14
    layer_norm_eps: float = 1e-6
    intermediate_size: Any = None

    def __post_init__(self, **kwargs):
        derived = int(self.hidden_size * self.mlp_ratio)
        if self.intermediate_size is not None and self.intermediate_size != derived:
            raise ValueError(
                f"`intermediate_size` is derived for DINOv2 as int(hidden_size * mlp_ratio) = {derived}, got "
                f"{self.intermediate_size}; set `mlp_ratio` instead (or leave `intermediate_size` out)."
            )
        self.intermediate_size = derived
        super().__post_init__(**kwargs)

    def validate_architecture(self) -> None:
        """Class validator: the ViT checks, and no SwiGLU MLP (not supported by the TriLevel DINOv2 layer yet)."""
        super().validate_architecture()
        if self.use_swiglu_ffn:
            raise ValueError(
                "`use_swiglu_ffn=True` (DINOv2 giant's SwiGLU MLP) is not supported by the TriLevel DINOv2 classes "
                "yet; use a checkpoint with `use_swiglu_ffn=False` (DINOv2 small, base, large)."
            )


__all__ = ["TriLevelDinov2Config"]
