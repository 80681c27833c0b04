"""A run killed with SIGKILL at any moment and resumed with `--resume_from_checkpoint latest` is the uninterrupted run.

The matrix: both example-pruning policies, each with the default augmentation (the digits' random affine) and with
the keep-rate schedule on (once without augmentation, so a schedule defect shows apart from an augmentation one, and
once with it). Kill points (tests/jobs/resume_job.py): mid-epoch, at an epoch boundary just after that boundary's
checkpoint, inside a checkpoint write (after the weights; after the optimizer; after `trainer_state.json`, before
rotation; after the whole save), and by a timer while a checkpoint is written every step. Every kill point runs under
both policies; the writes that race rotation also run with `--save_total_limit 1`. Each resumed run must log the same
pruning digest every epoch, the same training log at every step (loss, loss terms, learning rate, gradient norm,
epoch) and end with bit-identical weights.

Cost: one job process imports the example once and forks every run from it, the four configurations side by side.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

JOB = Path(__file__).parent / "jobs" / "resume_job.py"

TINY = [
    "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2", "--intermediate_size", "64",
    "--max_train_samples", "96", "--max_eval_samples", "32", "--per_device_train_batch_size", "16",
    "--num_train_epochs", "3", "--save_strategy", "steps", "--save_steps", "2", "--logging_steps", "1",
    "--eval_strategy", "no", "--disable_tqdm", "True",
]  # fmt: skip
# The keep rate still moves at every resume point below (warm-up 1.5 steps, decay over 12 of 15-17 steps); each step's
# rate is in its log entry (`token_keep_rate`), compared with the rest of the entry.
SCHEDULE = ["--keep_rate_schedule", "True", "--keep_rate_warmup_fraction", "0.1", "--keep_rate_decay_fraction", "0.8"]
# With the default swap fraction (0.05) the few swapped examples are ties broken by the seed alone, so the kept sets
# would not depend on training at all; at 0.3 they depend on which examples the model got right.
FORGETTING = ["--example_pruning", "forgetting", "--swap_fraction", "0.3"]
CONFIGS = {
    "forgetting-augmented": FORGETTING,
    "loss-augmented": ["--example_pruning", "loss"],
    "forgetting-schedule": [*FORGETTING, *SCHEDULE, "--augmentation", "none"],
    "loss-schedule-augmented": ["--example_pruning", "loss", *SCHEDULE],
    # The default path (no example pruning: the Trainer's own sampler and dataloader), with persistent DataLoader
    # workers, which must see each epoch's augmentation key.
    "none-augmented-workers": ["--dataloader_num_workers", "2", "--dataloader_persistent_workers", "True"],
}
# Steps: forgetting keeps 77 of 96 examples, 5 steps an epoch (boundaries after steps 5 and 10, 15 steps);
# loss serves 96, 72, 96: 6, 5 and 6 steps (boundaries after steps 6 and 11, 17 steps). Checkpoints every 2 steps.
LIMIT_1 = ["--save_total_limit", "1"]
EVERY_STEP = ["--save_steps", "1"]
KILLS = {
    "forgetting-augmented": {
        "mid_epoch": ({"at": "step_end", "step": 7}, []),  # resumes from checkpoint-6, one batch into epoch 1
        "epoch_boundary": ({"at": "epoch_end", "epoch": 1}, []),  # checkpoint-10 closes epoch 1
        "after_weights": ({"at": "after_weights", "step": 10}, LIMIT_1),  # only checkpoint-8 is complete
        "timer": ({"at": "timer", "delay": 0.15}, EVERY_STEP),
    },
    "loss-augmented": {
        "mid_epoch": ({"at": "step_end", "step": 3}, []),  # checkpoint-2: epoch 1's plan comes from resumed losses
        "epoch_boundary": ({"at": "epoch_end", "epoch": 0}, []),  # checkpoint-6 closes epoch 0
        "after_trainer_state": ({"at": "after_trainer_state", "step": 12}, LIMIT_1),
        "on_save": ({"at": "on_save", "step": 4}, []),
        "timer": ({"at": "timer", "delay": 0.35}, EVERY_STEP),
    },
    "forgetting-schedule": {
        "mid_epoch": ({"at": "step_end", "step": 3}, []),  # checkpoint-2, in epoch 0
        "epoch_boundary": ({"at": "epoch_end", "epoch": 1}, []),
        "after_optimizer": ({"at": "after_optimizer", "step": 6}, LIMIT_1),
        "after_trainer_state": ({"at": "after_trainer_state", "step": 8}, LIMIT_1),
        "on_save": ({"at": "on_save", "step": 4}, []),
    },
    "loss-schedule-augmented": {
        "mid_epoch": ({"at": "step_end", "step": 13}, []),  # checkpoint-12, one batch into epoch 2
        "after_weights": ({"at": "after_weights", "step": 6}, LIMIT_1),  # the boundary checkpoint is the torn one
        "after_optimizer": ({"at": "after_optimizer", "step": 10}, LIMIT_1),
        "timer": ({"at": "timer", "delay": 0.1}, EVERY_STEP),
    },
    "none-augmented-workers": {  # 96 examples, 6 steps an epoch, 18 steps
        "mid_epoch": ({"at": "step_end", "step": 9}, []),  # resumes from checkpoint-8, two batches into epoch 1
        "after_weights": ({"at": "after_weights", "step": 12}, LIMIT_1),  # checkpoint-12 closes epoch 1
    },
}
CASES = [(config, kill) for config, kills in KILLS.items() for kill in kills]
# The kill points that leave the newest checkpoint folder without its trainer_state.json.
TORN = ("after_weights", "after_optimizer")
# Keys of a training log entry that depend on the machine's speed, not on the run.
TIMING = ("train_runtime", "train_samples_per_second", "train_steps_per_second")


def environment(work: Path) -> dict:
    return {
        **os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(work / "hf"),  # no user accelerate config or caches
    }  # fmt: skip


def plan_runs(config: str, work: Path) -> list[dict]:
    """The reference run, then per kill point: the killed run (and, once, an explicit resume of a torn
    checkpoint, on a copy), then its resume from `latest` in the same folder."""
    base = [*TINY, *CONFIGS[config]]
    runs = [{"name": "reference", "argv": [*base, "--output_dir", str(work / "reference")], "kill": None,
             "result": str(work / "reference.json")}]  # fmt: skip
    for kill_name, (kill, extra) in KILLS[config].items():
        argv = [*base, *extra, "--output_dir", str(work / kill_name)]
        runs.append({"name": f"{kill_name}-killed", "argv": argv, "kill": kill, "result": None})
        if kill_name == "after_weights" and config == "forgetting-augmented":
            torn = work / "explicit" / f"checkpoint-{kill['step']}"
            runs.append({
                "name": "explicit-torn", "copy": [str(work / kill_name), str(work / "explicit")], "kill": None,
                "argv": [*base, *extra, "--output_dir", str(work / "explicit"), "--resume_from_checkpoint", str(torn)],
                "result": None,
            })  # fmt: skip
        runs.append({
            "name": f"{kill_name}-resumed", "argv": [*argv, "--resume_from_checkpoint", "latest"], "kill": None,
            "result": str(work / f"{kill_name}.json"),
        })  # fmt: skip
    return runs


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """Every configuration's plan, run side by side by one job; {config: (work folder, status of each run)}."""
    root = tmp_path_factory.mktemp("resume_matrix")
    plans = []
    for config in CONFIGS:
        work = root / config
        work.mkdir()
        plan = {"runs": plan_runs(config, work), "status": str(work / "status.json")}
        (work / "plan.json").write_text(json.dumps(plan))
        plans.append(str(work / "plan.json"))
    job = subprocess.run(
        [sys.executable, str(JOB), *plans], capture_output=True, text=True, timeout=600, env=environment(root)
    )
    assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-4000:]
    return {config: (root / config, json.loads((root / config / "status.json").read_text())) for config in CONFIGS}


def log_tail(work: Path, name: str) -> str:
    path = work / f"{name}.log"
    return path.read_text()[-3000:] if path.is_file() else "(no log)"


def reference_and_resumed(matrix, config: str, kill: str) -> tuple[dict, dict]:
    work, status = matrix[config]
    assert status["reference"]["exit_code"] == 0, log_tail(work, "reference")
    # A timer can outlast a run on a fast machine; resuming a finished run must then change nothing either.
    allowed = (-9, 0) if kill == "timer" else (-9,)
    assert status[f"{kill}-killed"]["exit_code"] in allowed, (
        f"the {kill} run was not killed (exit {status[f'{kill}-killed']['exit_code']}):\n"
        + log_tail(work, f"{kill}-killed")
    )
    assert status[f"{kill}-resumed"]["exit_code"] == 0, log_tail(work, f"{kill}-resumed")
    reference = json.loads((work / "reference.json").read_text())
    resumed = json.loads((work / f"{kill}.json").read_text())
    return reference, resumed


def digests(result: dict) -> list[tuple[int, str]]:
    """(epoch, kept-set digest) as logged, once per epoch (a run resumed mid-epoch does not log its epoch again)."""
    return [
        (entry["example_pruning/epoch"], entry["example_pruning/digest"])
        for entry in result["log_history"]
        if "example_pruning/digest" in entry
    ]


def step_logs(result: dict) -> list[dict]:
    """Every training log entry (one per step with `logging_steps 1`), in the order logged."""
    return [entry for entry in result["log_history"] if "loss" in entry]


@pytest.mark.parametrize(("config", "kill"), [case for case in CASES if not case[0].startswith("none")])
def test_the_resumed_run_makes_the_same_pruning_decisions(matrix, config, kill):
    reference, resumed = reference_and_resumed(matrix, config, kill)
    assert len(digests(reference)) == 3
    assert digests(resumed) == digests(reference), "another kept set, or an epoch logged twice, after the resume"


@pytest.mark.parametrize(("config", "kill"), CASES)
def test_the_resumed_run_logs_the_same_losses_at_every_step(matrix, config, kill):
    reference, resumed = reference_and_resumed(matrix, config, kill)
    expected, got = step_logs(reference), step_logs(resumed)
    assert [entry["step"] for entry in expected] == list(range(1, reference["max_steps"] + 1))
    assert [entry["step"] for entry in got] == [entry["step"] for entry in expected], "steps lost or repeated"
    if not config.startswith("none"):  # without a technique the loss is the Trainer's own, with no terms
        assert any(key.startswith("loss/") for key in expected[0])
    for want, have in zip(expected, got, strict=True):
        assert have == want, f"step {want['step']} logged differently after the resume"


@pytest.mark.parametrize(("config", "kill"), CASES)
def test_the_resumed_run_ends_with_the_same_weights(matrix, config, kill):
    reference_and_resumed(matrix, config, kill)
    work, _ = matrix[config]
    expected = load_file(work / "reference" / "model.safetensors")
    got = load_file(work / kill / "model.safetensors")
    assert got.keys() == expected.keys()
    different = [name for name, tensor in expected.items() if not torch.equal(got[name], tensor)]
    assert not different, f"{len(different)} of {len(expected)} tensors differ, e.g. {different[:3]}"


@pytest.mark.parametrize(("config", "kill"), CASES)
def test_the_resumed_run_counts_the_same_steps_and_examples(matrix, config, kill):
    reference, resumed = reference_and_resumed(matrix, config, kill)
    for key in ("global_step", "max_steps", "sizes"):
        assert resumed[key] == reference[key], key
    assert resumed["metrics"]["examples_seen"] == reference["metrics"]["examples_seen"]
    assert resumed["metrics"]["example_fraction_seen"] == reference["metrics"]["example_fraction_seen"]


@pytest.mark.parametrize(("config", "kill"), [case for case in CASES if case[1] in TORN])
def test_a_kill_inside_a_checkpoint_write_leaves_a_complete_checkpoint_to_resume(matrix, config, kill):
    _, status = matrix[config]
    step = KILLS[config][kill][0]["step"]
    left = status[f"{kill}-killed"]["checkpoints"]
    complete = [name for name, files in left.items() if "trainer_state.json" in files]
    assert "trainer_state.json" not in left.get(f"checkpoint-{step}", []), f"the kill did not tear checkpoint-{step}"
    assert complete, f"no complete checkpoint left after a kill inside checkpoint-{step} (save_total_limit 1): {left}"


@pytest.fixture
def explicit(matrix):
    work, status = matrix["forgetting-augmented"]
    return status["explicit-torn"], log_tail(work, "explicit-torn")


def test_resuming_an_explicitly_named_torn_checkpoint_is_a_usage_error(explicit):
    """A checkpoint whose save was cut short is refused (exit 2) with a message naming the missing file."""
    run, log = explicit
    assert run["exit_code"] == 2, log
    assert "trainer_state.json" in log and "`resume_from_checkpoint`" in log, log
