"""Example-level pruning logic on crafted statistics: who goes, who comes back, and the unbiased rescaling."""

from pathlib import Path

import pytest
import torch

from hf_trilevel import ExamplePruningCallback, ForgettingPolicy, KeepRateScheduleCallback, LossPolicy, RandomPolicy
from hf_trilevel.callbacks import cosine_keep_rate
from hf_trilevel.data_pruning import EpochPlan, ExamplePruner, ExampleStatistics, PrunedEpochSampler, digest


def statistics_after(epochs: list[tuple[list[int], list[float], list[bool]]], num_examples: int = 6):
    statistics = ExampleStatistics(num_examples)
    for indices, losses, correct in epochs:
        statistics.record(torch.tensor(indices), torch.tensor(losses), torch.tensor(correct))
        statistics.end_epoch()
    return statistics


def test_forgetting_events_count_correct_to_incorrect_flips():
    statistics = statistics_after(
        [
            ([0, 1, 2, 3], [0.1] * 4, [True, True, False, True]),
            ([0, 1, 2, 3], [0.1] * 4, [False, True, True, True]),
            ([0, 1, 2, 3], [0.1] * 4, [True, False, False, True]),
            ([0, 1, 2, 3], [0.1] * 4, [False, True, True, True]),
        ]
    )
    assert statistics.forgetting_events[:4].tolist() == [2, 1, 1, 0]
    assert statistics.presentations.tolist() == [4, 4, 4, 4, 0, 0]


def test_never_learned_examples_rank_as_most_forgettable_and_unseen_ones_do_not():
    statistics = statistics_after([([0, 1, 2], [1.0, 1.0, 1.0], [True, False, True])] * 2)
    scores = statistics.forgetting_scores()
    assert scores[1] == float("inf")
    assert scores[0] == scores[2] == 0 and scores[5] == 0


def test_an_example_seen_twice_in_an_epoch_counts_once_with_its_mean_loss():
    statistics = statistics_after([([0, 0, 1], [1.0, 3.0, 0.5], [True, True, False])])
    assert statistics.last_loss[:2].tolist() == [2.0, 0.5]
    assert statistics.presentations[:2].tolist() == [1, 1]


def test_recording_is_vectorised_on_the_statistics_device():
    statistics = ExampleStatistics(4)
    statistics.record(torch.tensor([3, 1]), torch.tensor([0.5, 0.25]), torch.tensor([True, False]))
    assert statistics.epoch_seen.tolist() == [0, 1, 0, 1]
    assert statistics.epoch_loss_sum.tolist() == [0, 0.25, 0, 0.5]


def test_forgetting_keeps_a_fixed_fraction_drawn_with_the_seed():
    policy = ForgettingPolicy(keep_fraction=0.8)
    policy.prepare(100, 10)
    first = policy.plan_epoch(0, None, ExampleStatistics(100), 100, seed=7)
    again = policy.plan_epoch(0, None, ExampleStatistics(100), 100, seed=7)
    other = policy.plan_epoch(0, None, ExampleStatistics(100), 100, seed=8)
    assert len(first.indices) == 80 and torch.equal(first.indices, again.indices)
    assert not torch.equal(first.indices, other.indices)
    assert torch.all(first.indices[1:] > first.indices[:-1])


def random_plans(seed: int, num_examples: int = 100, epochs: int = 6, keep_fraction: float = 0.3, statistics=None):
    pruner = ExamplePruner(RandomPolicy(keep_fraction=keep_fraction), seed=seed)
    pruner.begin(num_examples, epochs)
    if statistics is not None:
        pruner.statistics = statistics
    plans = []
    for epoch in range(epochs):
        pruner.advance_to(epoch)
        plans.append(pruner.plan.indices)
    return plans


def test_random_serves_exactly_its_fraction_with_a_fresh_seeded_draw_every_epoch():
    plans = random_plans(seed=3)
    assert all(len(plan) == 30 for plan in plans)  # round(0.3 x 100), the first epoch too
    assert all(torch.all(plan[1:] > plan[:-1]) and plan[0] >= 0 and plan[-1] < 100 for plan in plans)
    assert len({digest(plan) for plan in plans}) == 6  # a new set every epoch
    assert all(torch.equal(a, b) for a, b in zip(plans, random_plans(seed=3), strict=True))  # every rank, any rerun
    assert not torch.equal(plans[0], random_plans(seed=4)[0])
    seen = torch.bincount(
        torch.cat(random_plans(seed=0, num_examples=1000, epochs=20, keep_fraction=0.5)), minlength=1000
    )
    assert seen.min() >= 1 and 1.5 < seen.float().std().item() < 3.0  # binomial(20, 0.5): sd 2.24, all seen
    assert RandomPolicy(keep_fraction=0.001).epoch_sizes(100, 2) == [1, 1]  # never an empty epoch


def test_random_ignores_the_statistics_so_it_is_the_control_for_importance():
    hard_last = statistics_after(
        [(list(range(100)), [float(i) for i in range(100)], [i < 50 for i in range(100)])], 100
    )
    assert all(torch.equal(a, b) for a, b in zip(random_plans(1), random_plans(1, statistics=hard_last), strict=True))


def test_a_resumed_random_run_draws_the_epochs_the_uninterrupted_one_drew():
    uninterrupted = random_plans(seed=5)
    pruner = ExamplePruner(RandomPolicy(keep_fraction=0.3), seed=5)
    pruner.begin(100, 6)
    pruner.advance_to(2)
    resumed = ExamplePruner(RandomPolicy(keep_fraction=0.3), seed=5)
    resumed.begin(100, 6)
    resumed.load_state(pruner.state_tensors(), pruner.state_metadata())
    assert torch.equal(resumed.plan.indices, uninterrupted[2])
    for epoch in (3, 4, 5):
        resumed.advance_to(epoch)
        assert torch.equal(resumed.plan.indices, uninterrupted[epoch])
    assert resumed.policy.config() == {"policy": "random", "keep_fraction": 0.3}


def test_forgetting_swap_removes_the_least_forgotten_and_restores_removed_ones():
    policy = ForgettingPolicy(keep_fraction=0.6, swap_fraction=0.2, swap_epochs=[1])
    policy.prepare(10, 4)
    statistics = ExampleStatistics(10)
    statistics.forgetting_events = torch.tensor([5, 0, 3, 0, 4, 2, 0, 0, 0, 0], dtype=torch.int32)
    statistics.presentations = torch.ones(10, dtype=torch.int32)
    statistics.ever_correct = torch.ones(10, dtype=torch.bool)
    previous = EpochPlan(torch.tensor([0, 1, 2, 3, 4, 5]))
    plan = policy.plan_epoch(1, previous, statistics, 10, seed=0)
    assert len(plan.indices) == 6
    kept = set(plan.indices.tolist())
    assert {1, 3}.isdisjoint(kept)  # the two kept examples never forgotten leave
    assert {0, 2, 4, 5} <= kept  # the forgotten ones stay
    assert len(kept & {6, 7, 8, 9}) == 2  # as many return from the removed pool
    assert policy.plan_epoch(2, plan, statistics, 10, seed=0) is plan  # no swap outside swap epochs


def test_forgetting_default_swap_epochs_scale_the_papers_schedule():
    assert ForgettingPolicy().resolved_swap_epochs(300) == [30, 60, 90, 120, 150]
    assert ForgettingPolicy().resolved_swap_epochs(10) == [1, 2, 3, 4, 5]


def test_loss_policy_plans_sizes_before_training():
    policy = LossPolicy(prune_ratio=0.5, full_data_fraction=0.25)
    assert policy.epoch_sizes(100, 8) == [100, 75, 75, 75, 75, 75, 100, 100]


def test_loss_policy_drops_only_well_learned_examples_and_rescales_the_rest_unbiasedly():
    policy = LossPolicy(prune_ratio=0.5, full_data_fraction=0.125)
    policy.prepare(8, 8)
    statistics = ExampleStatistics(8)
    statistics.last_loss = torch.tensor([0.1, 5.0, 0.2, 4.0, 0.3, 3.0, 0.4, 2.0])
    plan = policy.plan_epoch(1, None, statistics, 8, seed=3)
    well_learned = {0, 2, 4, 6}
    dropped = set(range(8)) - set(plan.indices.tolist())
    assert len(dropped) == 2 and dropped <= well_learned
    weights = dict(zip(plan.indices.tolist(), plan.loss_weights.tolist(), strict=True))
    assert all(weights[i] == 2.0 for i in well_learned - dropped) and all(weights[i] == 1.0 for i in {1, 3, 5, 7})
    # Unbiased: the expected total weight of every example is 1 (drop probability 1/2, kept weight 2).
    expected_weight = torch.zeros(8)
    for seed in range(400):
        plan = policy.plan_epoch(1, None, statistics, 8, seed=seed)
        expected_weight[plan.indices] += plan.loss_weights
    torch.testing.assert_close(expected_weight / 400, torch.ones(8), atol=0.12, rtol=0)


@pytest.mark.parametrize(("num_examples", "prune_ratio"), [(10, 0.95), (1, 0.5), (2, 0.5), (3, 0.9)])
def test_loss_policy_keeps_one_pool_example_on_tiny_data_so_the_rescaling_stays_finite(num_examples, prune_ratio):
    # Used to raise ZeroDivisionError: 0.95 of a 5-example pool rounds to all 5, and a 1-example set has no pool.
    policy = LossPolicy(prune_ratio=prune_ratio)
    policy.prepare(num_examples, 8)
    statistics = ExampleStatistics(num_examples)
    statistics.last_loss = torch.arange(num_examples, dtype=torch.float32)
    sizes = policy.epoch_sizes(num_examples, 8)
    for epoch in range(8):
        plan = policy.plan_epoch(epoch, None, statistics, num_examples, seed=0)
        assert len(plan.indices) == sizes[epoch] >= 1
        assert plan.loss_weights is None or bool(torch.isfinite(plan.loss_weights).all())


def test_loss_policy_uses_all_data_first_and_last():
    policy = LossPolicy()
    policy.prepare(10, 8)
    statistics = ExampleStatistics(10)
    for epoch in (0, 7):
        plan = policy.plan_epoch(epoch, None, statistics, 10, seed=0)
        assert plan.indices.tolist() == list(range(10)) and plan.loss_weights is None


def test_pruner_weights_lookup_and_state_round_trip():
    pruner = ExamplePruner(LossPolicy(), seed=0)
    pruner.begin(8, 8)
    pruner.statistics.last_loss = torch.arange(8.0)
    pruner.advance_to(1)
    weights = pruner.loss_weights(torch.tensor([0, 7]))
    assert weights.tolist()[1] == 1.0 and weights.tolist()[0] in (1.0, 2.0)
    restored = ExamplePruner(LossPolicy(), seed=0)
    restored.begin(8, 8)
    restored.load_state(pruner.state_tensors(), pruner.state_metadata())
    assert torch.equal(restored.plan.indices, pruner.plan.indices) and restored.plan_epoch == 1
    assert digest(restored.plan.indices) == digest(pruner.plan.indices)


def test_resuming_with_other_settings_is_refused():
    pruner = ExamplePruner(ForgettingPolicy(keep_fraction=0.8), seed=0)
    pruner.begin(10, 4)
    other = ExamplePruner(ForgettingPolicy(keep_fraction=0.5), seed=0)
    other.begin(10, 4)
    with pytest.raises(ValueError, match="policy"):
        other.load_state(pruner.state_tensors(), pruner.state_metadata())


def test_sampler_serves_a_seeded_permutation_of_the_kept_set():
    pruner = ExamplePruner(ForgettingPolicy(keep_fraction=0.5), seed=1)
    pruner.begin(20, 4)
    sampler = PrunedEpochSampler(pruner)
    order = list(sampler)
    assert len(sampler) == 10 and sorted(order) == pruner.plan.indices.tolist()
    assert order == list(PrunedEpochSampler(pruner)) and order != sorted(order)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policy": "uniform"}, "`policy` must be one of"),
        ({"policy": "random", "keep_fraction": 0.0}, r"`keep_fraction` must be in \(0, 1\]"),
        ({"policy": "random", "keep_fraction": True}, "`keep_fraction`"),
        ({"policy": "random", "swap_fraction": 0.1}, "unknown setting for the 'random'"),
        ({"policy": "forgetting", "keep_fraction": 0.0}, r"`keep_fraction` must be in \(0, 1\]"),
        ({"policy": "forgetting", "keep_fraction": 1.5}, r"`keep_fraction` must be in \(0, 1\]"),
        ({"policy": "forgetting", "swap_fraction": -1}, "`swap_fraction`"),
        ({"policy": "forgetting", "swap_epochs": [0, 3]}, "`swap_epochs` must be a list of epoch numbers >= 1"),
        ({"policy": "loss", "prune_ratio": 1.0}, r"`prune_ratio` must be in \(0, 1\)"),
        ({"policy": "loss", "full_data_fraction": 0}, "`full_data_fraction`"),
        ({"policy": "loss", "keep_fraction": 0.5}, "unknown setting for the 'loss'"),
        ({"policy": "none", "seed": -1}, "`seed` must be a non-negative integer"),
    ],
)
def test_bad_callback_settings_are_rejected_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExamplePruningCallback(**kwargs)


def test_swap_epochs_beyond_training_are_rejected_when_training_is_planned():
    pruner = ExamplePruner(ForgettingPolicy(swap_epochs=[2, 12]), seed=0)
    with pytest.raises(ValueError, match=r"`swap_epochs` \[12\] are beyond training.*\[1, 9\]"):
        pruner.begin(100, 10)


def test_swap_epochs_are_checked_against_the_epochs_alone_before_any_data():
    with pytest.raises(ValueError, match=r"`swap_epochs` \[4\] are beyond training.*`num_train_epochs` 4 .*\[1, 3\]"):
        ForgettingPolicy(swap_epochs=[1, 4]).check_epochs(4)
    with pytest.raises(ValueError, match=r"`num_train_epochs` 1 has no epoch after the first"):
        ForgettingPolicy(swap_epochs=[1]).check_epochs(1)
    ForgettingPolicy().check_epochs(1)  # the default swap epochs fit any run


def test_examples_presented_counts_each_epochs_distinct_examples_not_the_plan():
    pruner = ExamplePruner(ForgettingPolicy(keep_fraction=0.5), seed=0)
    pruner.begin(8, 2)
    kept = pruner.plan.indices[:3]  # a dropped last batch: one planned example never trained
    pruner.statistics.record(torch.cat([kept, kept[:1]]), torch.ones(4), torch.ones(4, dtype=torch.bool))
    pruner.end_epoch(0)
    assert pruner.sizes == [4, 4] and pruner.examples_presented() == 3  # a repeated example counts once


def test_cosine_keep_rate_warms_up_then_decays_to_the_target():
    rates = [cosine_keep_rate(step, 100, 0.5, 0.1, 0.5) for step in (0, 10, 35, 60, 99)]
    assert rates[0] == rates[1] == 1.0
    assert rates[2] == pytest.approx(0.75)
    assert rates[3] == rates[4] == 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_token_keep_rate": 0.0}, "target_token_keep_rate"),
        ({"warmup_fraction": 1.0}, r"`warmup_fraction` must be in \[0, 1\)"),
        ({"decay_fraction": 0.0}, r"`decay_fraction` must be in \(0, 1\]"),
        ({"warmup_fraction": 0.6, "decay_fraction": 0.6}, "must be <= 1"),
    ],
)
def test_bad_schedule_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KeepRateScheduleCallback(**kwargs)


def test_the_readme_policy_example_plans_its_sizes_and_serves_the_highest_losses():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = next(b for b in readme.split("```python\n")[1:] if "class HighestLossPolicy" in b).split("```")[0]
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    callback = namespace["callback"]
    assert isinstance(callback, ExamplePruningCallback) and callback.policy.config()["policy"] == "highest_loss"
    pruner = ExamplePruner(callback.policy, seed=0)
    pruner.begin(10, 3)
    assert len(pruner.plan.indices) == 5  # epoch 0: every loss unknown, five drawn by the keyed tie-break
    other_seed = ExamplePruner(namespace["HighestLossPolicy"](0.5), seed=1)
    other_seed.begin(10, 3)
    assert not torch.equal(other_seed.plan.indices, pruner.plan.indices)
    losses = [float(3 * i % 10) for i in range(10)]  # 0, 3, 6, 9, 2, 5, 8, 1, 4, 7
    pruner.statistics = statistics_after([(list(range(10)), losses, [True] * 10)], 10)
    pruner.advance_to(1)
    assert pruner.plan.indices.tolist() == [2, 3, 5, 6, 9]  # losses 6, 9, 5, 8, 7: the five highest
