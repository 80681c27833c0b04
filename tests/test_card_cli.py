"""`hf-trilevel card FOLDER`: the card of a saved folder through the command, and bad input as a usage error."""

import json
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard

from hf_trilevel.cli import main
from hf_trilevel.evaluation.formatting import format_duration, format_flops

from .helpers import tiny_model


@pytest.fixture
def saved_folder(tmp_path):
    """A saved TriLevel folder with the result and argument files `TriLevelTrainer` leaves behind."""
    folder = tmp_path / "run"
    tiny_model(token_keep_rate=0.5).save_pretrained(folder)
    (folder / "eval_results.json").write_text(json.dumps({"eval_accuracy": 0.5, "epoch": 2.0}))
    (folder / "train_results.json").write_text(json.dumps({"train_runtime": 300.0, "epoch": 2.0}))
    (folder / "training_args.json").write_text(json.dumps({"num_train_epochs": 2, "learning_rate": 0.001}))
    return folder


def test_card_writes_readme_into_the_folder_from_its_files(saved_folder, capsys):
    assert main(["card", str(saved_folder), "--dataset", "tester/digits", "--dataset-name", "Digits"]) == 0
    card = ModelCard.load(saved_folder / "README.md")
    assert f"wrote {saved_folder / 'README.md'}" in capsys.readouterr().out
    assert card.data.eval_results[0].metric_value == 0.5
    assert card.data.to_dict()["datasets"] == ["tester/digits"]
    assert card.data.to_dict()["model-index"][0]["name"] == "run"  # the folder's name
    assert "| training time | 5.0 min |" in card.text
    assert "| epochs | 2 |" in card.text and "| peak learning rate | 0.001 |" in card.text
    assert "| `token_keep_rate` | 0.5 |" in card.text
    assert "the `validation` split of Digits" in card.text


def test_card_of_a_merging_folder_describes_merging_and_how_to_change_r_under_its_model_id(tmp_path):
    folder = tmp_path / "merging"
    tiny_model(token_merge_r=4).save_pretrained(folder)
    (folder / "eval_results.json").write_text(json.dumps({"eval_accuracy": 0.5}))
    assert main(["card", str(folder), "--model-id", "you/merging"]) == 0
    card = ModelCard.load(folder / "README.md")
    assert "| `token_merge_r` | 4 in every layer |" in card.text and "token-merging" in card.data.tags
    assert 'from_pretrained("you/merging", trust_remote_code=True, token_merge_r=2)' in card.text


def test_card_options_set_the_output_title_usage_id_and_license(saved_folder, tmp_path):
    output = tmp_path / "card.md"
    arguments = ["card", str(saved_folder), "--output", str(output), "--model-name", "tiny-trilevel",
                 "--model-id", "tester/tiny", "--license", "mit"]  # fmt: skip
    assert main(arguments) == 0
    assert not (saved_folder / "README.md").exists()
    card = ModelCard.load(output)
    assert card.data.license == "mit"
    assert card.text.lstrip().startswith("<!--") and "# tiny-trilevel" in card.text
    assert 'AutoModelForImageClassification.from_pretrained("tester/tiny", trust_remote_code=True)' in card.text


def test_card_of_the_command_equals_the_library_call(saved_folder, tmp_path):
    from hf_trilevel.model_card import write_model_card

    assert main(["card", str(saved_folder), "--output", str(tmp_path / "command.md")]) == 0
    write_model_card(saved_folder, output=tmp_path / "library.md")
    assert (tmp_path / "command.md").read_text() == (tmp_path / "library.md").read_text()


@pytest.mark.parametrize(
    ("make_arguments", "message"),
    [
        (lambda folder, tmp: ["card", str(tmp / "empty")], "FOLDER must be a saved TriLevel checkpoint folder"),
        (lambda folder, tmp: ["card", str(folder), "--output", str(tmp / "no" / "x.md")], "does not exist"),
        (lambda folder, tmp: ["card"], "the following arguments are required: FOLDER"),
    ],
)
def test_bad_input_exits_2_with_one_usage_line_and_the_message(saved_folder, tmp_path, capsys, make_arguments, message):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(make_arguments(saved_folder, tmp_path))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("usage: hf-trilevel card FOLDER")
    assert lines[1].startswith("hf-trilevel card: error: ") and message in lines[1]


def test_a_config_that_is_not_json_is_a_usage_error_not_a_traceback(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SystemExit) as exit_info:
        main(["card", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_card_runs_as_python_dash_m(saved_folder):
    command = [sys.executable, "-m", "hf_trilevel", "card", str(saved_folder), "--model-name", "subprocess"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert "# subprocess" in (saved_folder / "README.md").read_text()
    missing = subprocess.run([*command[:4], str(saved_folder / "nowhere")], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_card_of_a_dense_sparse_folder_shows_its_operating_points(tmp_path):
    folder = tmp_path / "dense-sparse"
    model = tiny_model(token_keep_rate=0.5, attention_keep_rate=0.6)
    model.config.dense_sparse_keep_rates = [1.0, 0.5]
    model.save_pretrained(folder)
    points = [
        {"token_keep_rate": 1.0, "attention_keep_rate": 1.0, "accuracy": 0.75, "images_per_second": 100.0,
         "flops_speedup_limit": 1.0},
        {"token_keep_rate": 0.5, "attention_keep_rate": 0.6, "accuracy": 0.5, "images_per_second": 180.0,
         "flops_speedup_limit": 1.6},
    ]  # fmt: skip
    environment = {"device": "cpu", "processor": "x86_64", "threads": 2}
    report = {"num_examples": 40, "batch_size": 8, "repeats": 3, "environment": environment, "points": points}
    (folder / "operating_points.json").write_text(json.dumps(report))
    assert main(["card", str(folder)]) == 0
    card = ModelCard.load(folder / "README.md")
    assert "dense-sparse-weight-sharing" in card.data.tags
    assert "| 1.0 | 1.0 | 75.00% | 100.0 | 1.00x | 1.00x |" in card.text
    assert "| 0.5 | 0.6 | 50.00% | 180.0 | 1.80x | 1.60x |" in card.text
    assert "measured on CPU (x86_64, 2 threads), batches of 8 images, the median of 3 timed rounds" in card.text


def test_a_folder_without_operating_points_has_no_section(saved_folder):
    assert main(["card", str(saved_folder)]) == 0
    assert "Operating points" not in (saved_folder / "README.md").read_text()


def test_a_malformed_operating_points_json_is_a_usage_error(saved_folder, capsys):
    (saved_folder / "operating_points.json").write_text(json.dumps({"points": "fast"}))
    with pytest.raises(SystemExit) as exit_info:
        main(["card", str(saved_folder)])
    assert exit_info.value.code == 2
    assert "operating_points.json` must hold a `points` list" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(42.0, "42.0 s"), (119.9, "119.9 s"), (300.0, "5.0 min"), (7199.0, "120.0 min"), (62172.0, "17.27 h")],
)
def test_one_duration_format_for_cards_and_benchmarks(seconds, text):
    assert format_duration(seconds) == text


def test_flops_are_shown_in_the_largest_unit_they_reach():
    assert [format_flops(n) for n in (900, 3_410_000, 1_258_000_000)] == ["900 FLOPs", "3.41 MFLOPs", "1.26 GFLOPs"]
