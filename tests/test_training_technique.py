"""The training-technique seam: loss composition, logged terms, checkpoint state and the errors around them."""

import json

import pytest
import torch
from transformers import TrainingArguments

from hf_trilevel import TrainingBatch, TrainingTechnique, TriLevelTrainer
from hf_trilevel.training.technique_manifest import MANIFEST_NAME

from .test_pruning_trainer import NUM_EXAMPLES, collate, tiny_classifier


@pytest.fixture(scope="module")
def digits():
    from hf_trilevel.image_data import load_digits_dataset

    from .test_pruning_trainer import to_pixels

    return load_digits_dataset(image_size=16)["train"].select(range(NUM_EXAMPLES)).with_transform(to_pixels)


class Observer(TrainingTechnique):
    """Needs per-example losses but changes nothing: the composed loss must equal the Trainer's own."""

    name = "observer"

    def __init__(self):
        self.seen = 0

    def observe(self, batch: TrainingBatch) -> None:
        self.seen += len(batch.per_example_loss)


class Penalty(TrainingTechnique):
    """Adds a named term: the mean squared logit, times a weight."""

    name = "penalty"

    def __init__(self, weight: float = 0.01):
        self.weight = weight

    def extra_losses(self, batch: TrainingBatch) -> dict[str, torch.Tensor]:
        return {"logit_penalty": self.weight * batch.outputs["logits"].float().pow(2).mean()}


class StepCounter(TrainingTechnique):
    """Keeps a tensor and a JSON value in checkpoints."""

    name = "step_counter"

    def __init__(self):
        self.count = torch.zeros(3)
        self.restored: dict | None = None

    def on_step_end(self, args, state, control, **kwargs):
        self.count += 1

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"count": self.count}

    def state_metadata(self) -> dict:
        return {"count": int(self.count[0])}

    def load_state(self, tensors, metadata) -> None:
        self.count = tensors["count"].clone()
        self.restored = metadata


def run(digits, tmp_path, techniques, resume_from_checkpoint=None, **args) -> TriLevelTrainer:
    arguments = {
        "output_dir": str(tmp_path), "num_train_epochs": 2, "per_device_train_batch_size": 16, "learning_rate": 1e-3,
        "report_to": "none", "save_strategy": "no", "disable_tqdm": True, "dataloader_pin_memory": False,
        "remove_unused_columns": False, "seed": 0, "logging_steps": 3, **args,
    }  # fmt: skip
    trainer = TriLevelTrainer(
        model=tiny_classifier(), args=TrainingArguments(**arguments), train_dataset=digits, data_collator=collate,
        callbacks=list(techniques),
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return trainer


def test_the_composed_loss_trains_exactly_like_the_trainer_with_accumulation_and_label_smoothing(digits, tmp_path):
    settings = {"gradient_accumulation_steps": 2, "label_smoothing_factor": 0.1}
    stock = run(digits, tmp_path / "stock", [], **settings)
    observer = Observer()
    composed = run(digits, tmp_path / "composed", [observer], **settings)
    assert observer.seen == 2 * NUM_EXAMPLES
    for (name, expected), (_, actual) in zip(
        stock.model.named_parameters(), composed.model.named_parameters(), strict=True
    ):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=name)
    stock_losses = [h["loss"] for h in stock.state.log_history if "loss" in h]
    composed_losses = [h["loss"] for h in composed.state.log_history if "loss" in h]
    assert composed_losses == pytest.approx(stock_losses, rel=1e-4)


def test_extra_terms_are_added_and_each_term_is_logged(digits, tmp_path):
    trainer = run(digits, tmp_path, [Penalty(weight=0.01)])
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all({"loss/task", "loss/logit_penalty"} <= set(h) for h in logs)
    for entry in logs:
        assert entry["loss/logit_penalty"] > 0
        assert entry["loss/task"] + entry["loss/logit_penalty"] == pytest.approx(entry["loss"], rel=1e-3)


def test_technique_state_is_saved_in_each_checkpoint_and_restored_on_resume(digits, tmp_path):
    full = StepCounter()
    run(digits, tmp_path / "full", [full], save_strategy="steps", save_steps=4)
    checkpoint = tmp_path / "full" / "checkpoint-4"
    assert json.loads((checkpoint / "step_counter.json").read_text()) == {"count": 4}
    fresh = StepCounter()
    run(digits, tmp_path / "fresh", [fresh])
    assert fresh.restored is None
    again = StepCounter()
    run(digits, tmp_path / "again", [again], resume_from_checkpoint=str(checkpoint))
    assert again.restored == {"count": 4}
    assert torch.equal(again.count, full.count)  # 4 restored + the 8 remaining steps = the uninterrupted 12


def test_a_checkpoint_without_a_techniques_state_is_refused_naming_the_file(digits, tmp_path):
    run(digits, tmp_path / "plain", [], save_strategy="steps", save_steps=4)
    resumed = [StepCounter()]
    with pytest.raises(ValueError, match="this run adds step_counter"):  # the checkpoint's record says so first
        run(digits, tmp_path / "added", resumed, resume_from_checkpoint=str(tmp_path / "plain" / "checkpoint-4"))
    (tmp_path / "plain" / "checkpoint-4" / MANIFEST_NAME).unlink()  # a checkpoint written before the record
    with pytest.raises(ValueError, match=r"step_counter\.safetensors, step_counter\.json missing"):
        run(
            digits,
            tmp_path / "resumed",
            [StepCounter()],
            resume_from_checkpoint=str(tmp_path / "plain" / "checkpoint-4"),
        )


def test_two_techniques_with_one_name_are_refused(digits, tmp_path):
    with pytest.raises(ValueError, match="at most one training technique named 'observer'"):
        run(digits, tmp_path, [Observer(), Observer()])


def test_a_reduced_compute_loss_func_cannot_serve_per_example_losses(digits, tmp_path):
    trainer = TriLevelTrainer(
        model=tiny_classifier(),
        args=TrainingArguments(str(tmp_path), num_train_epochs=1, report_to="none", remove_unused_columns=False),
        train_dataset=digits, data_collator=collate, callbacks=[Observer()],
        compute_loss_func=lambda outputs, labels, num_items_in_batch=None: outputs["logits"].sum(),
    )  # fmt: skip
    with pytest.raises(ValueError, match="per_example_loss_func"):
        trainer.train()
