"""hf-trilevel: Vision Transformers that skip redundant examples, tokens and attention connections.

Importing the package registers the TriLevel classes with transformers' Auto classes, so `AutoConfig`,
`AutoModel` and `AutoModelForImageClassification` resolve `model_type="trilevel_vit"` without remote code.
Saved checkpoints also carry the code itself and load anywhere with `trust_remote_code=True`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .callbacks import ExamplePruningCallback, KeepRateScheduleCallback, TokenSelectorTemperatureCallback
from .configuration_trilevel_vit import TriLevelViTConfig, default_token_prune_layers
from .data_pruning import (
    EpochPlan,
    ExampleStatistics,
    ForgettingPolicy,
    LossPolicy,
    NoPruning,
    PruningPolicy,
    RandomPolicy,
    keyed_generator,
)
from .dense_sparse import DenseSparseTraining, operating_point
from .modeling_trilevel_vit import (
    TriLevelViTForImageClassification,
    TriLevelViTImageClassifierOutput,
    TriLevelViTModel,
    TriLevelViTModelOutput,
    TriLevelViTPreTrainedModel,
)
from .slimming import slim, structured_unit_masks
from .sparse_training import SparseTrainingCallback
from .token_reduction import token_schedule
from .token_selectors import TokenSelection, TokenSelector, register_token_selector, registered_token_selectors
from .trainer import TriLevelTrainer
from .training_technique import TrainingBatch, TrainingTechnique, sum_across_processes

AutoConfig.register(TriLevelViTConfig.model_type, TriLevelViTConfig, exist_ok=True)
AutoModel.register(TriLevelViTConfig, TriLevelViTModel, exist_ok=True)
AutoModelForImageClassification.register(TriLevelViTConfig, TriLevelViTForImageClassification, exist_ok=True)

__version__ = "0.1.0"

__all__ = [
    "DenseSparseTraining",
    "EpochPlan",
    "ExamplePruningCallback",
    "ExampleStatistics",
    "ForgettingPolicy",
    "KeepRateScheduleCallback",
    "LossPolicy",
    "NoPruning",
    "PruningPolicy",
    "RandomPolicy",
    "SparseTrainingCallback",
    "TokenSelection",
    "TokenSelector",
    "TokenSelectorTemperatureCallback",
    "TrainingBatch",
    "TrainingTechnique",
    "TriLevelTrainer",
    "TriLevelViTConfig",
    "TriLevelViTForImageClassification",
    "TriLevelViTImageClassifierOutput",
    "TriLevelViTModel",
    "TriLevelViTModelOutput",
    "TriLevelViTPreTrainedModel",
    "default_token_prune_layers",
    "keyed_generator",
    "operating_point",
    "register_token_selector",
    "registered_token_selectors",
    "slim",
    "structured_unit_masks",
    "sum_across_processes",
    "token_schedule",
]
