"""A real 2-process run (torchrun, gloo on CPU) of user pruning policies: one that draws from the global RNG, seeded
differently on each rank, plans different epochs on the two ranks and must be stopped naming the policy, the epoch
and the differing digests; one that draws from the seed it is given trains with identical plans."""

from pathlib import Path

import pytest

from .helpers import run_on_two_processes

JOB = Path(__file__).parent / "jobs" / "policy_ranks.py"


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[dict]:
    return run_on_two_processes(JOB, tmp_path_factory.mktemp("policy_ranks"))


@pytest.mark.parametrize(("run", "epoch"), [("global_from_the_start", 0), ("global_from_epoch_1", 1)])
def test_a_policy_planning_differently_on_each_rank_is_stopped_naming_it(reports, run, epoch):
    first, second = (report[run] for report in reports)
    assert first["error"] is not None and first["error"] == second["error"]  # both ranks stop, at the same point
    error = first["error"]
    assert f"HalfPolicy(global_from={epoch}) planned different examples for epoch {epoch}" in error
    assert "on different processes (kept-set digests" in error
    assert "draw randomness only from the `seed`" in error and "keyed_generator(seed, epoch, salt)" in error
    # Stopped as soon as the plans differ: at setup for epoch 0, after epoch 0 (32 kept: 2 steps of 2 x 8) for 1.
    assert first["global_step"] == second["global_step"] == 2 * epoch
    assert first["digests"] == second["digests"] and len(first["digests"]) == epoch


def test_the_differing_digests_are_the_ranks_kept_sets(reports):
    error = reports[0]["global_from_the_start"]["error"]
    digests = error.split("kept-set digests ")[1].split(")")[0].split(" and ")
    assert len(digests) == 2 and digests[0] != digests[1] and all(len(d) == 10 for d in digests)


def test_epoch_sizes_differing_between_ranks_are_stopped_before_training(reports):
    first, second = (report["drawn_sizes"] for report in reports)
    assert first["error"] is not None and second["error"] is not None and first["global_step"] == 0
    assert "DrawnSizesPolicy(" in first["error"]
    assert "planned different epoch sizes on different processes" in first["error"]
    assert "`epoch_sizes` must depend on its arguments and the policy's settings alone" in first["error"]


def test_a_policy_drawing_from_its_seed_trains_identically_on_both_ranks(reports):
    first, second = (report["keyed"] for report in reports)
    assert first["error"] is None and second["error"] is None
    assert first["global_step"] == second["global_step"] == 3 * 2
    assert first["digests"] == second["digests"] and len(first["digests"]) == 3
