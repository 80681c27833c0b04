"""Bad input stops early with a message naming the argument, the bad value and what to do (issue 10, "Bad input").

Example-script checks (exit status 2, the usage error `main` makes of a `ValueError`) run with a `--train_dir`
that does not exist wherever the check needs no data: the test then also proves that the check comes before data
loading. Library checks (`ExamplePruning`, `composed_loss`, `TriLevelTrainer`) raise `ValueError`. The last
tests pin `examples_seen` to the examples actually trained with `dataloader_drop_last`.
"""

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import IterableDataset
from transformers import TrainingArguments

from hf_trilevel import ExamplePruning, TriLevelTrainer
from hf_trilevel.image_data import encode_labels
from hf_trilevel.recipe.checks import check_output_dir
from hf_trilevel.recipe.results import examples_seen_metrics, examples_trained_per_epoch
from hf_trilevel.training.loss_terms import composed_loss

from .helpers import tiny_model
from .random_images import RandomImages
from .test_example import load_example
from .test_pruning_trainer import collate, digits, tiny_classifier, train  # noqa: F401 (digits is a fixture)

TINY_MODEL = [
    "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2", "--intermediate_size", "64",
]  # fmt: skip


@pytest.fixture(scope="module")
def example():
    return load_example()


def usage_error(example, capsys, *argv: str) -> str:
    """The stderr of `main(argv)`, which must stop with a usage error (exit status 2)."""
    with pytest.raises(SystemExit) as raised:
        example.main([*argv, "--max_train_samples", "16", "--disable_tqdm", "True"])
    assert raised.value.code == 2
    return capsys.readouterr().err


def before_data(tmp_path: Path, *argv: str) -> list[str]:
    """Arguments whose data cannot be loaded: an error about anything else came before data loading."""
    return [*argv, "--train_dir", str(tmp_path / "no-such-folder"), "--output_dir", str(tmp_path / "out"), *TINY_MODEL]


# --- 1. fractional epochs with example pruning ------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["forgetting", "loss", "random"])
def test_fractional_epochs_with_example_pruning_stop_before_the_data_loads(example, capsys, tmp_path, policy):
    args = before_data(tmp_path, "--example_pruning", policy, "--num_train_epochs", "2.5")
    message = usage_error(example, capsys, *args)
    assert "`num_train_epochs`" in message and "2.5" in message and "whole number" in message


@pytest.mark.parametrize("epochs", [2.5, float("inf"), float("nan")])
def test_example_pruning_callback_refuses_fractional_epochs_for_trainer_users(tmp_path, epochs):
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=epochs, remove_unused_columns=False)
    with pytest.raises(ValueError, match=rf"`num_train_epochs` must be a whole number >= 1, got {epochs}"):
        ExamplePruning("forgetting").setup(args, 10, "cpu")


# --- 2. --max_steps and --swap_epochs against the planned epochs ------------------------------------------------------


def test_max_steps_with_example_pruning_stops_before_the_data_loads(example, capsys, tmp_path):
    args = before_data(tmp_path, "--example_pruning", "loss", "--num_train_epochs", "2", "--max_steps", "100")
    message = usage_error(example, capsys, *args)
    assert "`max_steps` 100" in message and "`num_train_epochs`" in message


@pytest.mark.parametrize("swap_epochs", [["2"], ["1", "5"]])
def test_swap_epochs_past_the_end_stop_before_the_data_loads(example, capsys, tmp_path, swap_epochs):
    args = before_data(tmp_path, "--example_pruning", "forgetting", "--num_train_epochs", "2")
    message = usage_error(example, capsys, *args, "--swap_epochs", *swap_epochs)
    assert "`swap_epochs`" in message and "[1, 1]" in message and "`num_train_epochs` 2" in message


def test_negative_swap_epochs_stop_before_the_data_loads(example, capsys, tmp_path):
    args = before_data(tmp_path, "--example_pruning", "forgetting", "--num_train_epochs", "2", "--swap_epochs", "-1")
    message = usage_error(example, capsys, *args)
    assert "`swap_epochs` must be an integer >= 1, got -1" in message


# --- 3. a training set of one class -----------------------------------------------------------------------------------


def test_a_one_class_image_folder_says_a_classifier_needs_two_classes(example, capsys, tmp_path):
    folder = tmp_path / "train" / "cat"
    folder.mkdir(parents=True)
    for index in range(3):
        Image.fromarray(np.full((8, 8, 3), index * 40, dtype=np.uint8)).save(folder / f"{index}.png")
    message = usage_error(example, capsys, "--train_dir", str(tmp_path / "train"), "--output_dir", str(tmp_path / "o"))
    assert "`train_dir`" in message and "one class sub-folder ('cat')" in message
    assert "at least 2" in message and "label column" not in message


def test_labels_of_a_single_training_class_are_refused_even_if_the_class_label_has_more():
    label = datasets.ClassLabel(names=["cat", "dog"])
    split = {"image": [None] * 3, "label": [0, 0, 0]}
    features = datasets.Features({"image": datasets.Image(), "label": label})
    dataset = datasets.DatasetDict(
        train=datasets.Dataset.from_dict(split, features=features),
        validation=datasets.Dataset.from_dict({"image": [None], "label": [1]}, features=features),
    )
    with pytest.raises(ValueError, match=r"the training data has 1 class \('cat'\).*at least 2"):
        encode_labels(dataset, "y")


# --- 4. a config.json with a value of the wrong type ------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--config_name", "--model_name_or_path"])
def test_a_config_field_of_the_wrong_type_names_the_flag_the_file_and_the_field(example, capsys, tmp_path, flag):
    (tmp_path / "model").mkdir()
    config_file = tmp_path / "model" / "config.json"
    config_file.write_text(json.dumps({"model_type": "vit", "hidden_size": "big", "num_labels": 10}))
    source = str(config_file) if flag == "--config_name" else str(tmp_path / "model")
    message = usage_error(example, capsys, flag, source, "--output_dir", str(tmp_path / "out"))
    assert f"`{flag[2:]}` {source!r}" in message and str(config_file) in message
    assert "'hidden_size' is 'big'" in message and "int" in message and "Validation error" not in message


# --- 4b. token merging that cannot be honoured -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--token_merge_r", "8", "--attention_keep_rate", "0.5"], ["`token_merge_r=8`", "`attention_keep_rate=0.5`"]),
        (
            ["--token_merge_r", "8", "--token_selector", "adaptive"],
            ["`token_merge_r=8`", "`token_selector='adaptive'`"],
        ),
        (["--token_merge_r", "-1"], ["`token_merge_r` must be an integer >= 0, got -1"]),
        (["--token_merge_r", "2", "-1"], ["`token_merge_r[1]` must be an integer >= 0, got -1"]),
        (["--token_merge_r", "4", "4", "4"], ["`token_merge_r`", "a list of 2 integers", "got a list of 3"]),
        # 64 patches: layer 0 merges 30 -> 34 left, of which at most 17 can merge in layer 1
        (["--token_merge_r", "30", "30"], ["`token_merge_r` merges 30 tokens in layer 1", "at most 17 can merge"]),
        (["--token_merge_r", "40"], ["`token_merge_r` merges 40 tokens in layer 0", "64 patch tokens there"]),
    ],
)
def test_token_merging_that_cannot_be_honoured_stops_before_the_data_loads(example, capsys, tmp_path, flags, named):
    message = usage_error(example, capsys, *before_data(tmp_path, *flags))
    assert all(part in message for part in named), message
    assert "Traceback" not in message


def test_a_merge_r_too_large_for_a_checkpoints_keep_rate_names_the_layer_and_the_rate(example, capsys, tmp_path):
    tiny_model(token_keep_rate=0.5, num_labels=10).save_pretrained(tmp_path / "model")
    flags = ["--model_name_or_path", str(tmp_path / "model"), "--token_merge_r", "6"]
    args = [*flags, "--train_dir", str(tmp_path / "no-such-folder"), "--output_dir", str(tmp_path / "out")]
    message = usage_error(example, capsys, *args)
    # 64 patches, merging 6 per layer, pruning layers 1-3 at 0.5: 58, 29 -> 23, 12 -> 6, then ceil(6 * .5) = 3
    assert "`token_merge_r` merges 6 tokens in layer 3, which has 3 patch tokens there" in message
    assert "`token_keep_rate=0.5`" in message


# --- 5. an --output_dir that is a file --------------------------------------------------------------------------------


def test_an_output_dir_that_is_a_file_stops_before_the_data_loads(example, capsys, tmp_path):
    (tmp_path / "results").write_text("not a folder")
    args = ["--output_dir", str(tmp_path / "results"), "--train_dir", str(tmp_path / "missing")]
    message = usage_error(example, capsys, *args)
    assert f"`output_dir` '{tmp_path / 'results'}' is a file" in message


def test_an_output_dir_inside_a_file_is_refused(tmp_path):
    (tmp_path / "results").write_text("not a folder")
    with pytest.raises(ValueError, match=r"`output_dir` .* is inside .*results', which is a file"):
        check_output_dir(str(tmp_path / "results" / "run"), resume_from_checkpoint=None)


# --- 6. streaming data with example pruning ---------------------------------------------------------------------------


class StreamedImages(IterableDataset):
    def __iter__(self):
        images = RandomImages(8, seed=0)
        return (images[index] for index in range(len(images)))


def streamed_datasets_images() -> datasets.IterableDataset:
    images = RandomImages(8, seed=0)
    data = {"pixel_values": images.pixel_values.numpy(), "labels": images.labels.numpy()}
    return datasets.Dataset.from_dict(data).to_iterable_dataset().with_format("torch")


def pruning_args(tmp_path, **overrides) -> TrainingArguments:
    settings = {"per_device_train_batch_size": 4, "report_to": "none", "use_cpu": True, "disable_tqdm": True}
    return TrainingArguments(output_dir=str(tmp_path), remove_unused_columns=False, **{**settings, **overrides})


def stack(features: list[dict]) -> dict:
    return {key: torch.stack([torch.as_tensor(f[key]) for f in features]) for key in ("pixel_values", "labels")}


@pytest.mark.parametrize("make_stream", [StreamedImages, streamed_datasets_images])
def test_streaming_data_cannot_be_index_pruned(tmp_path, make_stream):
    trainer = TriLevelTrainer(
        model=tiny_model().train(), args=pruning_args(tmp_path, max_steps=2), train_dataset=make_stream(),
        data_collator=stack, callbacks=[ExamplePruning("forgetting")],
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"streaming data .* cannot be index-pruned.*map-style"):
        trainer.train()


def test_the_callback_setup_refuses_unsized_data_before_other_checks(tmp_path):
    with pytest.raises(ValueError, match=r"streaming data .* cannot be index-pruned"):
        ExamplePruning("loss").setup(pruning_args(tmp_path, max_steps=5), None, "cpu")


# --- 7. a collator that drops the labels ------------------------------------------------------------------------------


def images_only(features: list[dict]) -> dict:
    return {"pixel_values": torch.stack([feature["pixel_values"] for feature in features])}


def test_a_collator_without_labels_is_named_at_the_first_batch(tmp_path):
    trainer = TriLevelTrainer(
        model=tiny_model().train(), args=pruning_args(tmp_path, num_train_epochs=1), train_dataset=RandomImages(8, 0),
        data_collator=images_only, callbacks=[ExamplePruning("forgetting")],
    )  # fmt: skip
    with pytest.raises(
        ValueError, match=r"data collator `.*images_only` returned a training batch without `labels`.*'pixel_values'"
    ):
        trainer.train()
    assert trainer.state.global_step == 0


def test_composed_loss_names_the_collator_and_a_singular_label_key():
    model = tiny_model().train()
    inputs = {"pixel_values": torch.randn(2, 3, 32, 32), "label": torch.tensor([0, 1])}
    with pytest.raises(ValueError, match=r"data collator `.*images_only`.*has `label`: name it `labels`"):
        composed_loss(
            model, inputs, [ExamplePruning("forgetting")], config=model.config, example_index=None,
            num_items_in_batch=None, num_processes=1, label_smoothing=0.0, data_collator=images_only,
        )  # fmt: skip


# --- 8. examples_seen counts what was trained, with dataloader_drop_last ----------------------------------------------


def test_examples_seen_with_drop_last_and_pruning_counts_the_trained_examples(digits, tmp_path):  # noqa: F811
    trainer, callback = train(digits, tmp_path, "forgetting", epochs=2, dataloader_drop_last=True)
    trainer.train()
    assert callback.pruner.sizes == [77, 77]  # 0.8 x 96; batches of 16 drop 13 of them each epoch
    seen = examples_seen_metrics(trainer, len(digits))
    assert seen == {"examples_seen": 2 * 64, "example_fraction_seen": 2 * 64 / (2 * 96)}


def test_examples_seen_with_drop_last_and_no_pruning_counts_the_trained_examples(digits, tmp_path):  # noqa: F811
    args = pruning_args(tmp_path, num_train_epochs=1, per_device_train_batch_size=20, dataloader_drop_last=True)
    trainer = TriLevelTrainer(model=tiny_classifier(), args=args, train_dataset=digits, data_collator=collate)
    trainer.train()
    assert examples_seen_metrics(trainer, len(digits)) == {
        "examples_seen": 80,  # 4 full batches of 20 out of 96
        "example_fraction_seen": 80 / 96,
    }


@pytest.mark.parametrize(
    ("num_examples", "batch_size", "num_processes", "drop_last", "trained"),
    [
        (96, 20, 1, False, 96),
        (96, 20, 1, True, 80),
        (96, 20, 2, True, 80),  # 4 full batches, 2 rounds of 2 processes
        (96, 16, 4, True, 64),  # 6 full batches: the incomplete round of 4 is dropped too
        (10, 16, 2, True, 0),
        (96, 16, 4, False, 96),  # even_batches repeats a few examples; they are not new examples
    ],
)
def test_examples_trained_per_epoch_follows_accelerates_sharding(
    num_examples, batch_size, num_processes, drop_last, trained
):
    assert examples_trained_per_epoch(num_examples, batch_size, num_processes, drop_last) == trained
