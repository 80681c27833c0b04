"""The transformers Trainer members TriLevelTrainer relies on, pinned: a release that changes one fails here, by name.

Each is used because no public hook exists (see the docstring of hf_trilevel/training/trainer.py).
"""

import inspect

import transformers
from transformers import Trainer

from hf_trilevel.training.checkpoints import TRAINER_STATE_NAME

VERSION = f"transformers {transformers.__version__}"


def parameters(method) -> list[str]:
    return list(inspect.signature(method).parameters)


def test_init_training_state_takes_the_resume_arguments_we_pass_on():
    expected = [
        "self",
        "max_steps",
        "num_update_steps_per_epoch",
        "num_train_epochs",
        "resume_from_checkpoint",
        "trial",
    ]
    assert parameters(Trainer._init_training_state) == expected, (
        f"{VERSION} changed Trainer._init_training_state, where TriLevelTrainer computes resumed planned epochs."
    )


def test_run_epoch_receives_the_epoch_and_its_step_counts_by_keyword():
    names = set(parameters(Trainer._run_epoch))
    needed = {"epoch", "train_dataloader", "steps_in_epoch", "num_update_steps_per_epoch"}
    assert needed <= names, f"{VERSION} changed Trainer._run_epoch ({sorted(needed - names)} missing)."
    loop = inspect.getsource(Trainer._inner_training_loop)
    for name in needed:
        assert f"{name}={name}" in loop, f"{VERSION} no longer passes `{name}` to _run_epoch by keyword."


def test_set_initial_training_values_returns_the_seven_values_we_name():
    source = inspect.getsource(Trainer._inner_training_loop)
    names = [
        "num_train_epochs", "num_update_steps_per_epoch", "num_examples", "num_train_samples",
        "total_train_batch_size", "steps_in_epoch", "max_steps",
    ]  # fmt: skip
    call = source.index("= self.set_initial_training_values")
    unpacked = source[source.rindex("(\n", 0, call) : call]
    assert [line.strip(" ,") for line in unpacked.splitlines() if line.strip(" ,()")] == names, (
        f"{VERSION} changed what set_initial_training_values returns."
    )


def test_checkpoints_save_the_model_before_the_trainer_state_and_the_rotation():
    source = inspect.getsource(Trainer._save_checkpoint)
    save_model = source.index("self.save_model(output_dir, _internal_call=True)")
    assert save_model < source.index("save_to_json") < source.index("rotate_checkpoints"), (
        f"{VERSION} reordered Trainer._save_checkpoint: technique state would no longer precede trainer_state.json."
    )
    assert parameters(Trainer.save_model) == ["self", "output_dir", "_internal_call"]
    # hf_trilevel.training.checkpoints counts a checkpoint complete once trainer_state.json parses: everything else,
    # optimizer, scheduler and RNG states included, must be written before it.
    for earlier in ("_save_optimizer_and_scheduler(output_dir)", "_save_rng_state(output_dir)"):
        assert source.index(earlier) < source.index("save_to_json"), f"{VERSION}: {earlier} now follows the state."
    assert TRAINER_STATE_NAME == transformers.trainer.TRAINER_STATE_NAME


def test_the_loss_scaling_conventions_we_mirror_are_unchanged():
    training_step = inspect.getsource(Trainer.training_step)
    assert "self.model_accepts_loss_kwargs and num_items_in_batch is not None" in training_step, (
        f"{VERSION} changed when Trainer.training_step divides the loss by the accumulation steps."
    )
    compute_loss = inspect.getsource(Trainer.compute_loss)
    assert "self.args.average_tokens_across_devices" in compute_loss and "num_processes" in compute_loss


def test_the_batch_size_attribute_we_read_exists(tmp_path):
    from transformers import TrainingArguments

    from .helpers import tiny_model

    trainer = Trainer(model=tiny_model(), args=TrainingArguments(str(tmp_path), report_to="none"))
    assert isinstance(trainer._train_batch_size, int), f"{VERSION} removed Trainer._train_batch_size."
