"""The token level, training side: how a model learns to run with fewer tokens.

`KeepRateSchedule` warms the keep rate up (Tri-Level E-ViT), `SelectorTemperatureSchedule` anneals learned scores
(SViTE+), `DenseSparseTraining` trains one checkpoint for several keep rates with distillation (SaiT), and the
operating-point table measures what each rate buys. The token selection itself is model code (`hf_trilevel.modeling`).
"""

from .dense_sparse import DenseSparseTraining, operating_point
from .keep_rate_schedule import KeepRateSchedule
from .selector_temperature import SelectorTemperatureSchedule

__all__ = ["DenseSparseTraining", "KeepRateSchedule", "SelectorTemperatureSchedule", "operating_point"]
