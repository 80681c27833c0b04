"""A checkpoint resumes at another world size: 2 processes stopped at a checkpoint and resumed on 1, and 1 resumed
on 2, take the pruning decisions of the uninterrupted run at the original process count.

The global batch is the same (8 per process on 2 processes, 16 on 1) and accelerate's sharding gives rank r the
8-example batches r, r+2, ..., so each step sees the same examples at either world size; the kept set is not a
whole number of global batches, so the last step of each epoch is split 7 + 6 over the ranks
(`hf_trilevel.training.balanced_batches`) rather than padded with repeated examples. Augmentation is the
default (random affine) and must not depend on the process count. "Stopped at a checkpoint" is a copy of the
uninterrupted run's folder with only that checkpoint in it (a SIGKILL of one rank of a gloo run would leave the
other waiting in a collective). Losses and weights are compared only loosely: the DDP gradient all-reduce sums in
another order than one process does, so the last bits may differ.
"""

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

JOB = Path(__file__).parent / "jobs" / "resume_job.py"

TINY = [
    "--example_pruning", "forgetting", "--swap_fraction", "0.3",  # swaps that depend on training (test_resume_matrix)
    "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2", "--intermediate_size", "64",
    "--max_train_samples", "96", "--max_eval_samples", "32", "--num_train_epochs", "3", "--save_strategy", "steps",
    "--save_steps", "2", "--logging_steps", "1", "--eval_strategy", "no", "--do_eval", "False",
    "--disable_tqdm", "True",
]  # fmt: skip
BATCH = {1: ["--per_device_train_batch_size", "16"], 2: ["--per_device_train_batch_size", "8"]}
# 77 kept examples, 5 steps an epoch (4 x 16, then 13: 7 + 6 on two ranks; accelerate alone would pad rank 1's last
# batch with 3 examples from the epoch's start and train 16): checkpoint-6 is one step into epoch 1, checkpoint-10
# closes epoch 1.
MID_EPOCH, EPOCH_END = 6, 10


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment(work: Path) -> dict:
    return {
        **os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(work / "hf"),  # no user accelerate config or caches
    }  # fmt: skip


def two_processes(work: Path, name: str, argv: list[str]) -> subprocess.Popen:
    """`accelerate launch --multi_gpu --num_processes 2` of the job (gloo on CPU; the example turns on --use_cpu)."""
    spec = work / f"{name}.run.json"
    spec.write_text(json.dumps({"argv": argv, "kill": None, "result": str(work / f"{name}-rank{{rank}}.json")}))
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launcher += ["--main_process_port", str(free_port())]
    return start(work, name, [*launcher, str(JOB), "--run", str(spec)])


def one_process(work: Path, name: str, runs: list[dict]) -> subprocess.Popen:
    """The job in plan mode: `runs` in order, each forked after one import."""
    plan = work / f"{name}.plan.json"
    plan.write_text(json.dumps({"runs": runs, "status": str(work / f"{name}.status.json")}))
    return start(work, name, [sys.executable, str(JOB), str(plan)])


def start(work: Path, name: str, command: list[str]) -> subprocess.Popen:
    with open(work / f"{name}.log", "w") as log:  # the child keeps its own copy of the file
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment(work))


def finish(work: Path, jobs: dict[str, subprocess.Popen]) -> None:
    for name, job in jobs.items():
        job.wait(timeout=500)
        log = (work / f"{name}.log").read_text()
        assert job.returncode == 0, f"{name} failed:\n{log[-5000:]}"


def stopped_at(source: Path, step: int, destination: Path) -> Path:
    """A run folder holding only `source`'s checkpoint-`step`: the run as it was when stopped there."""
    destination.mkdir()
    shutil.copytree(source / f"checkpoint-{step}", destination / f"checkpoint-{step}")
    return destination


def run_spec(work: Path, name: str, world_size: int, resume: bool = False) -> dict:
    argv = [*TINY, *BATCH[world_size], "--output_dir", str(work / name)]
    if resume:
        argv += ["--resume_from_checkpoint", "latest"]
    return {"name": name, "argv": argv, "kill": None, "result": str(work / f"{name}.json")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """Results by run name (a 2-process run by its rank-0 result, with `rank1` holding the other rank's)."""
    work = tmp_path_factory.mktemp("resume_processes")
    finish(work, {
        "two": two_processes(work, "two", run_spec(work, "two", 2)["argv"]),
        "one": one_process(work, "one", [run_spec(work, "one", 1)]),
    })  # fmt: skip
    stopped_at(work / "two", MID_EPOCH, work / "two_to_one_mid")
    stopped_at(work / "two", EPOCH_END, work / "two_to_one_end")
    stopped_at(work / "one", MID_EPOCH, work / "one_to_two")
    finish(work, {
        "one_to_two": two_processes(work, "one_to_two", run_spec(work, "one_to_two", 2, resume=True)["argv"]),
        "two_to_one": one_process(work, "two_to_one", [
            run_spec(work, "two_to_one_mid", 1, resume=True), run_spec(work, "two_to_one_end", 1, resume=True),
        ]),
    })  # fmt: skip
    results = {}
    for name in ("one", "two_to_one_mid", "two_to_one_end"):
        results[name] = json.loads((work / f"{name}.json").read_text())
    for name in ("two", "one_to_two"):
        results[name] = json.loads((work / f"{name}-rank0.json").read_text())
        results[name]["rank1"] = json.loads((work / f"{name}-rank1.json").read_text())
    for name, result in results.items():
        result["weights"] = load_file(work / name / "model.safetensors")
    return results


def digests(result: dict) -> dict[int, str]:
    """Kept-set digest per epoch, logged exactly once each (a mid-epoch resume does not log its epoch again)."""
    found: dict[int, str] = {}
    for entry in result["log_history"]:
        if "example_pruning/digest" in entry:
            epoch = entry["example_pruning/epoch"]
            assert epoch not in found, f"epoch {epoch} logged twice"
            found[epoch] = entry["example_pruning/digest"]
    return found


def losses(result: dict) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in result["log_history"] if "loss" in entry}


def test_the_runs_ran_at_the_world_sizes_they_were_launched_with(runs):
    assert [runs[name]["world_size"] for name in ("one", "two", "one_to_two", "two_to_one_mid")] == [1, 2, 2, 1]
    assert runs["two"]["rank1"]["world_size"] == 2


@pytest.mark.parametrize("name", ["two_to_one_mid", "two_to_one_end"])
def test_a_two_process_checkpoint_resumed_on_one_process_makes_the_same_decisions(runs, name):
    assert len(digests(runs["two"])) == 3
    assert digests(runs[name]) == digests(runs["two"])
    assert runs[name]["global_step"] == runs["two"]["global_step"] == runs["two"]["max_steps"]
    assert runs[name]["metrics"]["examples_seen"] == runs["two"]["metrics"]["examples_seen"]


def test_a_one_process_checkpoint_resumed_on_two_processes_makes_the_same_decisions(runs):
    resumed = runs["one_to_two"]
    assert len(digests(runs["one"])) == 3
    assert digests(resumed) == digests(resumed["rank1"]) == digests(runs["one"])
    assert resumed["global_step"] == runs["one"]["global_step"] == runs["one"]["max_steps"]
    assert resumed["metrics"]["examples_seen"] == runs["one"]["metrics"]["examples_seen"]


def test_one_and_two_processes_make_the_same_decisions_from_the_start(runs):
    assert digests(runs["one"]) == digests(runs["two"]) == digests(runs["two"]["rank1"])
    # Each epoch's last step trains the same 13 examples (7 + 6 over the ranks, none repeated), so the losses
    # agree to reduction order at every step: with accelerate's padding, step 5 differed by 1%.
    expected, got = losses(runs["one"]), losses(runs["two"])
    assert got.keys() == expected.keys() and len(expected) == 15
    for step, loss in expected.items():
        assert math.isclose(got[step], loss, rel_tol=1e-4), f"step {step}: {got[step]} vs {loss}"


@pytest.mark.parametrize(("name", "original"), [("two_to_one_mid", "two"), ("one_to_two", "one")])
def test_losses_and_weights_after_a_world_size_change_agree_to_rounding(runs, name, original):
    """Same data, same augmentations, same steps: only the reduction order differs, so only the last bits may."""
    expected, got = losses(runs[original]), losses(runs[name])
    assert got.keys() == expected.keys()
    for step, loss in expected.items():
        assert math.isclose(got[step], loss, rel_tol=1e-4), f"step {step}: {got[step]} vs {loss}"
    for key, tensor in runs[original]["weights"].items():
        torch.testing.assert_close(runs[name]["weights"][key], tensor, rtol=1e-4, atol=1e-5, msg=key)
