"""The training seam: `TriLevelTrainer` and the `TrainingTechnique` base every technique fills in.

A technique (a `TrainerCallback`) shapes the loss, serves the training set, keeps state in checkpoints and reports
its own card settings through `technique.py`; the trainer knows no technique by name. Shared pieces of the techniques
(keyed generators, step schedules, per-example losses) live here so that no technique imports another.
"""

from .errors import TrainingRefused
from .technique import TrainingBatch, TrainingTechnique, sum_across_processes
from .trainer import TriLevelTrainer

__all__ = ["TrainingBatch", "TrainingRefused", "TrainingTechnique", "TriLevelTrainer", "sum_across_processes"]
