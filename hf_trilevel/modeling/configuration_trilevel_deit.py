"""TriLevel DeiT configuration: `DeiTConfig` with the TriLevel sparsity fields of `TriLevelViTConfig`.

DeiT's distilled checkpoints (`DeiTForImageClassificationWithTeacher`) lead every sequence with two prefix tokens,
the class token and the distillation token; both feed a classifier head, so both are kept at every pruning layer,
never merged, and both rows rank the patches (`num_prefix_tokens = 2`). Every other field keeps its meaning.

This file is part of the remote-code set copied into every saved checkpoint: it imports only transformers,
huggingface_hub and its flat siblings.
"""

import transformers
from huggingface_hub.dataclasses import strict

try:  # transformers 5 internals this file builds on; they move between major versions
    from transformers.models.deit.configuration_deit import DeiTConfig
except ImportError as error:
    raise ImportError(
        f"The TriLevel DeiT code needs transformers 5 (tested with 5.25); this environment has "
        f"{transformers.__version__}. Install `transformers>=5,<6` to load this checkpoint. ({error})"
    ) from error

from .configuration_trilevel_vit import TriLevelViTConfig


@strict
class TriLevelDeiTConfig(TriLevelViTConfig, DeiTConfig):
    r"""
    Configuration of [`TriLevelDeiTModel`] and [`TriLevelDeiTForImageClassificationWithTeacher`]: every field of
    [`DeiTConfig`] (a plain DeiT `config.json` loads as is) and every sparsity field of [`TriLevelViTConfig`], with the
    same meanings. Token keep rates count patch tokens only: the class and distillation tokens always stay.
    """

    model_type = "trilevel_deit"
    plain_model_type = "deit"
    only_own_model_types = True
    # What `Trainer.evaluate` leaves out of `predictions` (only `logits` are the prediction).
    keys_to_ignore_at_inference = ["cls_logits", "distillation_logits"]

    @property
    def num_prefix_tokens(self) -> int:
        """The class and the distillation token."""
        return 2


__all__ = ["TriLevelDeiTConfig"]
