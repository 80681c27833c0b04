"""Top-1 and top-k accuracy from logits, as an `evaluate` metric that ships with hf-trilevel (no Hub download).

`evaluate.load("accuracy")` fetches a script from the Hub and fails offline; this folder is a local metric module,
so `evaluate.load(path_to_this_folder)` works with `HF_HUB_OFFLINE=1` / `HF_EVALUATE_OFFLINE=1`
(`hf_trilevel.evaluation.metrics.load_accuracy_metric()` does it). It takes logits rather than predicted classes,
because
top-k accuracy needs the ranking. evaluate imports this file on its own, so it imports only libraries.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Top-1 accuracy (`accuracy`), and top-k accuracy (`top{k}_accuracy`) when there are more than k
classes (with k or fewer it would always be 1)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: logits, one list of floats (one per class) per example.
    references: the true class index of each example.
    k: the k of top-k accuracy, a positive integer (default 5).
Returns:
    `accuracy`, the share of examples whose highest logit is the true class, and `top{k}_accuracy`, the share
    whose true class is among the k highest logits (only when there are more than k classes).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopKAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.List(datasets.Value("float64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, k: int = 5) -> dict[str, float]:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"`k` must be a positive integer, got {k!r}.")
        logits, labels = np.asarray(predictions, dtype=np.float64), np.asarray(references)
        if logits.ndim != 2 or labels.shape != logits.shape[:1]:
            raise ValueError(
                f"expected logits [examples, classes] and labels [examples], got {logits.shape} and {labels.shape}."
            )
        metrics = {"accuracy": float(np.mean(logits.argmax(axis=-1) == labels))}
        if logits.shape[-1] > k:
            top_k = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
            metrics[f"top{k}_accuracy"] = float(np.mean((top_k == labels[:, None]).any(axis=-1)))
        return metrics
