"""Metrics for `Trainer(compute_metrics=...)` through `evaluate`, offline, and a model's sparsity figures.

Accuracy goes through `evaluate`'s `Metric` API, so a user's own metric (`evaluate.load("f1")`, or several joined
with `evaluate.combine`) plugs into the same place as ours. The default metric, top-1 and top-5 accuracy from logits,
ships inside the package as a local metric module (`metric_modules/top_k_accuracy`): `evaluate.load("accuracy")`
downloads a script from the Hub and fails offline, a local folder loads with `HF_HUB_OFFLINE=1` and
`HF_EVALUATE_OFFLINE=1`. Loading copies the script into `evaluate`'s modules cache (`HF_MODULES_CACHE`, under
`HF_HOME`); the metric keeps predictions in memory (`keep_in_memory=True`), so it writes no Arrow files.

`evaluate` is imported only when a metric is built: it pulls in transformers' pipelines, seconds of start-up that
`sparsity_metrics` alone does not need.

`sparsity_metrics` turns a config's keep rates into the FLOPs and token counts that results files report beside the
accuracy.
"""

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from transformers import EvalPrediction

from ..evaluation.patches import num_patches
from ..modeling.configuration_trilevel_vit import TriLevelViTConfig
from .flops import flops_speedup_limit, forward_flops, layer_costs, prefix_tokens

if TYPE_CHECKING:
    from evaluate import CombinedEvaluations, EvaluationModule

TOP_K = 5
# The shipped metric module: `evaluate.load(str(ACCURACY_METRIC_PATH))` works offline.
ACCURACY_METRIC_PATH = Path(__file__).with_name("metric_modules") / "top_k_accuracy"
PREDICTION_INPUTS = ("auto", "logits", "classes")


def load_accuracy_metric(**load_kwargs: Any) -> "EvaluationModule":
    """The shipped top-1 / top-k accuracy metric, through `evaluate.load` on its local folder (never the Hub).

    Its `compute(predictions=logits, references=labels, k=5)` returns `accuracy` and, with more than `k` classes,
    `top{k}_accuracy`. `load_kwargs` go to `evaluate.load`; by default the metric keeps its inputs in memory and has
    a fixed seed, so it neither writes cache files nor reads NumPy's global random state.
    """
    import evaluate

    settings = {"keep_in_memory": True, "seed": 0, **load_kwargs}
    return evaluate.load(str(ACCURACY_METRIC_PATH), **settings)


def build_compute_metrics(
    metric: "EvaluationModule | CombinedEvaluations | None" = None,
    *,
    predictions: str = "auto",
    **compute_kwargs: Any,
) -> Callable[[EvalPrediction], dict[str, float]]:
    """A `Trainer(compute_metrics=...)` function that scores each evaluation with an `evaluate` metric.

    Args:
        metric: an `evaluate` module (`evaluate.load(...)`) or `evaluate.combine([...])`; default: the shipped
            top-1 / top-5 accuracy (`load_accuracy_metric()`).
        predictions: what the metric's `predictions` are: `"logits"` (`[examples, classes]`, as the shipped metric
            takes), `"classes"` (the argmax, as `evaluate.load("accuracy")` or `"f1"` take), or `"auto"`: logits when
            the metric declares its predictions as a list per example, classes when it declares one value.
        compute_kwargs: passed to `metric.compute` (e.g. `average="macro"` for f1).

    The returned function takes an `EvalPrediction` whose `predictions` are logits `[examples, classes]` (or a tuple
    whose first element is, as `Trainer` gathers them when the model returns more than logits) and whose
    `label_ids` are class indices `[examples]`.
    """
    if predictions not in PREDICTION_INPUTS:
        raise ValueError(f"`predictions` must be one of {', '.join(PREDICTION_INPUTS)}; got {predictions!r}.")
    if metric is None:
        metric = load_accuracy_metric()
    takes_logits = _takes_logits(metric) if predictions == "auto" else predictions == "logits"

    def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
        logits, labels = _logits_and_labels(eval_prediction)
        inputs = logits if takes_logits else logits.argmax(axis=-1)
        return metric.compute(predictions=inputs, references=labels, **compute_kwargs)

    return compute_metrics


def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
    """Top-1 `accuracy`, plus `top5_accuracy` when there are more than 5 classes (with 5 or fewer it would be 1).

    The shipped metric, loaded for this call (about 10 ms; nothing is kept between calls). To load it once, or to
    use another metric, pass `build_compute_metrics(...)` to the Trainer instead.
    """
    return build_compute_metrics()(eval_prediction)


def _logits_and_labels(eval_prediction: EvalPrediction) -> tuple[np.ndarray, np.ndarray]:
    logits = eval_prediction.predictions
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    logits, labels = np.asarray(logits), np.asarray(eval_prediction.label_ids)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits [examples, classes] and labels [examples], got {logits.shape} and {labels.shape}."
        )
    return logits, labels


def _takes_logits(metric: "EvaluationModule | CombinedEvaluations") -> bool:
    """Whether `metric` declares its `predictions` as a sequence per example (logits) rather than one value."""
    import datasets

    modules = getattr(metric, "evaluation_modules", [metric])  # CombinedEvaluations holds several
    kinds = {}
    for module in modules:
        features = module.features[0] if isinstance(module.features, list) else module.features
        feature = features.get("predictions") if features is not None else None
        kinds[module.name] = isinstance(feature, (datasets.Sequence, datasets.LargeList))
    if len(set(kinds.values())) > 1:
        logits = sorted(name for name, takes in kinds.items() if takes)
        classes = sorted(name for name, takes in kinds.items() if not takes)
        raise ValueError(
            f"`metric` combines modules that take logits ({', '.join(logits)}) with modules that take predicted "
            f"classes ({', '.join(classes)}); evaluate gives every module the same predictions, so score them "
            "with separate `build_compute_metrics` functions."
        )
    return next(iter(kinds.values()))


def sparsity_metrics(config: TriLevelViTConfig) -> dict[str, float]:
    """The token sparsity and forward FLOPs that `config`'s keep rates give, from the analytic FLOPs model.

    `token_fraction_kept` is the number of tokens each layer's MLP processes as a share of the dense count (class
    and fused tokens included), averaged over layers: what token dropping (and merging, `token_merge_r`: the MLPs
    run at the merged widths) saves in the MLPs, which dominate the cost.
    Attention sparsity saves no FLOPs here (the kernels compute masked entries too), so it is reported as the rate.
    """
    sparse_flops = forward_flops(config)
    speedup_limit = flops_speedup_limit(config)
    costs = layer_costs(config)
    return {
        "eval_gflops_per_image": sparse_flops / 1e9,
        "dense_gflops_per_image": sparse_flops * speedup_limit / 1e9,
        "flops_speedup_limit": speedup_limit,
        "token_fraction_kept": sum(cost.mlp_tokens for cost in costs)
        / (len(costs) * (prefix_tokens(config) + num_patches(config.image_size, config.patch_size))),
        "token_keep_rate": config.token_keep_rate,
        "attention_keep_rate": config.attention_keep_rate,
    }


__all__ = [
    "ACCURACY_METRIC_PATH",
    "build_compute_metrics",
    "compute_metrics",
    "load_accuracy_metric",
    "sparsity_metrics",
]
