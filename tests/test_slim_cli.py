"""`hf-trilevel slim IN_DIR OUT_DIR`: a saved folder slimmed end to end, and bad input as a usage error."""

import hashlib
import json

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import ViTImageProcessorPil

from hf_trilevel import TriLevelViTForImageClassification, TriLevelViTModel
from hf_trilevel.cli import main

from .helpers import images, tiny_config, tiny_model, tiny_vit
from .test_slimming import KEPT_HEADS, KEPT_NEURONS, SPARSE, pruned_model, zero_units


def save_with_processor(model, folder):
    model.save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture
def pruned_folder(tmp_path):
    model = pruned_model(**SPARSE)
    model.config.id2label = {i: f"digit-{i}" for i in range(5)}
    model.config.label2id = {label: i for i, label in model.config.id2label.items()}
    return save_with_processor(model, tmp_path / "pruned")


def digests(folder):
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def test_slim_saves_the_slimmed_model_with_processor_and_card_and_reports_the_sizes(pruned_folder, tmp_path, capsys):
    out_dir = tmp_path / "slim"
    before = digests(pruned_folder)
    assert main(["slim", str(pruned_folder), str(out_dir)]) == 0
    assert digests(pruned_folder) == before  # IN_DIR is only read

    files = {path.name for path in out_dir.iterdir()}
    assert {"model.safetensors", "config.json", "vit_layer.py", "README.md", "preprocessor_config.json"} <= files
    assert (out_dir / "preprocessor_config.json").read_bytes() == (
        pruned_folder / "preprocessor_config.json"
    ).read_bytes()
    config = json.loads((out_dir / "config.json").read_text())
    assert config["num_attention_heads_per_layer"] == KEPT_HEADS
    assert config["intermediate_size_per_layer"] == KEPT_NEURONS
    assert config["id2label"]["3"] == "digit-3" and config["token_keep_rate"] == 0.5
    assert ModelCard.load(out_dir / "README.md").text.strip()

    original = TriLevelViTForImageClassification.from_pretrained(pruned_folder).eval()
    slimmed = TriLevelViTForImageClassification.from_pretrained(out_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(slimmed(images(3)).logits, original(images(3)).logits, rtol=1e-5, atol=1e-5)

    output = capsys.readouterr().out
    rows = [line.split() for line in output.splitlines() if line.split()[:1] in ([str(i)] for i in range(4))]
    assert rows == [[str(i), f"{KEPT_HEADS[i]}/2", f"{KEPT_NEURONS[i]}/64"] for i in range(4)]
    before_count, after_count = original.num_parameters(), slimmed.num_parameters()
    assert f"parameters: {before_count:,} -> {after_count:,}" in output and after_count < before_count
    assert f"wrote {out_dir}" in output


def test_a_base_model_folder_stays_a_base_model(tmp_path):
    torch.manual_seed(0)
    zero_units(TriLevelViTModel(tiny_config())).save_pretrained(tmp_path / "base")
    assert main(["slim", str(tmp_path / "base"), str(tmp_path / "slim")]) == 0
    assert json.loads((tmp_path / "slim" / "config.json").read_text())["architectures"] == ["TriLevelViTModel"]
    assert not (tmp_path / "slim" / "preprocessor_config.json").exists()  # none to copy


def test_a_bfloat16_folder_stays_bfloat16(tmp_path):
    pruned_model().to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert main(["slim", str(tmp_path / "bf16"), str(tmp_path / "slim")]) == 0
    assert {tensor.dtype for tensor in load_file(tmp_path / "slim" / "model.safetensors").values()} == {torch.bfloat16}


def test_overwrite_writes_into_a_folder_that_holds_files(pruned_folder, tmp_path):
    out_dir = tmp_path / "slim"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("kept")
    assert main(["slim", str(pruned_folder), str(out_dir), "--overwrite"]) == 0
    assert json.loads((out_dir / "config.json").read_text())["num_attention_heads_per_layer"] == KEPT_HEADS


def test_an_existing_empty_out_dir_needs_no_overwrite(pruned_folder, tmp_path):
    (tmp_path / "slim").mkdir()
    assert main(["slim", str(pruned_folder), str(tmp_path / "slim")]) == 0


@pytest.fixture(scope="module")
def bad_folders(tmp_path_factory):
    """The inputs the refusals below name, built once: `{bad}/full`, `{bad}/dense`, ..."""
    bad = tmp_path_factory.mktemp("bad")
    (bad / "empty").mkdir()
    (bad / "full").mkdir()
    (bad / "full" / "notes.txt").write_text("x")
    (bad / "a_file").write_text("x")
    (bad / "bad_json").mkdir()
    (bad / "bad_json" / "config.json").write_text("{not json")
    tiny_vit().save_pretrained(bad / "plain_vit")
    tiny_model().save_pretrained(bad / "dense")
    zero_units(tiny_model(), heads={1: [0, 1]}, neurons={}).save_pretrained(bad / "headless")
    return bad


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["{pruned}", "{bad}/full"], "OUT_DIR {bad}/full already holds files; pass --overwrite"),
        (["{pruned}", "{pruned}"], "OUT_DIR must differ from IN_DIR"),
        (["{pruned}", "{bad}/a_file"], "OUT_DIR {bad}/a_file is a file"),
        (["{bad}/empty", "{tmp}/out"], "IN_DIR must be a saved TriLevel checkpoint folder with a config.json"),
        (["{bad}/bad_json", "{tmp}/out"], "config.json cannot be read as JSON"),
        (["{bad}/plain_vit", "{tmp}/out"], "holds a 'vit' config, not a TriLevel one"),
        (["{bad}/dense", "{tmp}/out"], "has no structured masks"),
        (
            ["{bad}/headless", "{tmp}/out"],
            "Layer 1 of the TriLevelViTForImageClassification has every one of its 2 heads",
        ),
        (["{pruned}"], "the following arguments are required: OUT_DIR"),
    ],
)
def test_bad_input_exits_2_with_one_usage_line_and_a_message(
    pruned_folder, bad_folders, tmp_path, capsys, arguments, message
):
    fill = {"pruned": pruned_folder, "bad": bad_folders, "tmp": tmp_path}
    capsys.readouterr()  # the fixtures' save progress bars
    with pytest.raises(SystemExit) as exit_info:
        main(["slim", *(argument.format(**fill) for argument in arguments)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    lines = error.splitlines()[-2:]  # a refusal after loading follows transformers' progress bar
    assert "Traceback" not in error and lines[0].startswith("usage: hf-trilevel slim IN_DIR OUT_DIR")
    assert lines[1].startswith("hf-trilevel slim: error: ") and message.format(**fill) in lines[1]
    assert not (tmp_path / "out").exists()  # nothing written before the refusal


def test_the_runs_results_and_arguments_follow_the_slimmed_model_into_its_card(pruned_folder, tmp_path):
    (pruned_folder / "eval_results.json").write_text(
        json.dumps({"eval_accuracy": 0.9833, "epoch": 30.0, "eval_measured_gflops_per_image": 9.9})
    )  # the FLOPs were measured at full width: they do not follow
    (pruned_folder / "train_results.json").write_text(json.dumps({"train_runtime": 1246.8, "epoch": 30.0}))
    (pruned_folder / "training_args.json").write_text(json.dumps({"learning_rate": 0.001, "seed": 2}))
    (pruned_folder / "operating_points.json").write_text("{}")  # speeds of the masked model: not the slimmed one's
    out_dir = tmp_path / "slim"
    out_dir.mkdir()
    (out_dir / "all_results.json").write_text(json.dumps({"eval_accuracy": 0.1}))  # an earlier slimming's, stale
    (out_dir / "operating_points.json").write_text("{}")
    assert main(["slim", str(pruned_folder), str(out_dir), "--overwrite"]) == 0
    assert (out_dir / "training_args.json").read_bytes() == (pruned_folder / "training_args.json").read_bytes()
    assert json.loads((out_dir / "train_results.json").read_text()) == {"train_runtime": 1246.8, "epoch": 30.0}
    assert json.loads((out_dir / "eval_results.json").read_text()) == {"eval_accuracy": 0.9833, "epoch": 30.0}
    assert not (out_dir / "operating_points.json").exists() and not (out_dir / "all_results.json").exists()
    card = (out_dir / "README.md").read_text()
    assert "98.33%" in card and "No accuracy was measured" not in card
