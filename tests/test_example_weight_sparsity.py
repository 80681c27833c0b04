"""Weight sparsity in `examples/run_image_classification.py`: the flags build `WeightSparsity`, bad values
stop before any data loads or any step (exit 2, naming the flag), and short end-to-end runs save a sparse model, a
slimmed one with the same logits, and the density in the results."""

import json

import pytest
import torch

from hf_trilevel import TriLevelViTForImageClassification, WeightSparsity
from hf_trilevel.weight_sparsity.masks import GROUP, as_matrix, masked_weights

from .helpers import assert_usage_error_before_the_data, images
from .test_example import load_example, techniques_from_flags
from .test_example_workflow import TINY_MODEL


@pytest.fixture(scope="module")
def example():
    return load_example()


def technique_of(tmp_path, *argv) -> WeightSparsity:
    _, techniques = techniques_from_flags(*TINY_MODEL, "--output_dir", str(tmp_path / "out"), *argv)
    (technique,) = [t for t in techniques if isinstance(t, WeightSparsity)]
    return technique


def test_the_flags_build_the_technique(tmp_path):
    unstructured = technique_of(tmp_path, "--weight_sparsity", "unstructured", "--weight_density", "0.3",
                                "--sparse_update_interval", "2", "--sparse_end_fraction", "0.5")  # fmt: skip
    assert unstructured.settings() == {
        "sparsity": "unstructured", "pattern": "unstructured", "density": 0.3, "initial_mask": "random",
        "update_interval": 2, "one_shot": False, "end_fraction": 0.5, "death_rate": 0.5, "final_death_rate": 0.005,
    }  # fmt: skip
    structured = technique_of(tmp_path, "--weight_sparsity", "structured", "--neuron_density", "0.25",
                              "--sparse_update_interval", "2", "--sparse_one_shot", "True")  # fmt: skip
    assert (structured.sparsity, structured.head_density, structured.neuron_density) == ("structured", 0.5, 0.25)
    assert structured.one_shot
    assert technique_of(tmp_path, "--weight_sparsity", "unstructured", "--sparsity_pattern", "2:4",
                        "--sparse_update_interval", "2").pattern == "2:4"  # fmt: skip


STRUCTURED = ["--weight_sparsity", "structured"]
UNSTRUCTURED = ["--weight_sparsity", "unstructured"]
BAD_INPUT = {
    "a density without a mode": (["--weight_density", "0.5"], "`weight_density` is a setting of weight sparsity"),
    "head density when unstructured": (
        [*UNSTRUCTURED, "--head_density", "0.5"],
        "`head_density` is a setting of `weight_sparsity` structured, not unstructured",
    ),
    "2:4 when structured": (
        [*STRUCTURED, "--sparsity_pattern", "2:4"],
        "`sparsity_pattern` is a setting of `weight_sparsity` unstructured, not structured",
    ),
    "slimming unstructured": ([*UNSTRUCTURED, "--slim_output_dir", "x"], "`slim_output_dir` is a setting of"),
    "density 0": ([*UNSTRUCTURED, "--weight_density", "0"], "`weight_density` must be in (0, 1], got 0.0"),
    "neuron density above 1": ([*STRUCTURED, "--neuron_density", "1.5"], "`neuron_density` must be in (0, 1]"),
    "2:4 at another density": (
        [*UNSTRUCTURED, "--sparsity_pattern", "2:4", "--weight_density", "0.3"],
        "`weight_density` must be 0.5 (or unset) with `sparsity_pattern` 2:4",
    ),
    "interval 0": ([*UNSTRUCTURED, "--sparse_update_interval", "0"], "`sparse_update_interval` must be an integer"),
    "end fraction 0": ([*UNSTRUCTURED, "--sparse_end_fraction", "0"], "`sparse_end_fraction` must be in (0, 1]"),
    "nothing to slim": (
        [*STRUCTURED, "--head_density", "1", "--neuron_density", "1", "--slim_output_dir", "x"],
        "`slim_output_dir` would have nothing to remove",
    ),
    "no training": ([*STRUCTURED, "--do_train", "False"], "needs `do_train`; to slim a saved structured model"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_weight_sparsity_input_stops_before_the_data_loads(case, example, tmp_path, capsys):
    assert_usage_error_before_the_data(example, *BAD_INPUT[case], tmp_path, capsys)


def test_the_slim_folder_must_differ_from_the_output_and_not_hold_files(example, tmp_path, capsys):
    argv = [*STRUCTURED, "--slim_output_dir", str(tmp_path / "out")]  # the helper's --output_dir
    assert_usage_error_before_the_data(example, argv, "`slim_output_dir` must differ from `output_dir`", tmp_path,
                                       capsys)  # fmt: skip
    (tmp_path / "slim").mkdir()
    (tmp_path / "slim" / "kept.txt").write_text("an earlier run's file")
    argv = [*STRUCTURED, "--slim_output_dir", str(tmp_path / "slim")]
    assert_usage_error_before_the_data(example, argv, "already holds files; pass `overwrite_output_dir`", tmp_path,
                                       capsys)  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*STRUCTURED, "--head_density", "0.2"], "`head_density` 0.2 leaves no unit of the 2 in layer 0"),
        ([*UNSTRUCTURED], "`sparse_update_interval` 100 is longer than the part of the run that updates masks"),
    ],
)
def test_settings_the_model_or_the_run_cannot_take_stop_before_training(example, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as raised:
        example.main([*TINY_MODEL, "--max_train_samples", "64", "--num_train_epochs", "1",
                      "--output_dir", str(tmp_path / "out"), *argv])  # fmt: skip
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def short_run(example, output_dir, *argv) -> dict:
    _, metrics = example.main(
        [
            *TINY_MODEL, "--num_train_epochs", "2", "--max_train_samples", "64", "--max_eval_samples", "32",
            "--per_device_train_batch_size", "16", "--sparse_update_interval", "2", "--logging_steps", "2",
            "--output_dir", str(output_dir), "--disable_tqdm", "True", *argv,
        ]
    )  # fmt: skip
    return metrics


def test_a_structured_run_saves_a_slimmed_model_with_the_same_logits(example, tmp_path, capsys):
    metrics = short_run(example, tmp_path / "out", *STRUCTURED, "--neuron_density", "0.25",
                        "--slim_output_dir", str(tmp_path / "slim"))  # fmt: skip
    assert 0 < metrics["weight_density"] < 0.5  # half the heads, a quarter of the neurons; patch/classifier dense
    masked = TriLevelViTForImageClassification.from_pretrained(tmp_path / "out")
    slimmed = TriLevelViTForImageClassification.from_pretrained(tmp_path / "slim")
    assert slimmed.config.num_attention_heads_per_layer == [1, 1]
    assert slimmed.config.intermediate_size_per_layer == [16, 16]
    with torch.no_grad():
        pixels = images(4, size=16)
        torch.testing.assert_close(slimmed(pixels).logits, masked(pixels).logits, rtol=1e-5, atol=1e-5)
    assert (tmp_path / "slim" / "preprocessor_config.json").is_file()
    assert (
        json.loads((tmp_path / "out" / "eval_results.json").read_text())["weight_density"] == metrics["weight_density"]
    )
    assert "weight_sparsity/density" in capsys.readouterr().out
    card = (tmp_path / "slim" / "README.md").read_text()  # the run's accuracy: the slimmed logits are the same
    assert f"{100 * metrics['eval_accuracy']:.2f}%" in card and "scikit-learn digits" in card


def test_a_2_4_run_saves_dense_shaped_weights_with_two_of_every_four_zero(example, tmp_path):
    short_run(example, tmp_path, *UNSTRUCTURED, "--sparsity_pattern", "2:4")
    model = TriLevelViTForImageClassification.from_pretrained(tmp_path)
    for name, weight in masked_weights(model).items():
        groups = as_matrix(weight).reshape(weight.shape[0], -1, GROUP)
        assert (groups.ne(0).sum(-1) <= 2).all(), name
        assert groups.ne(0).sum() >= 0.45 * weight.numel(), name  # half kept (a regrown weight may still be 0)
