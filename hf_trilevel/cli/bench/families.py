"""The model families `bench inference --family` times: each is a dense transformers class and its TriLevel twin.

A family fixes which dense model the rows are compared with and which TriLevel class runs them; the shapes
(`--preset`, the shape flags) are those of the family's real base models. The dense and TriLevel classes of a family
hold the same weights under the same names, so one state dict serves both (`models.build_models_by_selector`).

Families issue 27 names that have no TriLevel classes yet (`PLANNED_FAMILIES`) are refused by name before anything
is built.
"""

from dataclasses import dataclass

from transformers import (
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    PretrainedConfig,
    PreTrainedModel,
    ViTConfig,
    ViTForImageClassification,
)

from ...modeling.configuration_trilevel_deit import TriLevelDeiTConfig
from ...modeling.configuration_trilevel_vit import TriLevelViTConfig
from ...modeling.modeling_trilevel_deit import TriLevelDeiTForImageClassificationWithTeacher
from ...modeling.modeling_trilevel_vit import TriLevelViTForImageClassification
from ..errors import CommandError


@dataclass(frozen=True)
class Family:
    """A dense transformers classifier and the TriLevel class that runs the same weights with sparsity."""

    name: str
    dense_config: type[PretrainedConfig]
    dense_model: type[PreTrainedModel]
    trilevel_config: type[TriLevelViTConfig]
    trilevel_model: type[PreTrainedModel]
    dense_name: str  # the dense class, for the table's header line
    dense_row: str = "dense ViT (transformers)"  # the dense row's label

    @property
    def saved_model_types(self) -> tuple[str, ...]:
        """`model_type`s of a `--model` folder this family can start from: its TriLevel and its plain one."""
        return self.trilevel_config.model_type, self.dense_config.model_type


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
}  # fmt: skip
PLANNED_FAMILIES = ("dinov2", "clip", "siglip")


def family(name: str) -> Family:
    """The family `--family` names, or a `CommandError` listing those that run and those still to come."""
    if name in PLANNED_FAMILIES:
        raise CommandError(
            f"--family {name}: no TriLevel classes for this family yet (issue 27); available: {', '.join(FAMILIES)}."
        )
    if name not in FAMILIES:
        raise CommandError(f"--family must be one of {', '.join(FAMILIES)}, got {name!r}.")
    return FAMILIES[name]


__all__ = ["FAMILIES", "PLANNED_FAMILIES", "Family", "family"]
