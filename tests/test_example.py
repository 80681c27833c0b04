"""The README's main command, `examples/run_image_classification.py` on the bundled digits, and the digits
(`hf_trilevel.image_data.digits`). The argument groups' own checks and builds: tests/test_arguments.py.

The end-to-end test trains for one epoch on 64 digits, so it checks the plumbing (data -> processor -> Trainer ->
saved remote-code folder -> results files -> pipeline in a clean process), not the accuracy; the full recipe's
accuracy is reported in the README. Other data sets, checkpoints and bad input: tests/test_example_workflow.py.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import pipeline

from hf_trilevel import TriLevelViTForImageClassification
from hf_trilevel.evaluation.metrics import sparsity_metrics
from hf_trilevel.image_data import DIGIT_NAMES, load_digits_dataset
from hf_trilevel.modeling.token_reduction import token_schedule
from hf_trilevel.recipe.checks import check_arguments
from hf_trilevel.recipe.parsing import build_parser, parse_flags_or_json, resolve_defaults
from hf_trilevel.training.arguments import TechniqueContext

from .helpers import run_without_hf_trilevel
from .test_checkpoints import LOAD_CHECKPOINT_SCRIPT

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "examples" / "run_image_classification.py"
NUM_DIGITS = 1797


def run_example(*args: str, **env: str) -> subprocess.CompletedProcess:
    """The example in a subprocess, offline; `env` adds environment variables (e.g. HF_HOME for a private cache)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def load_example() -> ModuleType:
    """The example as a module, for calling its functions in-process (fast checks that stop before training)."""
    spec = importlib.util.spec_from_file_location("run_image_classification", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checked_arguments(*argv: str) -> tuple:
    """`argv` parsed and checked as the example's `main` does before it loads any data: the argument groups
    `(model, data, *techniques, run, training)`."""
    parsed = parse_flags_or_json(build_parser(), list(argv), resolve_defaults)
    model_args, _, *technique_args, run_args, training_args = parsed
    check_arguments(model_args, run_args, training_args, technique_args)
    return parsed


def techniques_from_flags(*argv: str, label_names=DIGIT_NAMES, num_train_examples: int = 64) -> tuple:
    """The model config and the techniques the example builds from `argv` (as its `main` does, for
    `num_train_examples` training examples of `label_names`), without loading any data."""
    model_args, _, *technique_args, _, training_args = checked_arguments(*argv)
    config = model_args.build_config(list(label_names))
    context = TechniqueContext(config, training_args, num_train_examples, technique_args, model_args.hub_kwargs())
    built = [args.build(context) for args in technique_args]
    return config, [technique for technique in built if technique is not None]


def load_in_clean_process(folder: Path, work: Path, pixel_values: torch.Tensor) -> tuple[dict, dict]:
    """Load `folder` with tests/test_checkpoints.py's clean-room script: another directory, `python -I`, the package
    import blocked, offline. Returns the script's report and its outputs (logits for `pixel_values`)."""
    work.mkdir()
    save_file({"pixel_values": pixel_values}, work / "inputs.safetensors")
    Image.fromarray((torch.rand(20, 24, 3) * 255).byte().numpy()).save(work / "digit.png")
    report = run_without_hf_trilevel(LOAD_CHECKPOINT_SCRIPT, folder, work, work)
    return report, load_file(work / "outputs.safetensors")


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset()


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("digits-trilevel")
    result = run_example(
        "--num_train_epochs", "1",
        "--max_train_samples", "64",
        "--max_eval_samples", "32",
        "--output_dir", str(output_dir),
        "--disable_tqdm", "True",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "validation accuracy: " in result.stdout
    assert "augmentation affine" in result.stdout  # digits keep their tuned augmentation: no flips, no crops
    return output_dir


# --- hf_trilevel.image_data.digits ------------------------------------------------------------------------------------


def test_digits_splits_partition_all_1797_examples(digits):
    assert set(digits) == {"train", "validation"}
    assert len(digits["train"]) + len(digits["validation"]) == NUM_DIGITS
    assert len(digits["validation"]) == pytest.approx(0.2 * NUM_DIGITS, abs=1)


def test_digits_split_is_stratified(digits):
    train_counts = np.bincount(digits["train"]["label"], minlength=10)
    validation_counts = np.bincount(digits["validation"]["label"], minlength=10)
    expected = 0.2 * (train_counts + validation_counts)
    assert np.all(np.abs(validation_counts - expected) <= 1)


def test_digits_are_rgb_images_of_the_requested_size_with_digit_labels(digits):
    example = digits["train"][0]
    assert example["image"].mode == "RGB"
    assert example["image"].size == (32, 32)
    assert digits["train"].features["label"].names == DIGIT_NAMES
    assert load_digits_dataset(image_size=16)["validation"][0]["image"].size == (16, 16)


def test_digits_images_are_upscaled_smoothly_not_as_blocks(digits):
    pixels = np.asarray(digits["train"][0]["image"].convert("L"))
    assert len(np.unique(pixels)) > 17  # nearest-neighbour upscaling would keep the 17 ink levels at most


def test_digits_split_is_deterministic_for_a_seed():
    first, second = load_digits_dataset(seed=3), load_digits_dataset(seed=3)
    for split in ("train", "validation"):
        assert first[split]["label"] == second[split]["label"]
        assert np.array_equal(np.asarray(first[split][5]["image"]), np.asarray(second[split][5]["image"]))
    assert load_digits_dataset(seed=4)["validation"]["label"] != first["validation"]["label"]


@pytest.mark.parametrize("validation_fraction", [0.0, 1.0, -0.1, 0.001, float("nan"), "0.2"])
def test_digits_reject_a_validation_fraction_outside_the_allowed_range(validation_fraction):
    with pytest.raises(ValueError, match="validation_fraction"):
        load_digits_dataset(validation_fraction=validation_fraction)


@pytest.mark.parametrize("image_size", [4, 2048, 32.0])
def test_digits_reject_a_bad_image_size(image_size):
    with pytest.raises(ValueError, match="image_size"):
        load_digits_dataset(image_size=image_size)


def test_digits_reject_a_negative_seed():
    with pytest.raises(ValueError, match="seed"):
        load_digits_dataset(seed=-1)


# --- examples/run_image_classification.py ---------------------------------------------------------------------------


def test_example_saves_a_self_contained_model_folder(trained_folder):
    for name in ("model.safetensors", "modeling_trilevel_vit.py", "configuration_trilevel_vit.py"):
        assert (trained_folder / name).is_file(), name
    config = json.loads((trained_folder / "config.json").read_text())
    assert "AutoModelForImageClassification" in config["auto_map"]
    assert config["id2label"] == {str(index): name for index, name in enumerate(DIGIT_NAMES)}
    assert config["token_keep_rate"] < 1.0 and config["attention_keep_rate"] < 1.0
    processor = json.loads((trained_folder / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": config["image_size"], "width": config["image_size"]}


def test_example_folder_holds_no_pickles(trained_folder):
    assert not [path.name for path in trained_folder.iterdir() if path.suffix in {".bin", ".pt", ".pth", ".pkl"}]
    assert json.loads((trained_folder / "training_args.json").read_text())["num_train_epochs"] == 1


def test_example_writes_validation_accuracy(trained_folder):
    for name in ("eval_results.json", "all_results.json"):
        results = json.loads((trained_folder / name).read_text())
        assert 0.0 <= results["eval_accuracy"] <= 1.0
        assert 0.0 <= results["eval_top5_accuracy"] <= 1.0  # 10 classes


def test_example_writes_training_time_examples_seen_and_realised_sparsity(trained_folder):
    train = json.loads((trained_folder / "train_results.json").read_text())
    assert train["train_runtime"] > 0 and train["train_samples"] == 64
    assert train["examples_seen"] == 64 and train["example_fraction_seen"] == 1.0
    evaluation = json.loads((trained_folder / "eval_results.json").read_text())
    model = TriLevelViTForImageClassification.from_pretrained(trained_folder)
    expected = sparsity_metrics(model.config)
    assert {key: evaluation[key] for key in expected} == pytest.approx(expected)
    assert evaluation["flops_speedup_limit"] > 1.2 and 0 < evaluation["token_fraction_kept"] < 1
    assert json.loads((trained_folder / "all_results.json").read_text()) == {**train, **evaluation}


def test_example_writes_the_kept_tokens_per_pruning_layer(trained_folder):
    evaluation = json.loads((trained_folder / "eval_results.json").read_text())
    config = TriLevelViTForImageClassification.from_pretrained(trained_folder).config  # class_attention, keep 0.7
    kept = [evaluation[f"eval_kept_tokens_layer_{layer}"] for layer in config.token_prune_layers]
    assert kept == token_schedule(64, 0.7, 3) == [45, 32, 23]  # every image keeps the schedule
    assert evaluation["eval_measured_gflops_per_image"] == pytest.approx(evaluation["eval_gflops_per_image"])


def test_example_writes_a_model_card(trained_folder):
    assert "image-classification" in (trained_folder / "README.md").read_text()


def test_example_folder_classifies_a_digit_through_the_pipeline(trained_folder, digits):
    classifier = pipeline("image-classification", model=str(trained_folder), trust_remote_code=True)
    predictions = classifier(digits["validation"][0]["image"], top_k=3)
    assert len(predictions) == 3
    assert all(prediction["label"] in DIGIT_NAMES for prediction in predictions)


def test_example_folder_loads_in_a_clean_process_without_the_package(trained_folder, tmp_path):
    pixel_values = torch.randn(2, 3, 32, 32)
    report, outputs = load_in_clean_process(trained_folder, tmp_path / "elsewhere", pixel_values)
    assert report["head_module"].startswith("transformers_modules.") and report["loaded_modules"] == []
    assert report["labels"] and set(report["labels"]) <= set(DIGIT_NAMES)
    model = TriLevelViTForImageClassification.from_pretrained(trained_folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(outputs["logits"], model(pixel_values).logits, rtol=0, atol=1e-6)


def test_example_rejects_a_bad_keep_rate_before_training_with_a_usage_error(tmp_path):
    result = run_example("--token_keep_rate", "1.5", "--output_dir", str(tmp_path))
    assert result.returncode == 2
    assert "error: `token_keep_rate` must be in (0, 1]" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("policy", "expected_kept"),
    [("forgetting", [96, 96, 96, 96]), ("loss", [120, 90, 90, 120]), ("random", [96, 96, 96, 96])],
)
def test_example_prunes_examples_and_warms_up_keep_rates(tmp_path, policy, expected_kept):
    result = run_example(
        "--example_pruning", policy,
        "--keep_rate_schedule",
        "--keep_rate_warmup_fraction", "0.25",
        "--keep_rate_decay_fraction", "0.5",
        "--num_train_epochs", "4",
        "--max_train_samples", "120",
        "--max_eval_samples", "32",
        "--per_device_train_batch_size", "30",
        "--logging_steps", "1",
        "--output_dir", str(tmp_path),
        "--disable_tqdm", "True",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    kept = [int(line.split("'example_pruning/kept': ")[1].split(",")[0]) for line in result.stdout.splitlines()
            if "'example_pruning/kept'" in line]  # fmt: skip
    assert kept == expected_kept
    train_results = json.loads((tmp_path / "train_results.json").read_text())
    assert train_results["examples_seen"] == sum(expected_kept)
    assert "'token_keep_rate': '1'" in result.stdout and "'token_keep_rate': '0.7'" in result.stdout


@pytest.mark.parametrize("policy", ["forgetting", "random"])
def test_example_rejects_bad_pruning_settings_before_training(tmp_path, capsys, policy):
    example = load_example()
    with pytest.raises(SystemExit) as raised:
        example.main(["--example_pruning", policy, "--keep_fraction", "0", "--output_dir", str(tmp_path)])
    assert raised.value.code == 2
    assert "keep_fraction" in capsys.readouterr().err
    assert not (tmp_path / "model.safetensors").exists()


def test_example_resume_true_without_a_checkpoint_stops_before_training(tmp_path, capsys):
    example = load_example()
    with pytest.raises(SystemExit) as raised:
        example.main(["--resume_from_checkpoint", "True", "--output_dir", str(tmp_path)])
    assert raised.value.code == 2
    assert "`resume_from_checkpoint` 'True' asks for the newest checkpoint" in capsys.readouterr().err


def test_example_trains_on_the_redundant_digits_with_the_random_policy(tmp_path):
    result = run_example(
        "--dataset_name", "digits-redundant",
        "--example_pruning", "random", "--keep_fraction", "0.5",
        "--num_train_epochs", "2",
        "--max_train_samples", "200",
        "--max_eval_samples", "32",
        "--output_dir", str(tmp_path),
        "--disable_tqdm", "True",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "200 train / 32 validation images" in result.stdout + result.stderr
    assert json.loads((tmp_path / "train_results.json").read_text())["examples_seen"] == 2 * 100
    card = (tmp_path / "README.md").read_text()
    assert "redundant variant" in card and "the `random` policy (keep_fraction=0.5)" in card
