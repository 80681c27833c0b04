"""Dense/sparse training on 2 real processes (torchrun, gloo on CPU): two forwards of each batch before one backward
keep the ranks in sync, with DDP's defaults and with gradient checkpointing (no `find_unused_parameters`)."""

from pathlib import Path

import pytest

from .helpers import run_on_two_processes

JOB = Path(__file__).parent / "jobs" / "distributed_dense_sparse.py"


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[dict]:
    return run_on_two_processes(JOB, tmp_path_factory.mktemp("dense_sparse"))


@pytest.mark.parametrize("run", ["self_importance", "learned_checkpointed"])
def test_ranks_end_with_identical_weights(reports, run):
    first, second = (report[run] for report in reports)
    assert first["world_size"] == second["world_size"] == 2
    assert first["parameters"] == second["parameters"]  # real DDP: the gradients of both passes were synchronised
    assert first["steps"] == second["steps"] == 6  # 96 examples / (16 x 2 processes) x 2 epochs
    assert first["keep_rates"] == [1.0, 0.5, 0.25]


def test_every_pass_contributes_its_terms(reports):
    assert reports[0]["self_importance"]["terms"] == [
        "loss/distillation", "loss/importance_distillation", "loss/sparse_task", "loss/task",
    ]  # fmt: skip
    assert "loss/distillation" in reports[0]["learned_checkpointed"]["terms"]
