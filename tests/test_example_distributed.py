"""`accelerate launch --multi_gpu --num_processes 2 examples/run_image_classification.py` on a machine without GPUs.

The user passes no `--use_cpu`: the example turns it on by itself, so the two processes train as one DDP run over
gloo (transformers would otherwise run two independent copies), take the same example-pruning decisions, and exit
cleanly. The job (tests/jobs/example_ranks.py) runs the example's own `run()` and writes what each rank saw.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

JOB = Path(__file__).parent / "jobs" / "example_ranks.py"
EPOCHS = 3


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    work = tmp_path_factory.mktemp("accelerate")
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launcher += ["--main_process_port", str(free_port())]
    example_args = [
        "--example_pruning", "forgetting", "--num_train_epochs", str(EPOCHS), "--max_train_samples", "96",
        "--max_eval_samples", "32", "--per_device_train_batch_size", "16", "--hidden_size", "32",
        "--num_hidden_layers", "2", "--num_attention_heads", "2", "--intermediate_size", "64",
        "--output_dir", str(work / "out"), "--disable_tqdm", "True",
    ]  # fmt: skip
    environment = {
        **os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(work / "hf"),  # no user accelerate config or caches
    }  # fmt: skip
    completed = subprocess.run(
        [*launcher, str(JOB), str(work), *example_args], capture_output=True, text=True, timeout=300, env=environment
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    reports = [json.loads((work / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    return completed, reports, work / "out"


def test_two_processes_on_cpu_become_one_ddp_run_without_use_cpu(launched):
    _, reports, _ = launched
    for report in reports:
        assert report["use_cpu"] is True
        assert report["world_size"] == 2 and report["parallel_mode"] == "ParallelMode.DISTRIBUTED"


def test_both_ranks_keep_the_same_examples_every_epoch(launched):
    _, (first, second), _ = launched
    assert len(first["digests"]) == EPOCHS
    assert first["digests"] == second["digests"] and first["kept"] == second["kept"]
    assert first["global_step"] == first["max_steps"] == second["global_step"]


def test_the_two_process_run_saves_one_model_and_its_results(launched):
    _, (first, _), output_dir = launched
    assert (output_dir / "model.safetensors").is_file()
    train = json.loads((output_dir / "train_results.json").read_text())
    assert train["examples_seen"] == sum(first["kept"])
    assert "eval_accuracy" in json.loads((output_dir / "eval_results.json").read_text())
