"""The model families `bench inference --family` times: each is a dense transformers class and its TriLevel twin.

A family fixes which dense model the rows are compared with and which TriLevel class runs them; the shapes
(`--preset`, the shape flags) are those of the family's real base models. The dense and TriLevel classes of a family
hold the same weights under the same names, so one state dict serves both (`models.build_models_by_selector`).

CLIP and SigLIP are timed as image classifiers (transformers' `CLIPForImageClassification` /
`SiglipForImageClassification`: the vision tower and a linear head on the mean token), so the rows compare logits as
for the other families; transformers' classes take an image-text config, built around the shape's vision config
(`ImageTextClassifierConfig`). SigLIP's tower runs its attention-pooling head too (its classifier ignores it, in
transformers as here), so the head is in both models' time and FLOPs.
"""

from collections.abc import Callable
from dataclasses import dataclass

from transformers import (
    CLIPConfig,
    CLIPForImageClassification,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    Dinov2Config,
    Dinov2ForImageClassification,
    PretrainedConfig,
    PreTrainedModel,
    SiglipConfig,
    SiglipForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from ...modeling.configuration_trilevel_clip import TriLevelCLIPVisionConfig
from ...modeling.configuration_trilevel_deit import TriLevelDeiTConfig
from ...modeling.configuration_trilevel_dinov2 import TriLevelDinov2Config
from ...modeling.configuration_trilevel_siglip import TriLevelSiglipVisionConfig
from ...modeling.configuration_trilevel_vit import TriLevelViTConfig
from ...modeling.modeling_trilevel_clip import TriLevelCLIPForImageClassification
from ...modeling.modeling_trilevel_deit import TriLevelDeiTForImageClassificationWithTeacher
from ...modeling.modeling_trilevel_dinov2 import TriLevelDinov2ForImageClassification
from ...modeling.modeling_trilevel_siglip import TriLevelSiglipForImageClassification
from ...modeling.modeling_trilevel_vit import TriLevelViTForImageClassification
from ..errors import CommandError


class ImageTextClassifierConfig:
    """Builds the image-text config (CLIP's, SigLIP's) that transformers' image classifiers of the family take: the
    shape's fields as its vision config, the labels and attention backend at the top (where those classes read them).
    `model_type` is the image-text type, which plain folders of the family carry."""

    def __init__(self, config_class: type[PretrainedConfig]):
        self.config_class = config_class
        self.model_type = config_class.model_type

    def __call__(self, num_labels: int, attn_implementation: str | None = None, **vision) -> PretrainedConfig:
        return self.config_class(vision_config=vision, num_labels=num_labels, attn_implementation=attn_implementation)


@dataclass(frozen=True)
class Family:
    """A dense transformers classifier and the TriLevel class that runs the same weights with sparsity."""

    name: str
    dense_config: type[PretrainedConfig] | Callable[..., PretrainedConfig]  # called with the shape's fields
    dense_model: type[PreTrainedModel]
    trilevel_config: type[TriLevelViTConfig]
    trilevel_model: type[PreTrainedModel]
    dense_name: str  # the dense class, for the table's header line
    dense_row: str = "dense ViT (transformers)"  # the dense row's label
    default_preset: str = "deit-tiny"
    mlp_ratio: bool = False  # the config takes `mlp_ratio` (hidden_size multiples) instead of `intermediate_size`
    other_plain_model_types: tuple[str, ...] = ()  # e.g. a CLIP vision tower's folder, besides an image-text one

    def config_kwargs(self, shape) -> dict:
        """The shape as this family's config fields (`options.ModelShape.vit_kwargs` for ViT and DeiT; DINOv2 states
        its MLP as `mlp_ratio`, which must then be a whole number)."""
        kwargs = shape.vit_kwargs()
        if self.mlp_ratio:
            intermediate = kwargs.pop("intermediate_size")
            if intermediate % kwargs["hidden_size"]:
                raise CommandError(
                    f"--family {self.name} sizes its MLP as a whole multiple of the hidden size (`mlp_ratio`): "
                    f"--intermediate-size {intermediate} is not a multiple of --hidden-size {kwargs['hidden_size']}."
                )
            kwargs["mlp_ratio"] = intermediate // kwargs["hidden_size"]
        return kwargs

    @property
    def saved_model_types(self) -> tuple[str, ...]:
        """`model_type`s of a `--model` folder this family can start from: its TriLevel and its plain ones."""
        return self.trilevel_config.model_type, self.dense_config.model_type, *self.other_plain_model_types


FAMILIES = {
    "vit": Family(
        "vit", ViTConfig, ViTForImageClassification, TriLevelViTConfig, TriLevelViTForImageClassification,
        "ViTForImageClassification",
    ),
    "deit-distilled": Family(
        "deit-distilled", DeiTConfig, DeiTForImageClassificationWithTeacher, TriLevelDeiTConfig,
        TriLevelDeiTForImageClassificationWithTeacher, "DeiTForImageClassificationWithTeacher",
        "dense DeiT distilled (transformers)",
    ),
    "dinov2": Family(
        "dinov2", Dinov2Config, Dinov2ForImageClassification, TriLevelDinov2Config,
        TriLevelDinov2ForImageClassification, "Dinov2ForImageClassification", "dense DINOv2 (transformers)",
        default_preset="dinov2-small", mlp_ratio=True,
    ),
    "clip": Family(
        "clip", ImageTextClassifierConfig(CLIPConfig), CLIPForImageClassification, TriLevelCLIPVisionConfig,
        TriLevelCLIPForImageClassification, "CLIPForImageClassification", "dense CLIP (transformers)",
        default_preset="clip-b32", other_plain_model_types=("clip_vision_model",),
    ),
    "siglip": Family(
        "siglip", ImageTextClassifierConfig(SiglipConfig), SiglipForImageClassification, TriLevelSiglipVisionConfig,
        TriLevelSiglipForImageClassification, "SiglipForImageClassification", "dense SigLIP (transformers)",
        default_preset="siglip-base", other_plain_model_types=("siglip_vision_model",),
    ),
}  # fmt: skip


def family(name: str) -> Family:
    """The family `--family` names, or a `CommandError` listing the families."""
    if name not in FAMILIES:
        raise CommandError(f"--family must be one of {', '.join(FAMILIES)}, got {name!r}.")
    return FAMILIES[name]


__all__ = ["FAMILIES", "Family", "ImageTextClassifierConfig", "family"]
