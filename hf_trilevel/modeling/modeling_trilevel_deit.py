"""TriLevel DeiT: transformers' distilled DeiT with the TriLevel token and attention levels.

A DeiT layer is a ViT layer, so the encoder is `TriLevelViTModel`'s with DeiT's embeddings (class token,
distillation token, then patches) and pooler. Both prefix tokens survive every pruning layer and merge, and both
rows rank the patches (`TriLevelDeiTConfig.num_prefix_tokens = 2`): the prediction averages the class head's and the
distillation head's logits, so the patches either token attends to matter. With every rate at 1.0 (and no merging)
the outputs equal `DeiTForImageClassificationWithTeacher`'s on the same weights.

Checkpoints are written with the key names transformers' own DeiT writes (ViT's v4 names, under `deit.`), so a
plain DeiT folder loads unchanged and a TriLevel DeiT folder loads back into transformers' DeiT classes.

This file is part of the remote-code set copied into every saved checkpoint: it imports only torch, transformers,
the standard library and its flat siblings.
"""

from dataclasses import dataclass

import torch
import transformers
from torch import nn

try:  # transformers 5 internals this file builds on; they move between major versions
    from transformers import initialization as init
    from transformers.conversion_mapping import (
        get_checkpoint_conversion_mapping,
        register_checkpoint_conversion_mapping,
    )
    from transformers.models.deit.modeling_deit import (
        DeiTEmbeddings,
        DeiTForImageClassificationWithTeacherOutput,
        DeiTPooler,
    )
    from transformers.utils.generic import can_return_tuple
except ImportError as error:
    raise ImportError(
        f"The TriLevel DeiT code needs transformers 5 (tested with 5.25); this environment has "
        f"{transformers.__version__}. Install `transformers>=5,<6` to load this checkpoint. ({error})"
    ) from error

from .configuration_trilevel_deit import TriLevelDeiTConfig
from .modeling_trilevel_vit import TriLevelViTModel, TriLevelViTModelOutput, TriLevelViTPreTrainedModel

# DeiT checkpoints carry ViT's v4 key names (transformers renames them for its DeiT through ViT's mapping).
register_checkpoint_conversion_mapping("trilevel_deit", get_checkpoint_conversion_mapping("ViTModel"), overwrite=True)

DEIT_AUTO_MAP = {
    "AutoConfig": "configuration_trilevel_deit.TriLevelDeiTConfig",
    "AutoModel": "modeling_trilevel_deit.TriLevelDeiTModel",
    "AutoModelForImageClassification": "modeling_trilevel_deit.TriLevelDeiTForImageClassificationWithTeacher",
}


@dataclass
class TriLevelDeiTForImageClassificationWithTeacherOutput(DeiTForImageClassificationWithTeacherOutput):
    r"""
    `DeiTForImageClassificationWithTeacherOutput` (`logits` = the mean of `cls_logits` and `distillation_logits`),
    plus a loss and the TriLevel outputs.

    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given):
        Cross-entropy of the averaged `logits`, plus the selectors' `auxiliary_loss`.
    kept_token_indices, kept_token_counts, auxiliary_loss, token_importance, token_sources (*optional*):
        See [`TriLevelViTModelOutput`]; positions count patch tokens, after the two prefix tokens.
    """

    loss: torch.FloatTensor | None = None
    kept_token_indices: tuple[torch.LongTensor, ...] | None = None
    auxiliary_loss: torch.FloatTensor | None = None
    kept_token_counts: tuple[torch.LongTensor, ...] | None = None
    token_importance: tuple[torch.FloatTensor, ...] | None = None
    token_sources: torch.LongTensor | None = None


class TriLevelDeiTPreTrainedModel(TriLevelViTPreTrainedModel):
    """Weight init, loading, saving and keep-rate control of the TriLevel DeiT classes (the ViT ones, DeiT's names)."""

    config: TriLevelDeiTConfig
    config_class = TriLevelDeiTConfig
    base_model_prefix = "deit"
    _no_split_modules = ["DeiTEmbeddings", "TriLevelViTLayer"]
    _trilevel_auto_map = DEIT_AUTO_MAP

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, DeiTEmbeddings):
            # Truncated normal like ViT's (and the DeiT paper's) prefix tokens and positions; transformers' DeiT
            # zeroes them, which only matters when training from scratch.
            for parameter in (module.cls_token, module.distillation_token, module.position_embeddings):
                init.trunc_normal_(parameter, mean=0.0, std=self.config.initializer_range)
            if module.mask_token is not None:
                init.zeros_(module.mask_token)


class TriLevelDeiTModel(TriLevelDeiTPreTrainedModel, TriLevelViTModel):
    """The TriLevel DeiT encoder: `DeiTModel` with token and attention sparsity at `config.token_prune_layers`.

    Its sequences are `[class, distillation, kept patches (, fused)]`.
    """

    embeddings_class = DeiTEmbeddings
    pooler_class = DeiTPooler


class TriLevelDeiTForImageClassificationWithTeacher(TriLevelDeiTPreTrainedModel):
    """TriLevel DeiT with DeiT's two heads: a classifier on the final class token and one on the final distillation
    token, whose logits are averaged, as in `DeiTForImageClassificationWithTeacher`.

    Unlike transformers' class (inference only), `labels` give a loss: cross-entropy of the averaged logits (plus the
    selectors' auxiliary loss), so the model fine-tunes with a stock `Trainer`; distilling from a teacher through the
    distillation head is not built in.
    """

    def __init__(self, config: TriLevelDeiTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.deit = TriLevelDeiTModel(config, add_pooling_layer=False)
        self.cls_classifier = self._head(config)
        self.distillation_classifier = self._head(config)
        self.post_init()

    @staticmethod
    def _head(config: TriLevelDeiTConfig) -> nn.Module:
        return nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()

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
    ) -> TriLevelDeiTForImageClassificationWithTeacherOutput:
        r"""
        labels (`torch.LongTensor` of shape `[batch]`, *optional*):
            Class indices for a cross-entropy loss on the averaged logits; the selectors' `auxiliary_loss`, if any, is
            added to it.
        output_kept_token_indices, output_token_importance, output_token_sources (`bool`, *optional*):
            See [`TriLevelViTModel.forward`].
        """
        outputs: TriLevelViTModelOutput = self.deit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_kept_token_indices=output_kept_token_indices,
            output_token_importance=output_token_importance,
            output_token_sources=output_token_sources,
            **kwargs,
        )
        sequence_output = outputs.last_hidden_state
        cls_logits = self.cls_classifier(sequence_output[:, 0, :])
        distillation_logits = self.distillation_classifier(sequence_output[:, 1, :])
        logits = (cls_logits + distillation_logits) / 2
        return TriLevelDeiTForImageClassificationWithTeacherOutput(
            loss=self.task_loss(labels, logits, outputs.auxiliary_loss, **kwargs),
            logits=logits,
            cls_logits=cls_logits,
            distillation_logits=distillation_logits,
            **outputs.head_fields(),
        )


TriLevelDeiTConfig.register_for_auto_class()
TriLevelDeiTModel.register_for_auto_class("AutoModel")
TriLevelDeiTForImageClassificationWithTeacher.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "TriLevelDeiTForImageClassificationWithTeacher",
    "TriLevelDeiTForImageClassificationWithTeacherOutput",
    "TriLevelDeiTModel",
    "TriLevelDeiTPreTrainedModel",
]
