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
    Dinov2Config,
    Dinov2ForImageClassification,
    PretrainedConfig,
    PreTrainedModel,
    ViTConfig,
    ViTForImageClassification,
)

from ...modeling.configuration_trilevel_deit import TriLevelDeiTConfig
from ...modeling.configuration_trilevel_dinov2 import TriLevelDinov2Config
from ...modeling.configuration_trilevel_vit import TriLevelViTConfig
from ...modeling.modeling_trilevel_deit import TriLevelDeiTForImageClassificationWithTeacher
from ...modeling.modeling_trilevel_dinov2 import TriLevelDinov2ForImageClassification
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
    default_preset: str = "deit-tiny"
    mlp_ratio: bool = False  # the config takes `mlp_ratio` (hidden_size multiples) instead of `intermediate_size`

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
    "dinov2": Family(
        "dinov2", Dinov2Config, Dinov2ForImageClassification, TriLevelDinov2Config,
        TriLevelDinov2ForImageClassification, "Dinov2ForImageClassification", "dense DINOv2 (transformers)",
        default_preset="dinov2-small", mlp_ratio=True,
    ),
}  # fmt: skip
PLANNED_FAMILIES = ("clip", "siglip")


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
