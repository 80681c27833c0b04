"""Metrics for `Trainer(compute_metrics=...)` and for reporting a model's sparsity, offline.

`evaluate.load("accuracy")` downloads a metric script from the Hub and fails offline; top-1 and top-5 accuracy are a
few lines of NumPy, so training and evaluation never need the network. `sparsity_metrics` turns a config's keep
rates into the FLOPs and token counts that results files report beside the accuracy.
"""

import numpy as np
from transformers import EvalPrediction

from .configuration_trilevel_vit import TriLevelViTConfig
from .flops import flops_speedup_limit, forward_flops, layer_costs, num_patches

TOP_K = 5


def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
    """Top-1 `accuracy`, plus `top5_accuracy` when there are more than 5 classes (with 5 or fewer it would be 1).

    `eval_prediction.predictions` holds logits `[examples, classes]`, or a tuple whose first element is the logits
    (what `Trainer` gathers when the model returns more than logits); `label_ids` holds class indices `[examples]`.
    """
    logits = eval_prediction.predictions
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    logits, labels = np.asarray(logits), np.asarray(eval_prediction.label_ids)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits [examples, classes] and labels [examples], got {logits.shape} and {labels.shape}."
        )

    metrics = {"accuracy": float(np.mean(logits.argmax(axis=-1) == labels))}
    if logits.shape[-1] > TOP_K:
        top_k = np.argpartition(-logits, TOP_K - 1, axis=-1)[:, :TOP_K]
        metrics[f"top{TOP_K}_accuracy"] = float(np.mean((top_k == labels[:, None]).any(axis=-1)))
    return metrics


def sparsity_metrics(config: TriLevelViTConfig) -> dict[str, float]:
    """The token sparsity and forward FLOPs that `config`'s keep rates give, from the analytic FLOPs model.

    `token_fraction_kept` is the number of tokens each layer's MLP processes as a share of the dense count (class
    and fused tokens included), averaged over layers: what token dropping saves in the MLPs, which dominate the cost.
    Attention sparsity saves no FLOPs here (the kernels compute masked entries too), so it is reported as the rate.
    """
    sparse_flops = forward_flops(config)
    speedup_limit = flops_speedup_limit(config)
    costs = layer_costs(config)
    return {
        "eval_gflops_per_image": sparse_flops / 1e9,
        "dense_gflops_per_image": sparse_flops * speedup_limit / 1e9,
        "flops_speedup_limit": speedup_limit,
        "token_fraction_kept": sum(cost.mlp_tokens for cost in costs) / (len(costs) * (1 + num_patches(config))),
        "token_keep_rate": config.token_keep_rate,
        "attention_keep_rate": config.attention_keep_rate,
    }


__all__ = ["compute_metrics", "sparsity_metrics"]
