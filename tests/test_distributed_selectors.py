"""Learned and adaptive token selectors on 2 real processes (torchrun, gloo on CPU): the ranks stay in sync."""

import itertools
from pathlib import Path

import pytest

from .helpers import run_on_two_processes

JOB = Path(__file__).parent / "jobs" / "distributed_selectors.py"


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[dict]:
    return run_on_two_processes(JOB, tmp_path_factory.mktemp("selectors"))


@pytest.mark.parametrize("selector", ["learned", "adaptive"])
def test_ranks_end_with_identical_weights_and_the_scorers_trained(reports, selector):
    first, second = (report[selector] for report in reports)
    assert first["world_size"] == second["world_size"] == 2
    assert first["parameters"] == second["parameters"]  # real DDP: gradients are synchronised
    # Layer 0's scorer trained away from its zero start; layer 1 is the last layer, whose kept patches never reach
    # the class token, so its scorer gets no gradient and stays at zero.
    assert first["scorer_output_weight_sums"][0] > 0 and first["scorer_output_weight_sums"][1] == 0


@pytest.mark.parametrize("selector", ["learned", "adaptive"])
def test_the_temperature_falls_linearly_from_start_to_end(reports, selector):
    temperatures = reports[0][selector]["temperatures"]
    assert temperatures[0] == pytest.approx(10.0) and temperatures[-1] == pytest.approx(0.1)
    steps = [b - a for a, b in itertools.pairwise(temperatures)]
    assert all(step == pytest.approx(steps[0], abs=1e-3) and step < 0 for step in steps)
    assert temperatures == reports[1][selector]["temperatures"]
