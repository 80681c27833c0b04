"""Dense/sparse training and distillation in `examples/run_image_classification.py`: the flags build
`DenseSparseTraining` (with the warm-up and a teacher), bad values stop before any data loads (exit 2, naming the
flag), and a short end-to-end run records the trained rates and writes the operating-point table into the card.
Also `examples/evaluate_keep_rates.py`, which scores saved folders at several keep rates."""

import importlib.util
import json

import pytest
import torch
from transformers import AutoImageProcessor, ViTForImageClassification

from hf_trilevel import DenseSparseTraining, KeepRateSchedule, TriLevelViTForImageClassification
from hf_trilevel.cli.visualize.inputs import preprocess
from hf_trilevel.image_data import load_digits_dataset
from hf_trilevel.recipe.model import build_image_processor
from hf_trilevel.token_training.operating_points import OPERATING_POINTS_FILE

from .helpers import assert_usage_error_before_the_data, tiny_model, tiny_vit
from .test_example import load_example, techniques_from_flags
from .test_example_workflow import TINY_MODEL

RATES = ["--dense_sparse_keep_rates", "1.0", "0.7", "0.5"]


@pytest.fixture(scope="module")
def example():
    return load_example()


def techniques_of(tmp_path, *argv) -> list:
    _, techniques = techniques_from_flags(*TINY_MODEL, "--output_dir", str(tmp_path / "out"), *argv)
    return techniques


def technique_of(techniques) -> DenseSparseTraining:
    (technique,) = [technique for technique in techniques if isinstance(technique, DenseSparseTraining)]
    return technique


def run_until_training(example, tmp_path, *argv) -> None:
    """The example with `argv` on a few digits, which must stop before training with a usage error."""
    example.main([*TINY_MODEL, "--max_train_samples", "16", "--output_dir", str(tmp_path / "out"), *argv])


def test_the_flags_build_the_technique_with_self_distillation_by_default(tmp_path):
    techniques = techniques_of(tmp_path, *RATES, "--distillation_weight", "0.5", "--distillation_temperature", "2")
    technique = technique_of(techniques)
    assert technique.keep_rates == [1.0, 0.7, 0.5] and technique.distillation == "self"
    assert (technique.distillation_weight, technique.distillation_temperature) == (0.5, 2.0)
    assert technique.importance_weight == 0.0 and technique.schedule == "dense_and_one"


def test_the_keep_rate_warm_up_goes_to_the_technique_not_its_own_callback(tmp_path):
    techniques = techniques_of(tmp_path, *RATES, "--keep_rate_schedule", "--keep_rate_warmup_fraction", "0.1")
    assert not any(isinstance(technique, KeepRateSchedule) for technique in techniques)
    technique = technique_of(techniques)
    assert technique.warmup_fraction == 0.1 and technique.decay_fraction == pytest.approx(1 / 3)


def test_a_teacher_folder_is_loaded_frozen(tmp_path):
    teacher = tiny_vit(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       num_labels=10, id2label={i: str(i) for i in range(10)})  # fmt: skip
    teacher.save_pretrained(tmp_path / "teacher")
    argv = [*RATES, "--distillation", "teacher", "--teacher_model_name_or_path", str(tmp_path / "teacher")]
    loaded = technique_of(techniques_of(tmp_path, *argv)).teacher
    assert loaded is not None and not loaded.training and not any(p.requires_grad for p in loaded.parameters())


BAD_INPUT = {
    "one rate": (RATES[:2], "`dense_sparse_keep_rates` must hold at least two keep rates"),
    "rate above 1": ([*RATES, "1.5"], "`dense_sparse_keep_rates` must be in (0, 1] (1.0 keeps everything), got 1.5"),
    "rate 0": ([RATES[0], "1.0", "0"], "`dense_sparse_keep_rates` must be in (0, 1]"),
    "teacher without a path": ([*RATES, "--distillation", "teacher"], "needs `teacher_model_name_or_path`"),
    "a path without teacher": ([*RATES, "--teacher_model_name_or_path", "x"], "pass `distillation` teacher"),
    "distillation without rates": (["--distillation", "self"], "pass `dense_sparse_keep_rates` too"),
    "a weight without rates": (["--distillation_weight", "2"], "`distillation_weight` is a setting of dense/sparse"),
    "temperature 0": ([*RATES, "--distillation_temperature", "0"], "`distillation_temperature` must be in (0, inf)"),
    "negative weight": ([*RATES, "--distillation_weight", "-1"], "`distillation_weight` must be in [0, inf)"),
    "negative importance weight": (
        [*RATES, "--token_importance_distillation_weight", "-1"],
        "`token_importance_distillation_weight` must be",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_dense_sparse_input_stops_before_the_data_loads(case, example, tmp_path, capsys):
    assert_usage_error_before_the_data(example, *BAD_INPUT[case], tmp_path, capsys)


def test_rates_that_leave_the_models_own_rate_untrained_are_refused_before_training(example, tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:  # from scratch the model's own rate is 0.7
        run_until_training(example, tmp_path, RATES[0], "1.0", "0.5")
    assert raised.value.code == 2
    assert "`token_keep_rate` (0.7, its default operating point" in capsys.readouterr().err


def test_a_teacher_with_other_classes_is_refused_before_training(example, tmp_path, capsys):
    teacher = tiny_vit(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       num_labels=10, id2label={i: f"class {i}" for i in range(10)})  # fmt: skip
    teacher.save_pretrained(tmp_path / "teacher")
    argv = [*RATES, "--distillation", "teacher", "--teacher_model_name_or_path", str(tmp_path / "teacher")]
    with pytest.raises(SystemExit) as raised:
        run_until_training(example, tmp_path, *argv)
    assert raised.value.code == 2
    assert "has classes ['class 0', " in capsys.readouterr().err


def test_a_dense_sparse_run_records_its_rates_and_writes_the_operating_point_table(example, tmp_path, capsys):
    example.main(
        [
            *TINY_MODEL, *RATES, "--token_importance_distillation_weight", "0.5",
            "--num_train_epochs", "1", "--max_train_samples", "32", "--max_eval_samples", "32",
            "--per_device_train_batch_size", "16", "--logging_steps", "1",
            "--output_dir", str(tmp_path), "--disable_tqdm", "True",
        ]
    )  # fmt: skip
    stdout = capsys.readouterr().out
    assert "'loss/sparse_task'" in stdout and "'loss/importance_distillation'" in stdout
    assert TriLevelViTForImageClassification.from_pretrained(tmp_path).config.dense_sparse_keep_rates == [1.0, 0.7, 0.5]
    report = json.loads((tmp_path / OPERATING_POINTS_FILE).read_text())
    points = [(p["token_keep_rate"], p["attention_keep_rate"]) for p in report["points"]]
    assert points == [(1.0, 1.0), (0.7, 0.5), (0.5, 0.5)] and report["num_examples"] == 32
    card = (tmp_path / "README.md").read_text()
    assert "## Operating points" in card and "| 0.7 | 0.5 |" in card


def test_evaluate_keep_rates_scores_keep_one_as_transformers_vit_does(tmp_path):
    model = tiny_model(image_size=16, patch_size=4, num_labels=10, token_keep_rate=0.5, attention_keep_rate=0.5)
    model.save_pretrained(tmp_path / "model")
    processor, _ = build_image_processor(model.config)
    processor.save_pretrained(tmp_path / "model")
    spec = importlib.util.spec_from_file_location("evaluate_keep_rates", "examples/evaluate_keep_rates.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    results = script.main([str(tmp_path / "model"), "--keep-rates", "1.0", "0.5", "--json", str(tmp_path / "a.json")])
    assert json.loads((tmp_path / "a.json").read_text()) == results
    validation = load_digits_dataset(16)["validation"]
    vit = ViTForImageClassification.from_pretrained(tmp_path / "model").eval()
    pixels = preprocess(AutoImageProcessor.from_pretrained(tmp_path / "model"), list(validation["image"]), vit.config)
    with torch.no_grad():
        dense = (vit(pixels).logits.argmax(-1) == torch.tensor(list(validation["label"]))).float().mean().item()
    assert results[str(tmp_path / "model")]["1"] == pytest.approx(dense, abs=1e-6)
    assert set(results[str(tmp_path / "model")]) == {"1", "0.5"}
