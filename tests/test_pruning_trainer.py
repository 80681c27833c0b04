"""ExamplePruning under the Trainer: exact steps, served sets, determinism, resume, and setup errors."""

import itertools

import numpy as np
import pytest
import torch
from transformers import Trainer, TrainingArguments

from hf_trilevel import (
    ExamplePruning,
    KeepRateSchedule,
    TriLevelTrainer,
    TriLevelViTConfig,
    TriLevelViTForImageClassification,
)
from hf_trilevel.image_data import load_digits_dataset
from hf_trilevel.training.indexed_dataset import EXAMPLE_INDEX

NUM_EXAMPLES = 96


def to_pixels(batch: dict) -> dict:
    pixels = [
        torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1 for image in batch["image"]
    ]
    return {"pixel_values": torch.stack(pixels), "labels": batch["label"]}


def collate(features: list[dict]) -> dict:
    return {
        "pixel_values": torch.stack([f["pixel_values"] for f in features]),
        "labels": torch.tensor([f["labels"] for f in features]),
    }


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset(image_size=16)["train"].select(range(NUM_EXAMPLES)).with_transform(to_pixels)


def tiny_classifier(**overrides) -> TriLevelViTForImageClassification:
    torch.manual_seed(0)
    config = TriLevelViTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=10, token_keep_rate=0.5, **overrides,
    )  # fmt: skip
    return TriLevelViTForImageClassification(config)


class BatchRecordingTrainer(TriLevelTrainer):
    """Records which examples each training batch held, per epoch."""

    def compute_loss(self, model, inputs, *args, **kwargs):
        if model.training:
            epoch = next(t.pruner for t in self.techniques() if t.name == "example_pruning").plan_epoch
            self.served.setdefault(epoch, []).append(inputs[EXAMPLE_INDEX].tolist())
            self.plans[epoch] = next(
                t.pruner for t in self.techniques() if t.name == "example_pruning"
            ).plan.indices.tolist()
        return super().compute_loss(model, inputs, *args, **kwargs)


def train(digits, tmp_path, policy="forgetting", epochs=6, callbacks=(), trainer_class=BatchRecordingTrainer, **args):
    arguments = {
        "output_dir": str(tmp_path),
        "num_train_epochs": epochs,
        "per_device_train_batch_size": 16,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "linear",
        "report_to": "none",
        "remove_unused_columns": False,
        "save_strategy": "no",
        "disable_tqdm": True,
        "dataloader_pin_memory": False,
        "seed": 0,
        **args,
    }
    callback = ExamplePruning(policy) if isinstance(policy, str) else policy
    trainer = trainer_class(
        model=tiny_classifier(),
        args=TrainingArguments(**arguments),
        train_dataset=digits,
        data_collator=collate,
        callbacks=[callback, *callbacks],
    )
    trainer.served, trainer.plans = {}, {}
    return trainer, callback


def digests(trainer) -> dict[int, str]:
    """Kept-set fingerprint per epoch, from the log history (logged once per epoch, resumed runs included)."""
    return {
        h["example_pruning/epoch"]: h["example_pruning/digest"]
        for h in trainer.state.log_history
        if "example_pruning/digest" in h
    }


@pytest.mark.parametrize("policy", ["forgetting", "loss", "none"])
@pytest.mark.parametrize("accumulation", [1, 2])
def test_planned_steps_are_exact_and_the_lr_schedule_finishes(digits, tmp_path, policy, accumulation):
    trainer, callback = train(digits, tmp_path, policy, epochs=8, gradient_accumulation_steps=accumulation)
    trainer.train()
    batches = [-(-size // 16) for size in callback.pruner.sizes]
    assert trainer.state.max_steps == sum(-(-b // accumulation) for b in batches)
    assert trainer.state.global_step == trainer.state.max_steps
    assert trainer.lr_scheduler.get_last_lr()[0] == 0.0
    assert [len(trainer.served[epoch]) for epoch in range(8)] == batches


def test_each_epoch_serves_exactly_its_kept_set(digits, tmp_path):
    trainer, _ = train(digits, tmp_path, "forgetting", epochs=6)
    trainer.train()
    history = [h for h in trainer.state.log_history if "example_pruning/kept" in h]
    assert [h["example_pruning/kept"] for h in history] == [77] * 6  # round(0.8 * 96)
    for epoch, batches in trainer.served.items():
        served = sorted(i for batch in batches for i in batch)
        assert served == trainer.plans[epoch]  # every kept example exactly once, nothing else
    assert len(set(digests(trainer).values())) > 1  # swaps happened (default schedule: epochs 1, 2, 3)


def test_the_loss_policy_weights_survivors_and_returns_to_full_data(digits, tmp_path):
    trainer, _ = train(digits, tmp_path, "loss", epochs=8)
    trainer.train()
    kept = [h["example_pruning/kept"] for h in trainer.state.log_history if "example_pruning/kept" in h]
    assert kept == [96, 72, 72, 72, 72, 72, 72, 96]
    assert sum(len(b) for b in trainer.served[1]) == 72


def test_runs_are_deterministic_for_a_seed(digits, tmp_path):
    first, _ = train(digits, tmp_path / "a", "forgetting")
    second, _ = train(digits, tmp_path / "b", "forgetting")
    other, _ = train(digits, tmp_path / "c", "forgetting", seed=1)
    for trainer in (first, second, other):
        trainer.train()
    assert digests(first) == digests(second)
    assert first.served == second.served
    assert digests(first) != digests(other)


@pytest.mark.parametrize("policy", ["forgetting", "loss"])
def test_a_resumed_run_makes_the_same_decisions_as_an_uninterrupted_one(digits, tmp_path, policy):
    full, full_callback = train(digits, tmp_path / "full", policy, epochs=6, save_strategy="steps", save_steps=9)
    full.train()
    # checkpoint-9 falls inside epoch 1 (6 batches in epoch 0 with 'forgetting', 6 with 'loss').
    resumed, resumed_callback = train(digits, tmp_path / "resumed", policy, epochs=6)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-9"))
    assert digests(resumed) == digests(full) and len(digests(full)) == 6
    assert {e: b for e, b in full.served.items() if e >= 2} == {e: b for e, b in resumed.served.items() if e >= 2}
    for name in ("forgetting_events", "last_correct", "presentations"):
        assert torch.equal(
            getattr(full_callback.pruner.statistics, name), getattr(resumed_callback.pruner.statistics, name)
        )
    torch.testing.assert_close(
        full_callback.pruner.statistics.last_loss, resumed_callback.pruner.statistics.last_loss, equal_nan=True
    )
    assert resumed.state.global_step == full.state.global_step


def test_checkpoints_hold_the_pruning_state_without_pickle(digits, tmp_path):
    trainer, _ = train(digits, tmp_path, "forgetting", epochs=2, save_strategy="epoch")
    trainer.train()
    checkpoint = sorted(tmp_path.glob("checkpoint-*"))[0]
    names = {path.name for path in checkpoint.iterdir()}
    assert {"example_pruning.safetensors", "example_pruning.json", "trainer_state.json"} <= names
    assert sorted(name for name in names if name.startswith("example_pruning")) == [
        "example_pruning.json",
        "example_pruning.safetensors",
    ]  # one rank-independent state, no per-rank files
    assert "training_args.json" in names and "training_args.bin" not in names


def test_a_step_checkpoint_at_an_epoch_boundary_resumes_like_the_uninterrupted_run(digits, tmp_path):
    # 77 kept examples in batches of 16: 5 steps per epoch, so checkpoint-10 is the last step of epoch 1, written
    # before that epoch's end (statistics folded, next epoch planned).
    full, full_callback = train(digits, tmp_path / "full", "forgetting", epochs=4, save_strategy="steps", save_steps=5)
    full.train()
    resumed, resumed_callback = train(digits, tmp_path / "resumed", "forgetting", epochs=4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-10"))
    assert digests(resumed) == digests(full)
    assert {e: b for e, b in full.served.items() if e >= 2} == {e: b for e, b in resumed.served.items() if e >= 2}
    assert torch.equal(
        full_callback.pruner.statistics.forgetting_events, resumed_callback.pruner.statistics.forgetting_events
    )


def test_the_scheduled_keep_rate_of_each_step_is_in_the_log_history(digits, tmp_path):
    seen = []
    schedule = KeepRateSchedule(warmup_fraction=0.25, decay_fraction=0.5)
    trainer, _ = train(digits, tmp_path, "none", epochs=4, callbacks=[schedule], logging_steps=1)
    trainer.model.register_forward_pre_hook(lambda module, args: seen.append(module.config.token_keep_rate))
    trainer.train()
    logged = [entry["token_keep_rate"] for entry in trainer.state.log_history if "loss" in entry]
    assert logged == [round(rate, 4) for rate in seen] and len(logged) == 24  # the rate each step trained at
    assert logged[0] == 1.0 and logged[-1] == 0.5


def test_keep_rate_schedule_reaches_the_forward_and_evaluation_uses_the_target(digits, tmp_path):
    seen = []
    schedule = KeepRateSchedule(warmup_fraction=0.25, decay_fraction=0.5)
    trainer, _ = train(digits, tmp_path, "none", epochs=4, callbacks=[schedule])
    model = trainer.model
    model.register_forward_pre_hook(lambda module, args: seen.append((module.training, module.config.token_keep_rate)))
    trainer.train()
    training_rates = [rate for training, rate in seen if training]
    assert len(training_rates) == trainer.state.max_steps == 24
    assert training_rates[:6] == [1.0] * 6
    assert training_rates[-6:] == [0.5] * 6
    assert all(a >= b for a, b in itertools.pairwise(training_rates))
    assert model.config.token_keep_rate == 0.5
    assert trainer.evaluate(digits)["eval_loss"] > 0
    assert all(rate == 0.5 for training, rate in seen if not training)


def test_the_stock_trainer_is_told_to_use_trilevel_trainer(digits, tmp_path):
    trainer, _ = train(digits, tmp_path, "forgetting", trainer_class=Trainer)
    with pytest.raises(RuntimeError, match=r"use `hf_trilevel\.TriLevelTrainer`"):
        trainer.train()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"remove_unused_columns": True}, "remove_unused_columns=False"),
        ({"max_steps": 10}, "leave `max_steps` unset"),
        ({"num_train_epochs": 2.5}, "whole number of epochs"),
    ],
)
def test_bad_training_arguments_fail_before_the_first_step(digits, tmp_path, args, message):
    trainer, _ = train(digits, tmp_path, "forgetting", **args)
    with pytest.raises(ValueError, match=message):
        trainer.train()
    assert trainer.state.global_step == 0


def test_an_unlabelled_dataset_is_rejected(tmp_path):
    unlabelled = load_digits_dataset(image_size=16)["train"].select(range(32)).remove_columns("label")
    trainer, _ = train(unlabelled, tmp_path, "forgetting")
    with pytest.raises(ValueError, match="needs a labelled training set"):
        trainer.train()


def test_swap_epochs_beyond_training_fail_before_the_first_step(digits, tmp_path):
    trainer, _ = train(digits, tmp_path, ExamplePruning("forgetting", swap_epochs=[3, 9]), epochs=4)
    with pytest.raises(ValueError, match="beyond training"):
        trainer.train()


def test_pruning_loss_equals_the_models_own_loss(digits, tmp_path):
    trainer, callback = train(digits, tmp_path, "none")
    batch = collate([digits[i] for i in range(8)])
    callback.setup(trainer.args, NUM_EXAMPLES, "cpu")
    model = trainer.model.train()
    torch.manual_seed(0)
    expected = model(**batch).loss
    torch.manual_seed(0)
    actual = trainer.compute_loss(model, {**batch, EXAMPLE_INDEX: torch.arange(8)})
    torch.testing.assert_close(actual, expected)
    assert callback.pruner.statistics.epoch_seen[:8].tolist() == [1.0] * 8
