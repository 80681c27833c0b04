"""A real 2-process run (torchrun, gloo on CPU): every rank takes the same pruning decisions, and the ranks'
batches split each epoch's kept set between them."""

from pathlib import Path

import pytest

from .helpers import run_on_two_processes

JOB = Path(__file__).parent / "jobs" / "distributed_pruning.py"


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[dict]:
    return run_on_two_processes(JOB, tmp_path_factory.mktemp("distributed"))


@pytest.mark.parametrize("policy", ["forgetting", "loss", "random"])
def test_both_ranks_take_identical_decisions(reports, policy):
    first, second = (report[policy] for report in reports)
    assert first["world_size"] == second["world_size"] == 2
    assert first["parallel_mode"] == second["parallel_mode"] == "ParallelMode.DISTRIBUTED"
    assert first["parameters"] == second["parameters"]  # gradients were synchronised (real DDP)
    assert first["digests"] == second["digests"] and len(first["digests"]) == 4
    assert first["plans"] == second["plans"]
    assert first["statistics"] == second["statistics"]


@pytest.mark.parametrize("policy", ["forgetting", "loss", "random"])
def test_ranks_batches_split_the_kept_set_with_no_example_repeated(reports, policy):
    first, second = (report[policy] for report in reports)
    for epoch, plan in first["plans"].items():
        served_first, served_second = first["served"][epoch], second["served"][epoch]
        # accelerate alone would repeat examples from the epoch's start to give both ranks full last batches
        # (even_batches); the balanced layout splits the last round instead (102 kept: 3 rounds of 2 x 16, then 3 + 3).
        assert sorted(served_first + served_second) == plan


@pytest.mark.parametrize("policy", ["forgetting", "loss", "random"])
def test_distributed_step_counts_are_exact(reports, policy):
    for report in reports:
        assert report[policy]["global_step"] == report[policy]["max_steps"]
    # 128 examples, 2 ranks x 16 per batch: forgetting keeps 102 -> 7 batches -> 4 steps a rank per epoch.
    assert reports[0]["forgetting"]["max_steps"] == 4 * 4
    # loss keeps 128, 96, 96, 128 over 4 epochs -> 4 + 3 + 3 + 4 steps a rank.
    assert reports[0]["loss"]["max_steps"] == 14
    assert reports[0]["random"]["max_steps"] == 4 * 4  # 102 a fresh draw each epoch, as forgetting's kept set


def test_random_draws_a_new_kept_set_every_epoch_on_both_ranks(reports):
    plans = reports[0]["random"]["plans"]
    assert len(plans) == 4 and all(len(plan) == 102 for plan in plans.values())
    assert len({tuple(plan) for plan in plans.values()}) == 4


def test_the_composed_per_example_loss_trains_like_the_trainers_own_on_two_processes(reports):
    # The sum over the step's examples is divided by the count gathered over both ranks and multiplied by the number
    # of processes, as the Trainer does: without that factor DDP's averaging would halve every gradient.
    assert reports[0]["composed_against_stock"] < 1e-5
