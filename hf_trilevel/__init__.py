"""hf-trilevel: Vision Transformers that skip redundant examples, tokens, attention connections and weights.

The front door holds the model classes, the trainer, the training techniques (one per folder: `example_pruning`,
`token_training`, `weight_sparsity`) and the token-selector registry; everything else is imported from its folder
(`hf_trilevel.evaluation.flops`, `hf_trilevel.example_pruning.ForgettingPolicy`, ...). README draws the tree.

Importing the package registers the TriLevel classes with transformers' Auto classes, so `AutoConfig`,
`AutoModel`, `AutoModelForImageClassification` (and, for CLIP and SigLIP, `AutoModelForZeroShotImageClassification`)
resolve `model_type="trilevel_vit"` and the families' types (`"trilevel_deit"`, `"trilevel_dinov2"`,
`"trilevel_clip_vision_model"`, `"trilevel_clip"`, `"trilevel_siglip_vision_model"`, `"trilevel_siglip"`) without
remote code.
Saved checkpoints also carry the code itself (`hf_trilevel.modeling`) and load anywhere with
`trust_remote_code=True`.
"""

import warnings
from importlib import import_module

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForZeroShotImageClassification,
)

from .example_pruning import ExamplePruning, PruningPolicy
from .modeling import (
    TriLevelCLIPConfig,
    TriLevelCLIPForImageClassification,
    TriLevelCLIPModel,
    TriLevelCLIPPreTrainedModel,
    TriLevelCLIPVisionConfig,
    TriLevelCLIPVisionModel,
    TriLevelDeiTConfig,
    TriLevelDeiTForImageClassificationWithTeacher,
    TriLevelDeiTForImageClassificationWithTeacherOutput,
    TriLevelDeiTModel,
    TriLevelDeiTPreTrainedModel,
    TriLevelDinov2Config,
    TriLevelDinov2ForImageClassification,
    TriLevelDinov2Model,
    TriLevelDinov2PreTrainedModel,
    TriLevelSiglipConfig,
    TriLevelSiglipForImageClassification,
    TriLevelSiglipModel,
    TriLevelSiglipPreTrainedModel,
    TriLevelSiglipVisionConfig,
    TriLevelSiglipVisionModel,
    TriLevelViTConfig,
    TriLevelViTForImageClassification,
    TriLevelViTImageClassifierOutput,
    TriLevelViTModel,
    TriLevelViTModelOutput,
    TriLevelViTPreTrainedModel,
)
from .modeling.token_selectors import TokenSelection, TokenSelector, register_token_selector, registered_token_selectors
from .token_training import DenseSparseTraining, KeepRateSchedule, SelectorTemperatureSchedule
from .training import TrainingBatch, TrainingTechnique, TriLevelTrainer
from .weight_sparsity import WeightSparsity, slim

AutoConfig.register(TriLevelViTConfig.model_type, TriLevelViTConfig, exist_ok=True)
AutoModel.register(TriLevelViTConfig, TriLevelViTModel, exist_ok=True)
AutoModelForImageClassification.register(TriLevelViTConfig, TriLevelViTForImageClassification, exist_ok=True)
AutoConfig.register(TriLevelDeiTConfig.model_type, TriLevelDeiTConfig, exist_ok=True)
AutoModel.register(TriLevelDeiTConfig, TriLevelDeiTModel, exist_ok=True)
AutoModelForImageClassification.register(
    TriLevelDeiTConfig, TriLevelDeiTForImageClassificationWithTeacher, exist_ok=True
)
AutoConfig.register(TriLevelDinov2Config.model_type, TriLevelDinov2Config, exist_ok=True)
AutoModel.register(TriLevelDinov2Config, TriLevelDinov2Model, exist_ok=True)
AutoModelForImageClassification.register(TriLevelDinov2Config, TriLevelDinov2ForImageClassification, exist_ok=True)
for vision_config, vision_model, classifier, image_text_config, image_text_model in (
    (TriLevelCLIPVisionConfig, TriLevelCLIPVisionModel, TriLevelCLIPForImageClassification, TriLevelCLIPConfig,
     TriLevelCLIPModel),
    (TriLevelSiglipVisionConfig, TriLevelSiglipVisionModel, TriLevelSiglipForImageClassification, TriLevelSiglipConfig,
     TriLevelSiglipModel),
):  # fmt: skip
    AutoConfig.register(vision_config.model_type, vision_config, exist_ok=True)
    AutoModel.register(vision_config, vision_model, exist_ok=True)
    AutoModelForImageClassification.register(vision_config, classifier, exist_ok=True)
    AutoConfig.register(image_text_config.model_type, image_text_config, exist_ok=True)
    AutoModel.register(image_text_config, image_text_model, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(image_text_config, image_text_model, exist_ok=True)

__version__ = "0.1.0"

# Names of 0.1.0 that left the front door: the old technique names (aliases of the new classes) and the helpers that
# now live in their folders. They still import from `hf_trilevel`, with a FutureWarning naming the new home, for one
# release.
MOVED_NAMES = {
    "ExamplePruningCallback": ("hf_trilevel.example_pruning", "ExamplePruning"),
    "KeepRateScheduleCallback": ("hf_trilevel.token_training", "KeepRateSchedule"),
    "TokenSelectorTemperatureCallback": ("hf_trilevel.token_training", "SelectorTemperatureSchedule"),
    "SparseTrainingCallback": ("hf_trilevel.weight_sparsity", "WeightSparsity"),
    "EpochPlan": ("hf_trilevel.example_pruning", "EpochPlan"),
    "ExampleStatistics": ("hf_trilevel.example_pruning", "ExampleStatistics"),
    "ForgettingPolicy": ("hf_trilevel.example_pruning", "ForgettingPolicy"),
    "LossPolicy": ("hf_trilevel.example_pruning", "LossPolicy"),
    "NoPruning": ("hf_trilevel.example_pruning", "NoPruning"),
    "RandomPolicy": ("hf_trilevel.example_pruning", "RandomPolicy"),
    "default_token_prune_layers": ("hf_trilevel.modeling.configuration_trilevel_vit", "default_token_prune_layers"),
    "keyed_generator": ("hf_trilevel.training.generators", "keyed_generator"),
    "operating_point": ("hf_trilevel.token_training", "operating_point"),
    "structured_unit_masks": ("hf_trilevel.weight_sparsity", "structured_unit_masks"),
    "sum_across_processes": ("hf_trilevel.training", "sum_across_processes"),
    "token_schedule": ("hf_trilevel.modeling.token_reduction", "token_schedule"),
}


def __getattr__(name: str):
    """An old name, with a FutureWarning that says where it lives now (PEP 562: only names not found above)."""
    if name not in MOVED_NAMES:
        raise AttributeError(f"module 'hf_trilevel' has no attribute {name!r}")
    module, new_name = MOVED_NAMES[name]
    warnings.warn(
        f"`hf_trilevel.{name}` is deprecated and will be removed in the next release; use `{module}.{new_name}`.",
        FutureWarning,
        stacklevel=2,
    )
    return getattr(import_module(module), new_name)


__all__ = [
    "DenseSparseTraining",
    "ExamplePruning",
    "KeepRateSchedule",
    "PruningPolicy",
    "SelectorTemperatureSchedule",
    "TokenSelection",
    "TokenSelector",
    "TrainingBatch",
    "TrainingTechnique",
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
    "TriLevelTrainer",
    "TriLevelViTConfig",
    "TriLevelViTForImageClassification",
    "TriLevelViTImageClassifierOutput",
    "TriLevelViTModel",
    "TriLevelViTModelOutput",
    "TriLevelViTPreTrainedModel",
    "WeightSparsity",
    "register_token_selector",
    "registered_token_selectors",
    "slim",
]
