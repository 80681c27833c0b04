"""Classification metrics for `Trainer(compute_metrics=...)`, in plain NumPy.

`evaluate.load("accuracy")` downloads a metric script from the Hub and fails offline; top-1 and top-5 accuracy are a
few lines of NumPy, so training and evaluation never need the network.
"""

import numpy as np
from transformers import EvalPrediction

TOP_K = 5


def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
    """Top-1 `accuracy`, plus `top5_accuracy` when there are more than 5 classes.

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


__all__ = ["compute_metrics"]
