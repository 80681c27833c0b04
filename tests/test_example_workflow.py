"""`examples/run_image_classification.py` beyond the digits: image folders, converted ViT checkpoints, JSON arguments,
TensorBoard, resuming, keep rates taken from checkpoints, and bad input stopped before training (exit status 2)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, Image
from PIL import Image as PILImage
from transformers import BertConfig, ResNetConfig, pipeline

from hf_trilevel import TriLevelViTForImageClassification
from hf_trilevel.evaluation.metrics import sparsity_metrics
from hf_trilevel.recipe.arguments import ModelArguments
from hf_trilevel.recipe.parsing import build_parser, parse_flags_or_json, resolve_defaults

from .helpers import tiny_vit
from .test_example import load_example, run_example

CLASSES = ["bird", "cat", "dog"]
TINY_MODEL = [
    "--image_size", "16", "--patch_size", "4", "--hidden_size", "32", "--num_hidden_layers", "2",
    "--num_attention_heads", "2", "--intermediate_size", "64",
]  # fmt: skip
# Modes and sizes a scraped image folder mixes: grey, palette, alpha, 16-bit grey, landscape and portrait.
IMAGE_VARIANTS = [("RGB", (20, 14)), ("L", (18, 18)), ("RGBA", (14, 22)), ("P", (16, 16)), ("I;16", (17, 19))]


def random_image(mode: str, size: tuple[int, int], seed: int) -> PILImage.Image:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return PILImage.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))
    return PILImage.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).convert(mode)


@pytest.fixture(scope="module")
def example():
    return load_example()


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory) -> Path:
    """train/ (4 images per class, mixed modes, plus an empty and a truncated file) and val/ (2 per class)."""
    root = tmp_path_factory.mktemp("images")
    for split, per_class in (("train", 4), ("val", 2)):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for index in range(per_class):
                mode, size = IMAGE_VARIANTS[(index + label) % len(IMAGE_VARIANTS)]
                random_image(mode, size, seed=100 * label + index).save(root / split / name / f"{index}.png")
    (root / "train" / "cat" / "empty.png").write_bytes(b"")
    png = (root / "train" / "dog" / "0.png").read_bytes()
    (root / "train" / "dog" / "truncated.png").write_bytes(png[: len(png) // 2])
    return root


def folder_args(image_folders: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--train_dir", str(image_folders / "train"), "--validation_dir", str(image_folders / "val"), *TINY_MODEL,
        "--per_device_train_batch_size", "4", "--logging_steps", "1", "--save_strategy", "epoch",
        "--report_to", "tensorboard", "--disable_tqdm", "True", "--output_dir", str(output_dir), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def folder_run(image_folders, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("folder-run")
    cache = tmp_path_factory.mktemp("hf-home")
    result = run_example(*folder_args(image_folders, output_dir, "--num_train_epochs", "2"), HF_HOME=str(cache))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, output_dir, cache


# --- image folders ---------------------------------------------------------------------------------------------------


def test_image_folder_run_skips_unreadable_files_with_a_count_and_trains_on_every_mode(folder_run):
    result, _, _ = folder_run
    assert "skipped 2 of 14 train images that cannot be read" in result.stderr
    assert "empty.png" in result.stderr and "truncated.png" in result.stderr
    assert "3 classes, 12 train / 6 validation images; augmentation crop_flip" in result.stdout


def test_image_folder_run_saves_label_names_and_a_processor_at_the_model_size(folder_run):
    _, output_dir, _ = folder_run
    config = json.loads((output_dir / "config.json").read_text())
    assert config["id2label"] == {str(index): name for index, name in enumerate(CLASSES)}
    processor = json.loads((output_dir / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 16, "width": 16}


def test_image_folder_run_writes_the_three_results_files(folder_run):
    _, output_dir, _ = folder_run
    train = json.loads((output_dir / "train_results.json").read_text())
    assert train["examples_seen"] == 2 * 12 and train["example_fraction_seen"] == 1.0 and train["train_runtime"] > 0
    evaluation = json.loads((output_dir / "eval_results.json").read_text())
    assert "eval_top5_accuracy" not in evaluation  # 3 classes: top-5 would always be 1
    expected = sparsity_metrics(TriLevelViTForImageClassification.from_pretrained(output_dir).config)
    assert {key: evaluation[key] for key in expected} == pytest.approx(expected)
    assert json.loads((output_dir / "all_results.json").read_text()) == {**train, **evaluation}


def test_report_to_tensorboard_writes_training_and_evaluation_scalars(folder_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, output_dir, _ = folder_run
    event_files = list((output_dir / "runs").glob("*/events.out.tfevents.*"))
    assert event_files
    tags = set()
    for event_file in event_files:
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        tags.update(accumulator.Tags()["scalars"])
    assert {"train/loss", "eval/accuracy"} <= tags


def test_image_folder_model_classifies_an_rgba_image_through_the_pipeline(folder_run):
    _, output_dir, _ = folder_run
    classifier = pipeline("image-classification", model=str(output_dir), trust_remote_code=True)
    predictions = classifier(random_image("RGBA", (30, 20), seed=7).convert("RGB"), top_k=3)
    assert sorted(prediction["label"] for prediction in predictions) == CLASSES


def test_a_run_resumes_from_its_checkpoint_without_overwrite_consent(folder_run, image_folders, tmp_path):
    _, output_dir, cache = folder_run
    resumed = tmp_path / "resumed"
    shutil.copytree(output_dir, resumed)
    checkpoint = max(resumed.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    args = folder_args(image_folders, resumed, "--num_train_epochs", "3", "--resume_from_checkpoint", str(checkpoint))
    result = run_example(*args, HF_HOME=str(cache))
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((resumed / "trainer_state.json").read_text())
    assert checkpoint.name == "checkpoint-6" and state["global_step"] == 9  # 3 steps an epoch, 2 of 3 epochs done


def test_training_into_a_saved_folder_needs_overwrite_consent(folder_run, example, capsys):
    _, output_dir, _ = folder_run
    with pytest.raises(SystemExit) as raised:
        example.main(["--train_dir", str(output_dir), "--output_dir", str(output_dir), "--num_train_epochs", "1"])
    assert raised.value.code == 2
    error = capsys.readouterr().err
    assert f"`output_dir` '{output_dir}' already holds config.json" in error and "`overwrite_output_dir`" in error


# --- plain ViT checkpoints, JSON arguments, labels that are not a ClassLabel ------------------------------------------


@pytest.fixture(scope="module")
def saved_dataset(tmp_path_factory) -> Path:
    """A `save_to_disk` folder: images in `img`, integer labels 3/7/9 in `y`, float scores, no split names."""
    folder = tmp_path_factory.mktemp("saved") / "dataset"
    images = [random_image(*IMAGE_VARIANTS[index % 3], seed=index) for index in range(12)]
    data = {"img": images, "y": [3, 7, 9] * 4, "score": [0.5] * 12}
    Dataset.from_dict(data).cast_column("img", Image()).save_to_disk(folder)
    return folder


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory) -> Path:
    """A plain transformers `ViTForImageClassification` (5 labels), saved as transformers saves it."""
    folder = tmp_path_factory.mktemp("vit") / "vit"
    tiny_vit().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def converted_run(saved_dataset, vit_folder, tmp_path_factory):
    """Fine-tune the plain ViT on 3 classes from a JSON file of arguments, at learning rate 0 (weights unchanged)."""
    work = tmp_path_factory.mktemp("converted")
    arguments = {
        "model_name_or_path": str(vit_folder), "ignore_mismatched_sizes": True, "token_keep_rate": 0.5,
        "dataset_name": str(saved_dataset), "image_column_name": "img", "label_column_name": "y",
        "train_val_split": 0.25, "num_train_epochs": 1, "learning_rate": 0.0, "warmup_steps": 0,
        "per_device_train_batch_size": 3, "disable_tqdm": True, "output_dir": str(work / "out"),
    }  # fmt: skip
    (work / "args.json").write_text(json.dumps(arguments))
    result = run_example(str(work / "args.json"), HF_HOME=str(work / "hf"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, work / "out"


def test_a_plain_vit_checkpoint_is_converted_with_a_new_classifier(converted_run, vit_folder):
    _, output_dir = converted_run
    model = TriLevelViTForImageClassification.from_pretrained(output_dir)
    assert model.config.model_type == "trilevel_vit" and model.config.num_labels == 3
    original = tiny_vit().state_dict()
    trained = model.state_dict()
    backbone = [key for key in original if not key.startswith("classifier.")]
    assert backbone and set(backbone) == {key for key in trained if not key.startswith("classifier.")}
    for key in backbone:  # learning rate 0: every backbone weight is the checkpoint's
        torch.testing.assert_close(trained[key], original[key], rtol=0, atol=0)
    assert trained["classifier.weight"].shape == (3, original["classifier.weight"].shape[1])


def test_converted_run_uses_given_keep_rates_and_the_checkpoints_otherwise(converted_run):
    _, output_dir = converted_run
    config = json.loads((output_dir / "config.json").read_text())
    assert config["token_keep_rate"] == 0.5  # from the JSON file
    assert config["attention_keep_rate"] == 1.0  # a plain ViT has none: dense


def test_integer_labels_are_encoded_with_a_notice(converted_run):
    result, output_dir = converted_run
    assert "`label_column_name` 'y' holds Value('int64'), not a ClassLabel" in result.stderr
    config = json.loads((output_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "3", "1": "7", "2": "9"}


def test_a_trilevel_checkpoint_keeps_its_keep_rates_unless_given(converted_run, vit_folder):
    _, trilevel_folder = converted_run
    names = ["a", "b", "c"]
    config = ModelArguments(model_name_or_path=str(trilevel_folder)).build_config(names)
    assert (config.token_keep_rate, config.attention_keep_rate) == (0.5, 1.0)
    given = ModelArguments(model_name_or_path=str(trilevel_folder), token_keep_rate=0.9, token_fusion=True)
    config = given.build_config(names)
    assert (config.token_keep_rate, config.token_fusion) == (0.9, True)
    scratch = ModelArguments().build_config(names)
    assert (scratch.token_keep_rate, scratch.attention_keep_rate) == (0.7, 0.5)
    from_vit_config = ModelArguments(config_name=str(vit_folder)).build_config(names)
    assert (from_vit_config.token_keep_rate, from_vit_config.num_labels) == (1.0, 3)


# --- bad input: a usage error naming the argument, before any training -----------------------------------------------


@pytest.fixture(scope="module")
def other_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("other-models")
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        root / "bert"
    )
    ResNetConfig(hidden_sizes=[8, 16], depths=[1, 1], embedding_size=8).save_pretrained(root / "resnet")
    (root / "empty").mkdir()
    return {name: root / name for name in ("bert", "resnet", "empty")}


BAD_INPUT = {
    "no image column": (
        ["--dataset_name", "{saved}"],
        "`image_column_name` 'image': the train split has no such column",
    ),
    "no label column": (["--dataset_name", "{saved}", "--image_column_name", "img"], "`label_column_name` 'label'"),
    "float labels": (
        ["--dataset_name", "{saved}", "--image_column_name", "img", "--label_column_name", "score"],
        "`label_column_name` 'score' holds Value('float64')",
    ),
    "bert checkpoint": (
        ["--model_name_or_path", "{bert}"],
        "is a 'bert' model; TriLevel ViTs start from a TriLevel or a plain checkpoint of a registered family",
    ),
    "resnet config": (["--config_name", "{resnet}"], "`config_name` '{resnet}' is a 'resnet' model"),
    "folder without a config": (["--model_name_or_path", "{empty}"], "has no config.json"),
    "classifier of another size": (
        [
            "--model_name_or_path",
            "{vit}",
            "--dataset_name",
            "{saved}",
            "--image_column_name",
            "img",
            "--label_column_name",
            "y",
        ],
        "classifier for 5 labels but the data has 3; pass `ignore_mismatched_sizes`",
    ),
    "missing image folder": (["--train_dir", "{saved}/nope"], "`train_dir` '{saved}/nope' is not a directory"),
    "shape with a checkpoint": (["--model_name_or_path", "{vit}", "--hidden_size", "64"], "`hidden_size` shapes"),
    "evaluation without a model": (["--do_train", "False"], "`do_train` False evaluates a trained model"),
    "unknown argument": (["--tokens_kept", "0.5"], "unrecognized arguments: --tokens_kept 0.5"),
    "abbreviated argument": (["--token_keep", "0.5"], "unrecognized arguments: --token_keep 0.5"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_stops_before_training_with_a_usage_error(
    case, example, saved_dataset, vit_folder, other_models, tmp_path, capsys
):
    places = {"saved": saved_dataset, "vit": vit_folder, **other_models}
    argv, message = BAD_INPUT[case]
    argv = [arg.format(**places) for arg in argv] + ["--output_dir", str(tmp_path / "out"), "--num_train_epochs", "1"]
    with pytest.raises(SystemExit) as raised:
        example.main(argv)
    assert raised.value.code == 2
    assert message.format(**places) in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_a_json_file_with_an_unknown_key_is_a_usage_error(example, tmp_path, capsys):
    (tmp_path / "args.json").write_text(json.dumps({"num_train_epochs": 1, "tokn_keep_rate": 0.5}))
    with pytest.raises(SystemExit) as raised:
        example.main([str(tmp_path / "args.json")])
    assert raised.value.code == 2 and "tokn_keep_rate" in capsys.readouterr().err


def test_a_json_file_gets_the_tuned_defaults_like_flags_do(tmp_path):
    (tmp_path / "args.json").write_text(json.dumps({"token_keep_rate": 0.6}))
    parser = build_parser()
    from_json = parse_flags_or_json(parser, [str(tmp_path / "args.json")], resolve_defaults)
    from_flags = parse_flags_or_json(parser, ["--token_keep_rate", "0.6"], resolve_defaults)
    assert from_json[0] == from_flags[0] and from_json[-1].learning_rate == from_flags[-1].learning_rate == 1e-3
    assert from_json[-1].output_dir == "outputs/digits-trilevel"
