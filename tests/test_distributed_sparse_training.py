"""Weight sparsity on 2 real processes (torchrun, gloo on CPU): every rank holds the same masks and weights after
prune-and-grow updates, and a run resumed from a checkpoint of the 2-process run ends where the uninterrupted one
did."""

from pathlib import Path

import pytest

from .helpers import run_on_two_processes

JOB = Path(__file__).parent / "jobs" / "distributed_sparse_training.py"


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[dict]:
    return run_on_two_processes(JOB, tmp_path_factory.mktemp("sparse_training"))


@pytest.mark.parametrize("sparsity", ["unstructured", "structured"])
def test_ranks_hold_identical_masks_and_weights(reports, sparsity):
    first, second = (report[sparsity] for report in reports)
    assert first["world_size"] == second["world_size"] == 2
    assert first["steps"] == second["steps"] == 6  # 96 examples / (16 x 2 processes) x 2 epochs
    assert first["updates"] == second["updates"] == 4  # every step until 0.8 x 6
    assert first["masks"] == second["masks"]
    assert first["parameters"] == second["parameters"]


def test_a_resumed_two_process_run_equals_the_uninterrupted_one(reports):
    for report in reports:
        assert report["resumed"]["masks"] == report["unstructured"]["masks"]
        assert report["resumed"]["parameters"] == report["unstructured"]["parameters"]
        assert report["resumed"]["updates"] == report["unstructured"]["updates"]
