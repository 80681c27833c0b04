"""hf_trilevel.metrics: offline accuracy for the Trainer, and the sparsity figures results files report."""

import numpy as np
import pytest
from transformers import EvalPrediction

from hf_trilevel.flops import flops_speedup_limit, forward_flops
from hf_trilevel.metrics import compute_metrics, sparsity_metrics

from .helpers import tiny_config


def crafted_logits() -> tuple[np.ndarray, np.ndarray]:
    """Four examples over 10 classes: top-1 right for the first two; the third's label ranks 5th, the fourth's 6th."""
    ranking = np.arange(10, 0, -1, dtype=np.float32)  # class 0 highest, class 9 lowest
    logits = np.stack([np.roll(ranking, shift) for shift in (0, 3, 0, 0)])
    labels = np.array([0, 3, 4, 5])
    return logits, labels


def test_metrics_give_top1_and_top5_accuracy_of_crafted_logits():
    logits, labels = crafted_logits()
    metrics = compute_metrics(EvalPrediction(predictions=logits, label_ids=labels))
    assert metrics == {"accuracy": pytest.approx(0.5), "top5_accuracy": pytest.approx(0.75)}


def test_metrics_take_the_logits_from_tuple_predictions():
    logits, labels = crafted_logits()
    extra = np.zeros((4, 7), dtype=np.float32)
    metrics = compute_metrics(EvalPrediction(predictions=(logits, extra), label_ids=labels))
    assert metrics["accuracy"] == pytest.approx(0.5)


def test_metrics_skip_top5_with_five_classes_or_fewer():
    logits = np.eye(5, dtype=np.float32)
    metrics = compute_metrics(EvalPrediction(predictions=logits, label_ids=np.array([0, 1, 2, 3, 0])))
    assert metrics == {"accuracy": pytest.approx(0.8)}


def test_metrics_give_top1_only_with_exactly_five_classes_and_top5_with_six():
    labels = np.array([0, 1])
    assert set(compute_metrics(EvalPrediction(predictions=np.eye(5)[:2], label_ids=labels))) == {"accuracy"}
    six = compute_metrics(EvalPrediction(predictions=np.eye(6)[:2], label_ids=labels))
    assert six == {"accuracy": 1.0, "top5_accuracy": 1.0}


def test_metrics_reject_logits_that_do_not_match_the_labels():
    with pytest.raises(ValueError, match="expected logits"):
        compute_metrics(EvalPrediction(predictions=np.zeros((3, 4)), label_ids=np.zeros(2)))


def test_sparsity_metrics_of_a_dense_config_show_no_savings():
    metrics = sparsity_metrics(tiny_config())
    assert metrics["flops_speedup_limit"] == 1.0 and metrics["token_fraction_kept"] == 1.0
    assert metrics["eval_gflops_per_image"] == pytest.approx(metrics["dense_gflops_per_image"])


def test_sparsity_metrics_follow_the_flops_model_and_count_kept_tokens_per_layer():
    config = tiny_config(token_keep_rate=0.5, attention_keep_rate=0.25)  # 4 layers, pruning at 1, 2, 3; 64 patches
    metrics = sparsity_metrics(config)
    assert metrics["eval_gflops_per_image"] == pytest.approx(forward_flops(config) / 1e9)
    assert metrics["flops_speedup_limit"] == pytest.approx(flops_speedup_limit(config))
    assert metrics["dense_gflops_per_image"] == pytest.approx(forward_flops(tiny_config()) / 1e9)
    # MLP tokens per layer: 65, then 1 + 32, 1 + 16, 1 + 8 (class token included), out of 65.
    assert metrics["token_fraction_kept"] == pytest.approx((65 + 33 + 17 + 9) / (4 * 65))
    assert metrics["token_keep_rate"] == 0.5 and metrics["attention_keep_rate"] == 0.25
