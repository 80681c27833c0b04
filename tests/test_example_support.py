"""hf_trilevel.recipe (checks, parsing, model) and hf_trilevel.image_data.preprocessing: the checks and builders a
training script reuses, with errors that name the function's arguments, which are the example's flags."""

import dataclasses
import json

import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Image
from PIL import Image as PILImage
from transformers import BertConfig, TrainingArguments, ViTImageProcessorPil

from hf_trilevel.image_data import attach_transforms, check_splits, collate, eval_transforms, limit_and_check_splits
from hf_trilevel.recipe.checks import (
    check_output_dir,
    check_training_arguments,
    resolve_resume_checkpoint,
    saved_run_files,
)
from hf_trilevel.recipe.model import build_image_processor, build_trilevel_config, read_vit_config
from hf_trilevel.recipe.parsing import ARGUMENT_GROUPS, build_parser, parse_flags_or_json

from .helpers import tiny_vit


def test_every_field_of_every_argument_group_is_a_flag_of_the_same_name():
    help_text = build_parser().format_help()
    for group in ARGUMENT_GROUPS:
        for item in dataclasses.fields(group):
            if item.init and not item.name.startswith("_"):
                assert f"--{item.name}" in help_text, item.name


@pytest.mark.parametrize("latest", ["True", "latest"])
def test_resume_true_means_the_newest_checkpoint_and_fails_clearly_without_one(tmp_path, latest):
    for step in (2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    assert resolve_resume_checkpoint(latest, str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert resolve_resume_checkpoint("some/folder", str(tmp_path)) == "some/folder"
    assert resolve_resume_checkpoint(None, str(tmp_path)) is None
    with pytest.raises(ValueError, match=r"`resume_from_checkpoint` .* holds no complete checkpoint-\* folder"):
        resolve_resume_checkpoint(latest, str(tmp_path / "empty"))


def test_a_folder_with_a_saved_run_needs_consent(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "checkpoint-6").mkdir()
    assert saved_run_files(tmp_path) == ["config.json", "checkpoint-6"]
    with pytest.raises(ValueError, match=r"`output_dir` '.*' already holds config.json, checkpoint-6: pass `overwrite"):
        check_output_dir(str(tmp_path), resume_from_checkpoint=None)
    check_output_dir(str(tmp_path), overwrite_output_dir=True, resume_from_checkpoint=None)
    check_output_dir(str(tmp_path), do_train=False, resume_from_checkpoint=None)
    check_output_dir(str(tmp_path), resume_from_checkpoint=str(tmp_path / "checkpoint-6"))
    check_output_dir(str(tmp_path / "new"), resume_from_checkpoint=None)
    with pytest.raises(ValueError, match=r"`resume_from_checkpoint` '.*nope' is not a directory"):
        check_output_dir(str(tmp_path), resume_from_checkpoint=str(tmp_path / "nope"))


@pytest.mark.parametrize(
    ("settings", "model", "message"),
    [
        ({"do_train": False, "do_eval": False}, "m", "`do_train` and `do_eval` are both False"),
        ({"do_train": False}, None, "`do_train` False evaluates a trained model: give it with `model_name_or_path`"),
        ({"remove_unused_columns": True}, None, "`remove_unused_columns` must stay False"),
    ],
)
def test_training_arguments_that_would_fail_late_are_refused(tmp_path, settings, model, message):
    arguments = {"do_train": True, "do_eval": True, "remove_unused_columns": False, **settings}
    with pytest.raises(ValueError, match=message):
        check_training_arguments(TrainingArguments(output_dir=str(tmp_path), **arguments), model_name_or_path=model)


def test_several_processes_that_the_trainer_would_not_connect_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    arguments = TrainingArguments(output_dir=str(tmp_path), do_train=True, remove_unused_columns=False)
    if arguments.world_size != 1:
        pytest.skip("this machine's Trainer distributes the processes (a GPU is visible)")
    with pytest.raises(ValueError, match=r"2 processes were launched .* Pass `use_cpu`"):
        check_training_arguments(arguments)


def test_only_vit_configs_are_read(tmp_path):
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path / "bert"
    )
    with pytest.raises(ValueError, match=r"`config_name` '.*bert' is a 'bert' model; TriLevel ViTs start from"):
        read_vit_config(str(tmp_path / "bert"), "config_name")
    with pytest.raises(ValueError, match=r"`model_name_or_path` './nowhere': no such folder"):
        read_vit_config("./nowhere")


def test_a_config_from_scratch_takes_the_overrides_and_label_names():
    scratch = {"image_size": 16, "patch_size": 4, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = build_trilevel_config(
        ["a", "b"], scratch={**scratch, "token_keep_rate": 0.7}, overrides={"token_keep_rate": 0.5}
    )
    assert config.token_keep_rate == 0.5 and config.id2label == {0: "a", 1: "b"} and config.image_size == 16


def test_a_checkpoint_classifier_of_another_size_needs_consent(tmp_path):
    tiny_vit().save_pretrained(tmp_path / "vit")  # 5 labels
    with pytest.raises(ValueError, match="classifier for 5 labels but the data has 3; pass `ignore_mismatched_sizes`"):
        build_trilevel_config(["a", "b", "c"], model_name_or_path=str(tmp_path / "vit"))
    config = build_trilevel_config(
        ["a", "b", "c"], model_name_or_path=str(tmp_path / "vit"), ignore_mismatched_sizes=True
    )
    assert config.num_labels == 3 and config.model_type == "trilevel_vit"


def test_the_image_processor_resizes_to_the_model_size_and_says_when_it_has_no_source(tmp_path):
    config = build_trilevel_config(["a", "b"], scratch={"image_size": 16, "patch_size": 4})
    processor, notice = build_image_processor(config)
    assert processor.size == {"height": 16, "width": 16} and notice is None
    (tmp_path / "empty").mkdir()
    _, notice = build_image_processor(config, model_name_or_path=str(tmp_path / "empty"))
    assert "has no image processor; normalising with mean = std = 0.5" in notice
    with pytest.raises(ValueError, match=r"`image_processor_name` '.*empty': cannot load it"):
        build_image_processor(config, str(tmp_path / "empty"))


def test_a_json_file_must_hold_an_object_of_arguments(tmp_path):
    from transformers import HfArgumentParser

    (tmp_path / "args.json").write_text(json.dumps([1, 2]))
    parser = HfArgumentParser(TrainingArguments)
    with pytest.raises(ValueError, match="must hold a JSON object"):
        parse_flags_or_json(parser, [str(tmp_path / "args.json")])
    with pytest.raises(ValueError, match="unrecognized arguments: --nope 1"):
        parse_flags_or_json(parser, ["--output_dir", str(tmp_path), "--nope", "1"])


def image_splits(sizes: dict[str, int]) -> DatasetDict:
    features = {"image": Image(), "label": ClassLabel(names=["a", "b"])}
    return DatasetDict(
        {
            split: Dataset.from_dict(
                {"image": [PILImage.new("RGB", (8, 8), (index, 0, 0)) for index in range(size)], "label": [0] * size}
            )
            .cast_column("image", features["image"])
            .cast_column("label", features["label"])
            for split, size in sizes.items()
        }
    )


def test_check_splits_names_the_argument_that_supplies_a_missing_split():
    with pytest.raises(ValueError, match="no validation data \\(give `validation_dir` or `train_val_split` > 0"):
        check_splits(image_splits({"train": 2}), need_train=True, need_validation=True)
    check_splits(image_splits({"train": 2}), need_train=True, need_validation=False)


def test_limit_and_check_splits_takes_seeded_subsets():
    limited, warnings = limit_and_check_splits(image_splits({"train": 6, "validation": 4}), {"train": 3}, seed=0)
    assert (len(limited["train"]), len(limited["validation"]), warnings) == (3, 4, [])


def test_attached_transforms_yield_pixel_values_that_collate_into_a_batch():
    processor = ViTImageProcessorPil(size={"height": 4, "width": 4})
    splits = attach_transforms(image_splits({"validation": 3}), processor, {"validation": eval_transforms((4, 4))})
    batch = collate([splits["validation"][index] for index in range(3)])
    assert batch["pixel_values"].shape == (3, 3, 4, 4) and batch["labels"].dtype == torch.long
    with pytest.raises(ValueError, match="`transforms` has no transform for the split\\(s\\) \\['validation'\\]"):
        attach_transforms(image_splits({"validation": 1}), processor, {"train": eval_transforms((4, 4))})
