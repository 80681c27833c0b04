"""Accuracy and measured throughput of one model at several keep-rate settings: the numbers an operating point has.

One set of weights is evaluated at each `(token_keep_rate, attention_keep_rate)` setting (`model.keep_rates(...)`,
the same weights, no reload). Accuracy is an `evaluate` metric over every given image; throughput is timed on one
batch, the same for every setting, in interleaved rounds (`hf_trilevel.evaluation.timing`), so drift of the
machine's speed hits every setting alike. Which settings to measure is the caller's choice: a dense/sparse
checkpoint's operating points are chosen in `hf_trilevel.token_training.operating_points`.
"""

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch
from transformers import EvalPrediction

from .flops import flops_speedup_limit, forward_flops
from .metrics import build_compute_metrics
from .timing import interleaved_times, medians


def measure_accuracy_and_throughput(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    settings: Sequence[tuple],
    *,
    batch_size: int = 64,
    repeats: int = 10,
    warmup: int = 2,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    metric=None,
) -> list[dict]:
    """Accuracy, throughput and FLOPs of a TriLevel classifier at each `(token_keep_rate, attention_keep_rate)`, or
    `(token_keep_rate, attention_keep_rate, token_merge_r)` (the arguments of `model.keep_rates`).

    Args:
        model: a TriLevel classifier (it has `keep_rates(...)`); moved to `device` and put in eval mode.
        pixel_values: `[examples, channels, height, width]` on the CPU, moved a batch at a time; accuracy is over all
            of it, throughput timed on its first `batch_size` examples.
        labels: `[examples]` class indices.
        settings: the keep-rate pairs (or triples with the merge count) to measure, in the order the result lists
            them; every setting is timed in the same interleaved rounds.
        batch_size, repeats, warmup: images per forward, timed rounds and untimed rounds first.
        progress: `(done, total)` after every timing round.
        metric: an `evaluate` module or combination (`hf_trilevel.evaluation.metrics.build_compute_metrics`);
            default: the shipped top-1 / top-5 accuracy.

    Returns:
        One dict per setting: `token_keep_rate`, `attention_keep_rate` (and `token_merge_r` for a triple), the
        metric's results (`accuracy`, and
        `top5_accuracy` with more than 5 classes, for the default metric), `images_per_second`,
        `median_batch_seconds`, `flops_per_image`, `flops_speedup_limit`.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    timed_batch = pixel_values[:batch_size].to(device)
    compute_metrics = build_compute_metrics(metric)

    def forward_at(setting: tuple, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), model.keep_rates(*setting):
            return model(pixel_values=batch).logits

    runs = {str(index): partial(forward_at, setting, timed_batch) for index, setting in enumerate(settings)}
    seconds = medians(interleaved_times(runs, repeats=repeats, warmup=warmup, device=device, progress=progress))
    points = []
    for index, setting in enumerate(settings):
        token_keep_rate, attention_keep_rate, *merge_r = setting
        logits = [
            forward_at(setting, pixel_values[start : start + batch_size].to(device)).float().cpu()
            for start in range(0, len(pixel_values), batch_size)
        ]
        scores = compute_metrics(EvalPrediction(predictions=torch.cat(logits).numpy(), label_ids=np.asarray(labels)))
        with model.keep_rates(*setting):
            flops, limit = forward_flops(model.config), flops_speedup_limit(model.config)
        points.append(
            {
                "token_keep_rate": token_keep_rate,
                "attention_keep_rate": attention_keep_rate,
                **({"token_merge_r": merge_r[0]} if merge_r else {}),
                **scores,
                "images_per_second": len(timed_batch) / seconds[str(index)],
                "median_batch_seconds": seconds[str(index)],
                "flops_per_image": flops,
                "flops_speedup_limit": limit,
            }
        )
    return points


__all__ = ["measure_accuracy_and_throughput"]
