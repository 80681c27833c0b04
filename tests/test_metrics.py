"""hf_trilevel.evaluation.metrics: accuracy for the Trainer through `evaluate` (a metric shipped with the package,
offline), a
user's own `evaluate` metric in its place, and the sparsity figures results files report."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import evaluate
import numpy as np
import pytest
from transformers import EvalPrediction

from hf_trilevel.evaluation.flops import flops_speedup_limit, forward_flops
from hf_trilevel.evaluation.metrics import (
    ACCURACY_METRIC_PATH,
    build_compute_metrics,
    compute_metrics,
    load_accuracy_metric,
    sparsity_metrics,
)

from .helpers import tiny_config

# A user's metric that takes predicted classes, like `evaluate.load("accuracy")` (which needs the Hub).
CLASS_METRIC = """
import datasets
import evaluate
import numpy as np


class ExactMatches(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="", citation="", inputs_description="",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, scale=1.0):
        return {"matches": scale * float(np.sum(np.asarray(predictions) == np.asarray(references)))}
"""


def numpy_reference(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The hand-written NumPy metric that the evaluate one replaced; its numbers are the contract."""
    metrics = {"accuracy": float(np.mean(logits.argmax(axis=-1) == labels))}
    if logits.shape[-1] > 5:
        top_k = np.argpartition(-logits, 4, axis=-1)[:, :5]
        metrics["top5_accuracy"] = float(np.mean((top_k == labels[:, None]).any(axis=-1)))
    return metrics


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


@pytest.mark.parametrize(("examples", "classes", "seed"), [(360, 10, 0), (97, 1000, 1), (33, 6, 2), (50, 3, 3)])
def test_metrics_equal_the_numpy_reference_on_random_logits(examples, classes, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((examples, classes)).astype(np.float32)
    labels = rng.integers(0, classes, examples)
    assert compute_metrics(EvalPrediction(predictions=logits, label_ids=labels)) == numpy_reference(logits, labels)


def test_the_shipped_metric_is_an_evaluate_metric_loaded_from_the_package(tmp_path):
    metric = load_accuracy_metric(cache_dir=str(tmp_path))
    assert isinstance(metric, evaluate.Metric) and metric.name == "top_k_accuracy"
    assert ACCURACY_METRIC_PATH.is_relative_to(Path(__file__).resolve().parents[1] / "hf_trilevel")
    logits, labels = crafted_logits()
    assert metric.compute(predictions=logits, references=labels, k=3) == {"accuracy": 0.5, "top3_accuracy": 0.5}
    assert not list(tmp_path.rglob("*.arrow"))  # predictions stay in memory


def test_build_compute_metrics_passes_predicted_classes_to_a_users_metric(tmp_path):
    (tmp_path / "exact_matches").mkdir()
    (tmp_path / "exact_matches" / "exact_matches.py").write_text(CLASS_METRIC)
    metric = evaluate.load(str(tmp_path / "exact_matches"), keep_in_memory=True, seed=0)
    logits, labels = crafted_logits()
    compute = build_compute_metrics(metric, scale=2.0)
    assert compute(EvalPrediction(predictions=logits, label_ids=labels)) == {"matches": 4.0}


def test_build_compute_metrics_takes_a_combination_of_metrics_of_one_kind(tmp_path):
    combined = evaluate.combine({"first": load_accuracy_metric(), "second": load_accuracy_metric()})
    logits, labels = crafted_logits()
    metrics = build_compute_metrics(combined)(EvalPrediction(predictions=logits, label_ids=labels))
    assert metrics == {"first_accuracy": 0.5, "first_top5_accuracy": 0.75, "second_accuracy": 0.5,
                       "second_top5_accuracy": 0.75}  # fmt: skip


def test_build_compute_metrics_refuses_a_combination_of_logits_and_class_metrics(tmp_path):
    (tmp_path / "exact_matches").mkdir()
    (tmp_path / "exact_matches" / "exact_matches.py").write_text(CLASS_METRIC)
    mixed = evaluate.combine([load_accuracy_metric(), evaluate.load(str(tmp_path / "exact_matches"), seed=0)])
    with pytest.raises(ValueError, match=r"combines modules that take logits \(top_k_accuracy\)"):
        build_compute_metrics(mixed)
    with pytest.raises(ValueError, match="`predictions` must be one of auto, logits, classes"):
        build_compute_metrics(predictions="labels")


def test_the_shipped_metric_works_offline_and_writes_only_under_hf_home(tmp_path):
    script = textwrap.dedent("""
        import json, sys
        import numpy as np
        from transformers import EvalPrediction
        from hf_trilevel.evaluation.metrics import compute_metrics
        logits = np.eye(7, dtype=np.float32)[[0, 1, 2, 3]]
        print(json.dumps(compute_metrics(EvalPrediction(predictions=logits, label_ids=np.array([0, 1, 2, 0])))))
    """)
    work, home = tmp_path / "work", tmp_path / "hf-home"
    work.mkdir()
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "XDG_"))}
    environment.update(HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1", HF_HOME=str(home), PYTHONPATH=os.getcwd())
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=work, env=environment, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert json.loads(completed.stdout.splitlines()[-1]) == {"accuracy": 0.75, "top5_accuracy": 1.0}
    assert not list(work.iterdir())
    written = [path.relative_to(home).parts[0] for path in home.rglob("*") if path.is_file()]
    assert written and set(written) == {"modules"}  # evaluate's copy of the metric script; no metric data


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
