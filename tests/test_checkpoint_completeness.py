"""Only complete checkpoints are resumed: an interrupted save is skipped by `True`/`latest` and refused by name.

transformers' `get_last_checkpoint` returns the highest-numbered folder whatever it holds; a folder without
`trainer_state.json` then makes `Trainer.train` start again from step 0 without a word.
"""

import json
import shutil

import pytest
import torch
from transformers import TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from hf_trilevel import TriLevelTrainer
from hf_trilevel.recipe.checks import resolve_resume_checkpoint
from hf_trilevel.training.checkpoints import (
    checkpoint_folders,
    checkpoint_problem,
    latest_complete_checkpoint,
    remove_checkpoints,
)

from .test_pruning_trainer import NUM_EXAMPLES, collate, tiny_classifier


@pytest.fixture(scope="module")
def digits():
    from hf_trilevel.image_data import load_digits_dataset

    from .test_pruning_trainer import to_pixels

    return load_digits_dataset(image_size=16)["train"].select(range(NUM_EXAMPLES)).with_transform(to_pixels)


def trainer(digits, output_dir, **args) -> TriLevelTrainer:
    arguments = {
        "output_dir": str(output_dir), "num_train_epochs": 2, "per_device_train_batch_size": 16,
        "learning_rate": 1e-3, "report_to": "none", "save_strategy": "steps", "save_steps": 4,
        "disable_tqdm": True, "dataloader_pin_memory": False, "remove_unused_columns": False, "seed": 0,
        "logging_steps": 1, **args,
    }  # fmt: skip
    return TriLevelTrainer(
        model=tiny_classifier(), args=TrainingArguments(**arguments), train_dataset=digits, data_collator=collate
    )


@pytest.fixture(scope="module")
def finished_run(digits, tmp_path_factory):
    """12 steps with checkpoints 4, 8 and 12; the test copies break the newest."""
    output_dir = tmp_path_factory.mktemp("full")
    run = trainer(digits, output_dir)
    run.train()
    return output_dir, {name: tensor.clone() for name, tensor in run.model.state_dict().items()}


def interrupted_copy(finished_run, tmp_path, damage: str):
    """The finished run's folder with checkpoint-12 damaged as a kill during its save would leave it."""
    source, _ = finished_run
    output_dir = tmp_path / "run"
    shutil.copytree(source, output_dir)
    newest = output_dir / "checkpoint-12"
    if damage == "no trainer state":
        (newest / "trainer_state.json").unlink()
    elif damage == "half-written trainer state":
        text = (newest / "trainer_state.json").read_text()
        (newest / "trainer_state.json").write_text(text[: len(text) // 2])
    elif damage == "weights only":
        for path in newest.iterdir():
            if path.name != "model.safetensors":
                path.unlink()
    return output_dir, newest


@pytest.mark.parametrize("damage", ["no trainer state", "half-written trainer state", "weights only"])
def test_an_interrupted_save_is_named_and_the_newest_complete_checkpoint_is_chosen(finished_run, tmp_path, damage):
    output_dir, newest = interrupted_copy(finished_run, tmp_path, damage)
    assert get_last_checkpoint(str(output_dir)) == str(newest)  # what transformers would resume
    assert "trainer_state.json" in checkpoint_problem(newest)
    assert latest_complete_checkpoint(output_dir) == str(output_dir / "checkpoint-8")
    assert resolve_resume_checkpoint("latest", str(output_dir)) == str(output_dir / "checkpoint-8")
    with pytest.raises(ValueError, match=r"`resume_from_checkpoint` .*checkpoint-12.* cannot be resumed: .*trainer_st"):
        resolve_resume_checkpoint(str(newest), str(output_dir))


def test_a_state_without_a_step_and_foreign_folders_are_not_checkpoints(tmp_path):
    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    (folder / "trainer_state.json").write_text(json.dumps({"best_metric": None}))
    assert "no `global_step`" in checkpoint_problem(folder)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    assert checkpoint_problem(folder) is None
    (tmp_path / "checkpoint-9").write_text("a file, not a folder")
    (tmp_path / "checkpoint-x").mkdir()
    assert checkpoint_folders(tmp_path) == [folder]
    assert latest_complete_checkpoint(tmp_path) == str(folder)
    assert latest_complete_checkpoint(tmp_path / "absent") is None


def test_train_true_resumes_the_newest_complete_checkpoint_to_the_uninterrupted_end(digits, finished_run, tmp_path):
    output_dir, _ = interrupted_copy(finished_run, tmp_path, "no trainer state")
    resumed = trainer(digits, output_dir)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 12
    steps = [entry["step"] for entry in resumed.state.log_history if "loss" in entry]
    assert steps == list(range(1, 13))  # 1-8 from checkpoint-8's state, 9-12 trained again: nothing lost or doubled
    _, expected = finished_run
    for name, tensor in resumed.model.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)


def test_train_refuses_a_named_incomplete_checkpoint_and_true_without_any(digits, finished_run, tmp_path):
    output_dir, newest = interrupted_copy(finished_run, tmp_path, "half-written trainer state")
    with pytest.raises(ValueError, match=r"incomplete or corrupt.*newest complete checkpoint there is .*checkpoint-8"):
        trainer(digits, output_dir).train(resume_from_checkpoint=str(newest))
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        trainer(digits, tmp_path / "empty").train(resume_from_checkpoint=True)


def test_a_fresh_run_with_overwrite_consent_removes_the_earlier_runs_checkpoints_but_not_its_own_start(
    finished_run, tmp_path
):
    from .test_example import checked_arguments, load_example

    output_dir, _ = interrupted_copy(finished_run, tmp_path, "no trainer state")
    example = load_example()
    start = output_dir / "checkpoint-8"  # the earlier run's weights, this run's starting point
    argv = [
        "--output_dir", str(output_dir), "--model_name_or_path", str(start), "--max_train_samples", "16",
        "--num_train_epochs", "1", "--do_eval", "False", "--disable_tqdm", "True",
    ]  # fmt: skip
    with pytest.raises(SystemExit):  # no consent: the earlier run's checkpoints are refused, not replaced
        example.main(argv)
    checked_arguments(*argv, "--overwrite_output_dir")
    assert len(checkpoint_folders(output_dir)) == 3  # checking the arguments deletes nothing
    example.main([*argv, "--overwrite_output_dir"])
    # Left in place, checkpoint-12 and -4 of the earlier run would be what `--resume_from_checkpoint latest` picks
    # after a crash of this one; checkpoint-8 holds this run's starting weights and stays.
    assert checkpoint_folders(output_dir) == [start]


def test_removing_checkpoints_keeps_a_folder_holding_a_source_path(tmp_path):
    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-4" / "config.json").write_text("{}")
    kept_source = tmp_path / "checkpoint-4" / "config.json"
    removed = remove_checkpoints(tmp_path, keep=[None, kept_source, tmp_path / "absent"])
    assert removed == ["checkpoint-2", "checkpoint-6"]
    assert checkpoint_folders(tmp_path) == [tmp_path / "checkpoint-4"]
