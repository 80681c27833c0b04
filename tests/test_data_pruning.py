"""Example-level pruning logic on crafted statistics: who goes, who comes back, and the unbiased rescaling."""

import math
from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments

from hf_trilevel import ExamplePruning, KeepRateSchedule
from hf_trilevel.example_pruning import ForgettingPolicy, LossPolicy, RandomPolicy
from hf_trilevel.example_pruning.pruner import EpochPlan, ExamplePruner, ExampleStatistics, PrunedEpochSampler, digest
from hf_trilevel.training.schedules import cosine_keep_rate


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
    statistics.presentations = torch.full((10,), 6, dtype=torch.int32)
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
    assert ForgettingPolicy().resolved_swap_epochs(10) == [2, 3, 4, 5]  # epoch 1: nobody presented twice yet
    assert ForgettingPolicy().resolved_swap_epochs(8) == [2, 3, 4]


def test_forgetting_rates_not_counts_so_a_recent_return_is_not_swapped_straight_back_out():
    # Example 0 was kept all along: 2 events in 9 pairs. Example 1 returned three epochs ago: 1 event in 2 pairs.
    # Counts rank 1 below 0 (1 < 2) though it is forgotten twice as often; rates rank it above.
    statistics = ExampleStatistics(4)
    statistics.forgetting_events = torch.tensor([2, 1, 0, 0], dtype=torch.int32)
    statistics.presentations = torch.tensor([10, 3, 10, 1], dtype=torch.int32)
    statistics.ever_correct = torch.ones(4, dtype=torch.bool)
    counts, rates = statistics.forgetting_scores(), statistics.forgetting_rates()
    assert counts[1] < counts[0] and rates[1] > rates[0]
    mean_rate = 3 / 20  # 3 events over 9 + 2 + 9 + 0 pairs
    torch.testing.assert_close(rates, torch.tensor([2.3 / 11, 1.3 / 4, 0.3 / 11, mean_rate]))
    statistics.ever_correct[2] = False
    assert statistics.forgetting_rates()[2] == float("inf")  # never learned: the most forgettable


def test_forgetting_swaps_out_only_examples_presented_twice():
    policy = ForgettingPolicy(keep_fraction=0.5, swap_fraction=0.2, swap_epochs=[1, 2])
    policy.prepare(10, 4)
    statistics = ExampleStatistics(10)
    statistics.ever_correct = torch.ones(10, dtype=torch.bool)
    statistics.presentations = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], dtype=torch.int32)
    previous = EpochPlan(torch.tensor([0, 1, 2, 3, 4]))
    assert policy.plan_epoch(1, previous, statistics, 10, seed=0) is previous  # no evidence yet: no swap
    statistics.presentations = torch.tensor([2, 1, 1, 2, 1, 0, 0, 0, 0, 0], dtype=torch.int32)
    statistics.forgetting_events = torch.tensor([1, 0, 0, 1, 0, 0, 0, 0, 0, 0], dtype=torch.int32)
    plan = policy.plan_epoch(2, previous, statistics, 10, seed=0)
    assert set(plan.indices.tolist()) >= {1, 2, 4}  # seen once: they stay although their rate is the mean
    assert len(set(plan.indices.tolist()) - {0, 1, 2, 3, 4}) == 2  # the two seen twice left, two returned


def test_forgetting_keeps_the_often_forgotten_where_random_keeps_chance():
    # Crafted statistics: the first half is forgotten every other presentation, the second half never. After the
    # five default swaps of a 30-epoch run, forgetting must have moved the kept set towards the forgotten half;
    # random serves each half at its share. A ranking no better than chance fails here.
    num_examples, epochs = 200, 30
    statistics = ExampleStatistics(num_examples)
    statistics.ever_correct = torch.ones(num_examples, dtype=torch.bool)
    forgotten = torch.arange(num_examples) < num_examples // 2
    policy = ForgettingPolicy(keep_fraction=0.5, swap_fraction=0.1)
    policy.prepare(num_examples, epochs)
    plan = None
    for epoch in range(epochs):
        plan = policy.plan_epoch(epoch, plan, statistics, num_examples, seed=0)
        served = torch.zeros(num_examples, dtype=torch.bool)
        served[plan.indices] = True
        statistics.presentations += served.to(torch.int32)
        statistics.forgetting_events += (served & forgotten & (statistics.presentations % 2 == 0)).to(torch.int32)
    forgotten_share = forgotten[plan.indices].float().mean().item()
    assert forgotten_share >= 0.7
    random_plan = RandomPolicy(0.5).plan_epoch(epochs - 1, None, statistics, num_examples, seed=0)
    assert abs(forgotten[random_plan.indices].float().mean().item() - 0.5) < 0.15


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


@pytest.mark.parametrize(
    ("budget", "epochs", "num_examples"), [(0.8, 30, 1000), (0.5, 30, 1000), (0.5, 10, 1000), (0.9, 8, 1000),
                                           (0.35, 10, 1000), (0.5, 5, 7), (0.85, 10, 7)]
)  # fmt: skip
def test_a_loss_budget_is_the_share_of_the_run_served_full_epochs_counted(budget, epochs, num_examples):
    # (0.5, 5, 7) and (0.85, 10, 7) missed by one when the skipped share, not the served one, was rounded.
    policy = LossPolicy(budget=budget)
    policy.prepare(num_examples, epochs)
    sizes = policy.epoch_sizes(num_examples, epochs)
    assert sum(sizes) == round(budget * num_examples * epochs)  # the cost of random / forgetting at keep_fraction
    full_at_end = math.ceil(0.125 * epochs)
    assert sizes[0] == num_examples and sizes[epochs - full_at_end :] == [num_examples] * full_at_end
    assert max(sizes[1 : epochs - full_at_end]) - min(sizes[1 : epochs - full_at_end]) <= 1


def test_a_loss_budget_serves_the_highest_losses_and_rescales_the_pool_it_samples():
    # 100 examples with known losses; budget 0.5 over 10 epochs: 3 full epochs, 7 pruned ones skipping 71 or 72.
    policy = LossPolicy(budget=0.5)
    policy.prepare(100, 10)
    statistics = ExampleStatistics(100)
    statistics.last_loss = torch.randperm(100, generator=torch.Generator().manual_seed(0)).float()
    plan = policy.plan_epoch(1, None, statistics, 100, seed=0)
    served = set(plan.indices.tolist())
    skipped = 100 - len(served)
    pool = math.ceil((100 + skipped) / 2)  # half the served examples are the highest losses
    hardest = set(torch.argsort(statistics.last_loss, descending=True)[: 100 - pool].tolist())
    assert hardest <= served
    weights = dict(zip(plan.indices.tolist(), plan.loss_weights.tolist(), strict=True))
    assert {weights[i] for i in hardest} == {1.0}
    assert all(weights[i] == pytest.approx(pool / (pool - skipped)) for i in served - hardest)
    # Random at the same size serves the hardest at chance: the loss policy's served mean loss is far higher.
    random_plan = RandomPolicy(len(served) / 100).plan_epoch(1, None, statistics, 100, seed=0)
    loss_mean = statistics.last_loss[plan.indices].mean()
    assert loss_mean > statistics.last_loss[random_plan.indices].mean() + 15


def test_a_loss_budget_out_of_reach_or_with_prune_ratio_is_refused_by_name():
    with pytest.raises(ValueError, match=r"`budget` 0.25 is out of reach.*above 0.3"):
        LossPolicy(budget=0.25).check_epochs(10)
    with pytest.raises(ValueError, match=r"`budget` .* or `prune_ratio` .* not both"):
        LossPolicy(budget=0.5, prune_ratio=0.5)
    with pytest.raises(ValueError, match=r"`budget` must be in \(0, 1\)"):
        LossPolicy(budget=1.0)
    with pytest.raises(ValueError, match=r"skips 66 of 100 .* pool of 30 .* to at least 0.67"):
        LossPolicy(budget=0.5, well_learned_fraction=0.3).prepare(100, 8)
    for num_examples in (1, 2, 10):  # a budget the run could reach on more data: named, not a TypeError
        with pytest.raises(ValueError, match=r"`budget` 0\.3001 would skip .* must be at least"):
            LossPolicy(budget=0.3001).prepare(num_examples, 10)
    with pytest.raises(ValueError, match=r"`budget` 0\.2 is out of reach"):
        ExamplePruning("loss", budget=0.2).check_arguments(
            TrainingArguments(output_dir="unused", num_train_epochs=4, remove_unused_columns=False, report_to="none")
        )


def test_a_loss_policy_without_a_budget_keeps_its_saved_settings():
    # Checkpoints written before `budget` existed compare equal on resume.
    assert LossPolicy().config() == {
        "policy": "loss", "prune_ratio": 0.5, "full_data_fraction": 0.125, "well_learned_fraction": 0.5,
    }  # fmt: skip
    assert LossPolicy(budget=0.6).config()["budget"] == 0.6


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
        ExamplePruning(**kwargs)


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
        KeepRateSchedule(**kwargs)


def test_the_readme_policy_example_plans_its_sizes_and_serves_the_highest_losses():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = next(b for b in readme.split("```python\n")[1:] if "class HighestLossPolicy" in b).split("```")[0]
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    callback = namespace["callback"]
    assert isinstance(callback, ExamplePruning) and callback.policy.config()["policy"] == "highest_loss"
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
