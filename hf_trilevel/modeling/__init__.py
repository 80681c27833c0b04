"""The TriLevel model: the remote-code set that `save_pretrained` copies, flat, into every checkpoint.

transformers copies the file that defines a saved class and, recursively, every `from .x import y` sibling it
imports, and `auto_map` names only file stems; so these files import nothing but each other, torch, transformers,
huggingface_hub and the standard library (tests/test_remote_code.py enforces it), and nothing else lives here.
This `__init__.py` is not part of the set: checkpoints never carry it; it also holds `FAMILY_CLASSES`, what tools
that start from any saved folder (the example, cards, commands) look a family up in.
"""

from dataclasses import dataclass

from .configuration_trilevel_clip import TriLevelCLIPConfig, TriLevelCLIPVisionConfig
from .configuration_trilevel_deit import TriLevelDeiTConfig
from .configuration_trilevel_dinov2 import TriLevelDinov2Config
from .configuration_trilevel_siglip import TriLevelSiglipConfig, TriLevelSiglipVisionConfig
from .configuration_trilevel_vit import TriLevelViTConfig
from .modeling_trilevel_clip import (
    TriLevelCLIPForImageClassification,
    TriLevelCLIPModel,
    TriLevelCLIPPreTrainedModel,
    TriLevelCLIPVisionModel,
)
from .modeling_trilevel_deit import (
    TriLevelDeiTForImageClassificationWithTeacher,
    TriLevelDeiTForImageClassificationWithTeacherOutput,
    TriLevelDeiTModel,
    TriLevelDeiTPreTrainedModel,
)
from .modeling_trilevel_dinov2 import (
    TriLevelDinov2ForImageClassification,
    TriLevelDinov2Model,
    TriLevelDinov2PreTrainedModel,
)
from .modeling_trilevel_siglip import (
    TriLevelSiglipForImageClassification,
    TriLevelSiglipModel,
    TriLevelSiglipPreTrainedModel,
    TriLevelSiglipVisionModel,
)
from .modeling_trilevel_vit import (
    TriLevelViTForImageClassification,
    TriLevelViTImageClassifierOutput,
    TriLevelViTModel,
    TriLevelViTModelOutput,
    TriLevelViTPreTrainedModel,
)

#: The files every saved checkpoint carries: what `save_pretrained` copies and `trust_remote_code` runs.
REMOTE_CODE_FILES = (
    "configuration_trilevel_vit.py",
    "modeling_trilevel_vit.py",
    "sparse_attention.py",
    "token_groups.py",
    "token_merging.py",
    "token_reduction.py",
    "token_selectors.py",
    "value_checks.py",
    "vit_blocks.py",
    "vit_layer.py",
)

#: A family's own files, which its checkpoints carry on top of `REMOTE_CODE_FILES` (they build on the ViT files).
FAMILY_CODE_FILES = {
    "deit": ("configuration_trilevel_deit.py", "modeling_trilevel_deit.py"),
    "dinov2": ("configuration_trilevel_dinov2.py", "modeling_trilevel_dinov2.py"),
    "clip": (
        "configuration_trilevel_clip.py",
        "image_text_config.py",
        "modeling_trilevel_clip.py",
        "vision_towers.py",
    ),
    "siglip": (
        "configuration_trilevel_siglip.py",
        "image_text_config.py",
        "modeling_trilevel_siglip.py",
        "vision_towers.py",
    ),
}


@dataclass(frozen=True)
class FamilyClasses:
    """A TriLevel family as a tool that starts from a saved folder needs it: its config class, the image-classification
    class the example trains, and the `model_type`s of the folders it loads besides its own (`plain_model_types`:
    transformers' own types, and for CLIP and SigLIP also the image-text types, TriLevel or not, whose vision config it
    reads)."""

    name: str
    config_class: type
    classifier_class: type
    plain_model_types: tuple[str, ...]

    @property
    def model_types(self) -> tuple[str, ...]:
        """Every `model_type` a folder of this family may carry: the TriLevel one first."""
        return (self.config_class.model_type, *self.plain_model_types)


#: Every family by its TriLevel `model_type`, ViT first.
FAMILY_CLASSES = {
    family.config_class.model_type: family
    for family in (
        FamilyClasses("vit", TriLevelViTConfig, TriLevelViTForImageClassification, ("vit",)),
        FamilyClasses("deit-distilled", TriLevelDeiTConfig, TriLevelDeiTForImageClassificationWithTeacher, ("deit",)),
        FamilyClasses("dinov2", TriLevelDinov2Config, TriLevelDinov2ForImageClassification, ("dinov2",)),
        FamilyClasses(
            "clip",
            TriLevelCLIPVisionConfig,
            TriLevelCLIPForImageClassification,
            ("clip_vision_model", "clip", "trilevel_clip"),
        ),
        FamilyClasses(
            "siglip",
            TriLevelSiglipVisionConfig,
            TriLevelSiglipForImageClassification,
            ("siglip_vision_model", "siglip", "trilevel_siglip"),
        ),
    )
}


def family_of_model_type(model_type: str | None) -> FamilyClasses | None:
    """The family whose folders carry `model_type` (a TriLevel or a plain transformers type), or None."""
    return next((family for family in FAMILY_CLASSES.values() if model_type in family.model_types), None)


def family_of_config(config) -> FamilyClasses:
    """The family whose TriLevel config class `config` is; a `ValueError` naming its type otherwise (a tool would have
    no class to build or load it with)."""
    family = family_of_model_type(getattr(config, "model_type", None))
    if family is None or not isinstance(config, family.config_class):
        raise ValueError(
            f"`config` must be the config of a registered TriLevel family (`hf_trilevel.modeling.FAMILY_CLASSES`: "
            f"{', '.join(FAMILY_CLASSES)}), got a {type(config).__name__} with model_type "
            f"{getattr(config, 'model_type', None)!r}."
        )
    return family


__all__ = [
    "FAMILY_CLASSES",
    "FAMILY_CODE_FILES",
    "REMOTE_CODE_FILES",
    "FamilyClasses",
    "TriLevelCLIPConfig",
    "TriLevelCLIPForImageClassification",
    "TriLevelCLIPModel",
    "TriLevelCLIPPreTrainedModel",
    "TriLevelCLIPVisionConfig",
    "TriLevelCLIPVisionModel",
    "TriLevelDeiTConfig",
    "TriLevelDeiTForImageClassificationWithTeacher",
    "TriLevelDeiTForImageClassificationWithTeacherOutput",
    "TriLevelDeiTModel",
    "TriLevelDeiTPreTrainedModel",
    "TriLevelDinov2Config",
    "TriLevelDinov2ForImageClassification",
    "TriLevelDinov2Model",
    "TriLevelDinov2PreTrainedModel",
    "TriLevelSiglipConfig",
    "TriLevelSiglipForImageClassification",
    "TriLevelSiglipModel",
    "TriLevelSiglipPreTrainedModel",
    "TriLevelSiglipVisionConfig",
    "TriLevelSiglipVisionModel",
    "TriLevelViTConfig",
    "TriLevelViTForImageClassification",
    "TriLevelViTImageClassifierOutput",
    "TriLevelViTModel",
    "TriLevelViTModelOutput",
    "TriLevelViTPreTrainedModel",
    "family_of_config",
    "family_of_model_type",
]
