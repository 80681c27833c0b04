"""The example and `hf-trilevel slim` refuse weight folders they cannot use with exit status 2 and one message
(issue 24): a cut-short `model.safetensors` as the model, the teacher, a named or the `latest` checkpoint, or the
folder to slim; a folder whose config does not describe its weights (a slimmed folder that lost its per-layer
sizes), with or without `--ignore_mismatched_sizes`; and a teacher folder that does not exist.

Checks that need no data run with a `--train_dir` that does not exist: the message proves they come first.
"""

import json
import logging

import pytest

from hf_trilevel.cli import main as cli_main
from hf_trilevel.recipe.checks import resolve_resume_checkpoint
from hf_trilevel.weight_sparsity.slimming import slim

from .helpers import assert_usage_error_before_the_data, tiny_model
from .test_example import load_example
from .test_slimming import pruned_model

TINY_MODEL = [
    "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2", "--intermediate_size", "64",
]  # fmt: skip
TEACHER = ["--dense_sparse_keep_rates", "1.0", "0.7", "--distillation", "teacher"]
LOST_SIZES_CAUSE = "the folder was slimmed (its layers have their own numbers of heads and MLP neurons)"
SAVED_SIZES = '"num_attention_heads_per_layer": [1, 1, 2, 1], "intermediate_size_per_layer": [32, 61, 64, 24]'


@pytest.fixture(scope="module")
def example():
    return load_example()


def cut_short(path, keep: float = 0.5):
    """Truncate `path` to `keep` of its bytes, as an interrupted copy or download leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.fixture
def cut_model(tmp_path):
    tiny_model(num_labels=10).save_pretrained(tmp_path / "model")
    return cut_short(tmp_path / "model" / "model.safetensors")


@pytest.fixture
def lost_sizes(tmp_path):
    """A slimmed folder whose config.json lost its per-layer sizes (as an edit by hand, or an old tool, leaves it)."""
    folder = tmp_path / "slimmed"
    slim(pruned_model(num_labels=10)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    del config["num_attention_heads_per_layer"], config["intermediate_size_per_layer"]
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def usage_error(example, capsys, *argv: str) -> str:
    """The stderr of `main(argv)` (the digits, a few examples), which must stop with a usage error."""
    with pytest.raises(SystemExit) as raised:
        example.main([*argv, "--max_train_samples", "16", "--max_eval_samples", "16", "--disable_tqdm", "True"])
    assert raised.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    return error


# --- A. a cut-short model.safetensors ----------------------------------------------------------------------------


def test_a_cut_short_model_folder_is_named_before_the_data_loads(example, capsys, tmp_path, cut_model):
    message = f"`model_name_or_path` '{cut_model.parent}': {cut_model} is cut short"
    argv = ["--model_name_or_path", str(cut_model.parent)]
    assert_usage_error_before_the_data(example, argv, message, tmp_path, capsys)


def test_a_cut_short_teacher_is_named_with_its_file(example, capsys, tmp_path, cut_model):
    argv = [*TEACHER, "--teacher_model_name_or_path", str(cut_model.parent), "--output_dir", str(tmp_path / "out")]
    error = usage_error(example, capsys, *argv, *TINY_MODEL)
    assert f"`teacher_model_name_or_path` '{cut_model.parent}': {cut_model} is cut short" in error


def trainer_checkpoint(output_dir, step: int):
    """A checkpoint folder as far as `checkpoint_problem` reads it: weights, a technique state, the Trainer state."""
    folder = output_dir / f"checkpoint-{step}"
    tiny_model().save_pretrained(folder)
    (folder / "weight_sparsity.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def test_a_named_checkpoint_with_cut_short_weights_is_refused_before_the_data_loads(example, capsys, tmp_path):
    trainer_checkpoint(tmp_path / "out", 2)
    weights = cut_short(trainer_checkpoint(tmp_path / "out", 4) / "model.safetensors")
    argv = ["--resume_from_checkpoint", str(weights.parent)]
    message = f"`resume_from_checkpoint` '{weights.parent}' cannot be resumed: {weights} is cut short"
    assert_usage_error_before_the_data(example, argv, message, tmp_path, capsys)


def test_latest_falls_back_past_a_checkpoint_whose_technique_state_is_cut_short(tmp_path, caplog):
    trainer_checkpoint(tmp_path, 2)
    state = cut_short(trainer_checkpoint(tmp_path, 4) / "weight_sparsity.safetensors", keep=0.9)
    with caplog.at_level(logging.WARNING, logger="hf_trilevel.training.checkpoints"):
        assert resolve_resume_checkpoint("latest", str(tmp_path)) == str(tmp_path / "checkpoint-2")
    assert f"not resuming from checkpoint-4: {state} is cut short" in caplog.text


# --- B and C. weights that do not fit the config -----------------------------------------------------------------


def test_a_folder_whose_config_does_not_describe_its_weights_is_refused_before_the_data_loads(
    example, capsys, tmp_path, lost_sizes
):
    message = (
        f"`model_name_or_path` '{lost_sizes}': its weights do not fit the model its config.json describes: "
        "'vit.encoder.layer.0.attention.attention.query.weight' is [16, 32] in the folder but [32, 32] in the model "
        "(its 'vit.layers.0.attention.q_proj.weight'"
    )
    assert_usage_error_before_the_data(example, ["--model_name_or_path", str(lost_sizes)], message, tmp_path, capsys)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        example.main(["--model_name_or_path", str(lost_sizes), "--output_dir", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert LOST_SIZES_CAUSE in error and SAVED_SIZES in error and "RuntimeError" not in error


def test_ignore_mismatched_sizes_refuses_to_reinitialise_more_than_the_classifier(
    example, capsys, tmp_path, lost_sizes
):
    argv = ["--model_name_or_path", str(lost_sizes), "--ignore_mismatched_sizes"]
    message = (
        f"`ignore_mismatched_sizes` replaces only the classifier, but other weights of `model_name_or_path` "
        f"'{lost_sizes}' do not fit the model its config.json describes: "
        "'vit.encoder.layer.0.attention.attention.query.weight' is [16, 32] in the folder but [32, 32] in the model "
        "(its 'vit.layers.0.attention.q_proj.weight'; and 29 more)"
    )
    assert_usage_error_before_the_data(example, argv, message, tmp_path, capsys)


def test_ignore_mismatched_sizes_still_trains_a_new_classifier(example, tmp_path):
    tiny_model(num_labels=5, image_size=8, patch_size=4).save_pretrained(tmp_path / "five")
    argv = ["--model_name_or_path", str(tmp_path / "five"), "--ignore_mismatched_sizes", "--max_steps", "1"]
    limits = ["--max_train_samples", "16", "--max_eval_samples", "16", "--disable_tqdm", "True"]
    trainer, metrics = example.main([*argv, *limits, "--output_dir", str(tmp_path / "out")])
    assert "eval_accuracy" in metrics and trainer.model.config.num_labels == 10


# --- D. messages ---------------------------------------------------------------------------------------------------


def test_a_missing_teacher_folder_is_named_as_a_folder(example, capsys, tmp_path):
    missing = tmp_path / "runs" / "teacher"
    argv = [*TEACHER, "--teacher_model_name_or_path", str(missing), "--output_dir", str(tmp_path / "out")]
    error = usage_error(example, capsys, *argv, *TINY_MODEL)
    assert f"`teacher_model_name_or_path` '{missing}': no such folder" in error and "Repo id" not in error


def test_slim_output_dir_without_weight_sparsity_names_structured(example, capsys, tmp_path):
    argv = ["--slim_output_dir", str(tmp_path / "slim")]
    assert_usage_error_before_the_data(example, argv, "pass `weight_sparsity` structured too.", tmp_path, capsys)


# --- hf-trilevel slim ----------------------------------------------------------------------------------------------


def slim_error(capsys, in_dir, out_dir) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as raised:
        cli_main(["slim", str(in_dir), str(out_dir)])
    assert raised.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error and not out_dir.exists()
    return error.splitlines()[-1]


def test_slim_names_a_cut_short_in_dir_file(capsys, tmp_path):
    pruned_model().save_pretrained(tmp_path / "pruned")
    weights = cut_short(tmp_path / "pruned" / "model.safetensors")
    error = slim_error(capsys, tmp_path / "pruned", tmp_path / "out")
    assert f"IN_DIR {tmp_path / 'pruned'}: {weights} is cut short" in error


def test_slim_names_the_weight_that_does_not_fit_in_dirs_config(capsys, tmp_path, lost_sizes):
    error = slim_error(capsys, lost_sizes, tmp_path / "out")
    assert f"IN_DIR {lost_sizes}: its weights do not fit the model its config.json describes" in error
    assert "'vit.encoder.layer.0.attention.attention.query.weight' is [16, 32] in the folder but [32, 32]" in error
    assert LOST_SIZES_CAUSE in error and SAVED_SIZES in error


def test_slim_says_a_slimmed_folder_is_already_slimmed(capsys, tmp_path):
    slim(pruned_model()).save_pretrained(tmp_path / "slimmed")
    error = slim_error(capsys, tmp_path / "slimmed", tmp_path / "out")
    assert "is already slimmed (its config has per-layer sizes" in error and "nothing to slim" in error
