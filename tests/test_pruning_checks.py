"""A pruning policy's planned sizes are checked before training and each plan against them, with errors naming the
policy, its settings and the epoch; and a run resumed inside an epoch logs each epoch's summary once."""

import pytest
import torch
from transformers import TrainingArguments

from hf_trilevel import ExamplePruning, PruningPolicy, TriLevelTrainer
from hf_trilevel.example_pruning import EpochPlan, RandomPolicy
from hf_trilevel.example_pruning.pruner import ExamplePruner
from hf_trilevel.training.generators import keyed_generator

from .test_pruning_trainer import collate, tiny_classifier
from .test_pruning_trainer import digits as digits  # the fixture: 96 labelled 16 x 16 digits


class ScaledPolicy(PruningPolicy):
    """`keep_fraction` of the data every epoch, times `growth ** epoch`; with `short_at`, that epoch's plan holds
    one example fewer than planned. No settings are checked: a user's policy as the README shows one."""

    name = "scaled"

    def __init__(self, keep_fraction: float = 0.5, growth: float = 1.0, short_at: int | None = None):
        self.keep_fraction, self.growth, self.short_at = keep_fraction, growth, short_at

    def epoch_sizes(self, num_examples, num_epochs):
        return [round(self.keep_fraction * self.growth**epoch * num_examples) for epoch in range(num_epochs)]

    def plan_epoch(self, epoch, previous, statistics, num_examples, seed):
        size = self.epoch_sizes(num_examples, epoch + 1)[epoch] - (epoch == self.short_at)
        order = torch.randperm(num_examples, generator=keyed_generator(seed, epoch, 11))
        return EpochPlan(order[:size].sort().values)


class ListedSizes(ScaledPolicy):
    """Returns the sizes it is given, whatever they are."""

    def __init__(self, sizes):
        super().__init__()
        self.sizes = sizes

    def epoch_sizes(self, num_examples, num_epochs):
        return self.sizes


def trainer_for(policy, digits, tmp_path, epochs: int = 3) -> TriLevelTrainer:
    return TriLevelTrainer(
        model=tiny_classifier(),
        args=TrainingArguments(
            output_dir=str(tmp_path), num_train_epochs=epochs, per_device_train_batch_size=16, report_to="none",
            remove_unused_columns=False, save_strategy="no", disable_tqdm=True, dataloader_pin_memory=False, seed=0,
        ),
        train_dataset=digits, data_collator=collate, callbacks=[ExamplePruning(policy)],
    )  # fmt: skip


def test_a_policy_planning_more_examples_than_the_data_holds_is_refused_before_training(digits, tmp_path):
    trainer = trainer_for(ScaledPolicy(keep_fraction=5), digits, tmp_path)
    with pytest.raises(ValueError) as raised:
        trainer.train()
    message = str(raised.value)
    assert "ScaledPolicy(keep_fraction=5, growth=1.0, short_at=None) plans 480 examples for epoch 0" in message
    assert "from 1 to the training set's 96" in message and "check the policy's settings" in message
    assert trainer.state.global_step == 0


def test_a_later_epoch_beyond_the_data_is_refused_before_the_first_step(digits, tmp_path):
    # 48, 72, 108 of 96: only epoch 2 is too large, yet nothing trains.
    trainer = trainer_for(ScaledPolicy(keep_fraction=0.5, growth=1.5), digits, tmp_path)
    with pytest.raises(
        ValueError, match=r"ScaledPolicy\(keep_fraction=0.5, growth=1.5, .* plans 108 examples for epoch 2"
    ):
        trainer.train()
    assert trainer.state.global_step == 0 and not trainer.state.log_history


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ([5, 5], r"returned \[5, 5\] from `epoch_sizes`, which must be a list of 3 example counts, one per epoch"),
        ("555", r"returned '555' from `epoch_sizes`, which must be a list of 3 example counts"),
        ([5, 0, 5], r"plans 0 examples for epoch 1, but an epoch serves a whole number of examples from 1 to"),
        ([5, 5, 2.5], r"plans 2.5 examples for epoch 2"),
        ([True, 5, 5], r"plans True examples for epoch 0"),
        ([5, 11, 5], r"plans 11 examples for epoch 1, .* from 1 to the training set's 10"),
    ],
)
def test_epoch_sizes_must_be_one_count_within_the_data_per_epoch(sizes, message):
    pruner = ExamplePruner(ListedSizes(sizes), seed=0)
    with pytest.raises(ValueError, match=r"the example pruning policy ListedSizes\(.*sizes=.*\) " + message):
        pruner.begin(10, 3)


def test_a_plan_of_another_size_than_planned_names_the_policy_epoch_and_counts():
    pruner = ExamplePruner(ScaledPolicy(keep_fraction=0.5, short_at=1), seed=0)
    pruner.begin(10, 3)  # epoch 0 is planned in full
    with pytest.raises(ValueError) as raised:
        pruner.end_epoch(0)
    message = str(raised.value)
    assert "ScaledPolicy(keep_fraction=0.5, growth=1.0, short_at=1) planned 5 examples for epoch 1" in message
    assert "its `plan_epoch` returned 4" in message
    assert pruner.plan_epoch == 0  # the bad plan is not taken


def test_a_plan_outside_the_training_set_is_refused():
    class Shifted(ScaledPolicy):
        def plan_epoch(self, epoch, previous, statistics, num_examples, seed):
            return EpochPlan(torch.arange(num_examples // 2) + num_examples // 2 + 1)

    with pytest.raises(ValueError, match=r"Shifted\(.*\) planned indices from 6 to 10 for epoch 0, outside .* 0 to 9"):
        ExamplePruner(Shifted(), seed=0).begin(10, 3)


def test_a_built_in_policy_shows_its_settings_and_refuses_a_bad_keep_fraction():
    with pytest.raises(ValueError, match=r"`keep_fraction` must be in \(0, 1\]"):
        RandomPolicy(keep_fraction=5)
    with pytest.raises(ValueError, match=r"`keep_fraction` must be in \(0, 1\]"):
        ExamplePruning("random", keep_fraction=5)

    class Broken(RandomPolicy):
        def epoch_sizes(self, num_examples, num_epochs):
            return [num_examples + 1] * num_epochs

    with pytest.raises(ValueError, match=r"Broken\(keep_fraction=0.5\) plans 11 examples for epoch 0"):
        ExamplePruner(Broken(keep_fraction=0.5), seed=0).begin(10, 2)


# -- one summary per epoch after a resume ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_run(digits, tmp_path_factory):
    """4 epochs of 48 random examples (3 steps each), a checkpoint after every step."""
    folder = tmp_path_factory.mktemp("full")
    trainer = resumable(digits, folder)
    trainer.train()
    return trainer, folder


def resumable(digits, folder) -> TriLevelTrainer:
    return TriLevelTrainer(
        model=tiny_classifier(),
        args=TrainingArguments(
            output_dir=str(folder), num_train_epochs=4, per_device_train_batch_size=16, report_to="none",
            remove_unused_columns=False, save_strategy="steps", save_steps=1, disable_tqdm=True,
            dataloader_pin_memory=False, seed=0,
        ),
        train_dataset=digits, data_collator=collate, callbacks=[ExamplePruning("random", keep_fraction=0.5)],
    )  # fmt: skip


def summaries(trainer) -> list[tuple[int, str]]:
    return [
        (h["example_pruning/epoch"], h["example_pruning/digest"])
        for h in trainer.state.log_history
        if "example_pruning/epoch" in h
    ]


@pytest.mark.parametrize("checkpoint", [3, 4, 5, 8])  # an epoch's last step (3), its first (4), mid-epoch (5, 8)
def test_a_resumed_run_logs_each_epochs_summary_once(digits, full_run, tmp_path, checkpoint):
    full, folder = full_run
    assert [epoch for epoch, _ in summaries(full)] == [0, 1, 2, 3] and full.state.global_step == 12
    resumed = resumable(digits, tmp_path)
    resumed.train(resume_from_checkpoint=str(folder / f"checkpoint-{checkpoint}"))
    assert summaries(resumed) == summaries(full)
    assert resumed.state.global_step == 12
