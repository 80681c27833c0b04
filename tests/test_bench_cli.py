"""`hf-trilevel bench`: end to end on a tiny shape on CPU, the JSON it writes, and clean failures on bad input."""

import json
import subprocess
import sys

import pytest
import torch

from hf_trilevel.benchmarks.timing import TensorMemoryTracker
from hf_trilevel.benchmarks.training import StepResult, project_epochs
from hf_trilevel.cli import main

TINY = ["--image-size", "32", "--patch-size", "4", "--hidden-size", "32", "--num-hidden-layers", "4",
        "--num-attention-heads", "2", "--intermediate-size", "64", "--num-labels", "10"]  # fmt: skip
QUICK = ["--batch-size", "4", "--repeats", "2", "--warmup", "1", "--no-progress"]


def test_inference_writes_every_figure_and_the_environment(tmp_path, capsys):
    path = tmp_path / "inference.json"
    arguments = ["bench", "inference", *TINY, *QUICK, "--keep-rates", "1", "0.5", "--attention-keep-rates", "1", "0.3"]
    assert main([*arguments, "--json", str(path)]) == 0

    report = json.loads(path.read_text())
    assert set(report["environment"]) >= {"torch", "transformers", "device", "threads", "processor"}
    assert report["environment"]["device"] == "cpu"
    assert report["shape"]["hidden_size"] == 32 and report["shape"]["num_hidden_layers"] == 4
    results = {row["setting"]: row for row in report["results"]}
    assert list(results) == ["dense ViT (transformers)", "keep 1", "keep 1, attention 0.3", "keep 0.5",
                             "keep 0.5, attention 0.3"]  # fmt: skip
    for row in results.values():
        assert row["median_seconds"] > 0 and len(row["seconds"]) == 2
        assert row["images_per_second"] == pytest.approx(4 / row["median_seconds"])
        assert row["fraction_of_limit"] == pytest.approx(row["speedup"] / row["flops_limit"])
        assert row["peak_memory_bytes"] > 0
    assert results["dense ViT (transformers)"]["speedup"] == 1.0
    assert results["keep 0.5"]["flops_limit"] > 1.2
    # Inference peaks in the first layers, before any token is dropped.
    assert results["keep 0.5"]["peak_memory_bytes"] == results["keep 1"]["peak_memory_bytes"]
    overhead = results["keep 0.5, attention 0.3"]["attention_overhead"]
    ratio = results["keep 0.5, attention 0.3"]["median_seconds"] / results["keep 0.5"]["median_seconds"]
    assert overhead == pytest.approx(ratio - 1)
    assert results["keep 0.5"]["attention_overhead"] is None
    assert "| keep 0.5, attention 0.3 |" in capsys.readouterr().out


def test_train_times_steps_and_projects_epochs(tmp_path, capsys):
    path = tmp_path / "train.json"
    arguments = ["bench", "train", *TINY, *QUICK, "--keep-rates", "1", "0.7", "--example-keep-fractions", "1", "0.5"]
    assert main([*arguments, "--dataset-size", "1000", "--json", str(path)]) == 0

    report = json.loads(path.read_text())
    assert [row["setting"] for row in report["steps"]] == ["dense ViT (transformers)", "keep 1", "keep 0.7"]
    assert all(row["steps_per_second"] > 0 and row["peak_memory_bytes"] > 0 for row in report["steps"])
    # Training keeps every layer's activations for backward, so fewer tokens means less memory.
    assert report["steps"][2]["peak_memory_bytes"] < 0.9 * report["steps"][1]["peak_memory_bytes"]
    epochs = report["epochs"]
    assert len(epochs) == 3 * 2
    assert [row["steps_per_epoch"] for row in epochs[:2]] == [250, 125]  # 1000 and 500 images at batch 4
    assert epochs[1]["speedup"] == pytest.approx(2.0)  # dense ViT on half the data: exactly half the steps
    assert "epoch of 1,000 images" in capsys.readouterr().out


def test_epoch_projection_divides_the_step_limit_by_the_kept_fraction():
    dense = StepResult("dense", 1.0, 1.0, False, 0.2, 5.0, 1.0, 1.0, 1.0, 1.0, None)
    sparse = StepResult("keep 0.5", 0.5, 1.0, False, 0.1, 10.0, 2.0, 2.0, 1.0, 0.5, None)
    projection = project_epochs([dense, sparse], [0.8], dataset_size=100, batch_size=10)
    assert [p.steps_per_epoch for p in projection] == [8, 8]
    assert projection[1].epoch_seconds == pytest.approx(0.8)
    assert projection[1].speedup == pytest.approx(2.0 / 0.8) and projection[1].flops_limit == pytest.approx(2.5)


def test_epoch_projection_limit_counts_the_same_rounded_steps_as_the_speedup():
    dense = StepResult("dense", 1.0, 1.0, False, 0.2, 5.0, 1.0, 1.0, 1.0, 1.0, None)
    (projection,) = project_epochs([dense], [0.98], dataset_size=65, batch_size=64)
    assert projection.steps_per_epoch == 1  # round(0.98 * 65) = 64 kept examples: one batch instead of two
    assert projection.speedup == pytest.approx(2.0) and projection.flops_limit == pytest.approx(2.0)
    assert projection.fraction_of_limit == pytest.approx(1.0)


def test_time_to_accuracy_trains_dense_and_trilevel_on_the_digits(tmp_path):
    path = tmp_path / "tta.json"
    arguments = ["bench", "train", "--time-to-accuracy", "--epochs", "2", "--max-train-samples", "64",
                 "--hidden-size", "32", "--num-hidden-layers", "2", "--num-attention-heads", "2",
                 "--intermediate-size", "64", "--keep-rates", "0.5", "--example-keep-fractions", "1",
                 "--target-accuracy", "0.05", "--no-progress", "--json", str(path)]  # fmt: skip
    assert main(arguments) == 0

    runs = json.loads(path.read_text())["runs"]
    assert [run["setting"] for run in runs] == ["dense ViT (transformers)", "keep 0.5"]
    for run in runs:
        assert [record["epoch"] for record in run["curve"]] == [1, 2]
        assert run["final_accuracy"] == run["curve"][-1]["accuracy"]
        assert run["train_seconds"] == pytest.approx(run["curve"][-1]["train_seconds"])
        assert run["seconds_to_target"] == run["curve"][0]["train_seconds"]  # chance accuracy beats 5%


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["bench", "inference", "--preset", "deit-huge"], "--preset must be one of"),
        (
            ["bench", "inference", "--keep-rates", "0.7", "1.5"],
            "`--keep-rates` must be in (0, 1] (1.0 keeps everything), got 1.5",
        ),
        (["bench", "inference", "--attention-keep-rates", "0"], "`--attention-keep-rates` must be in (0, 1]"),
        (["bench", "inference", "--device", "tpu"], "--device must be cpu or cuda"),
        (["bench", "inference", "--batch-size", "0"], "`--batch-size` must be an integer >= 1, got 0"),
        (["bench", "inference", "--warmup", "-1"], "`--warmup` must be an integer >= 0, got -1"),
        (["bench", "train", "--dataset-size", "0"], "`--dataset-size` must be an integer >= 1"),
        (["bench", "inference", "--patch-size", "15"], "--patch-size must divide --image-size"),
        (["bench", "inference", "--json", "/no/such/folder/out.json"], "does not exist"),
        (["bench", "train", "--token-prune-layers", "12"], "token_prune_layers"),
        (
            ["bench", "train", "--example-keep-fractions", "1.2"],
            "`--example-keep-fractions` must be in (0, 1]",
        ),
        (["bench", "train", "--time-to-accuracy", "--target-accuracy", "2"], "`--target-accuracy` must be in (0, 1]"),
        (
            ["bench", "train", "--time-to-accuracy", "--max-train-samples", "5"],
            "`--max-train-samples` must be an integer >= 10",
        ),
        (
            ["bench", "train", "--time-to-accuracy", "--num-attention-heads", "0"],
            "`--num-attention-heads` must be an",
        ),
        (
            ["bench", "train", "--time-to-accuracy", "--num-attention-heads", "3"],
            "must divide --hidden-size",
        ),
        (["bench", "inference", "--hidden-size", "0"], "`--hidden-size` must be an integer >= 1"),
        (["bench", "train", "--time-to-accuracy", "--image-size", "64"], "--image-size do not apply"),
        (["bench", "inference", "--keep-rates", "0.7", "0.7000001"], "values that print alike"),
        (["bench", "inference", "--compile", "--warmup", "0"], "--compile needs --warmup >= 1"),
    ],
)
def test_bad_arguments_exit_2_with_a_message_naming_the_argument(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_a_message_not_a_traceback():
    command = [sys.executable, "-m", "hf_trilevel", "bench", "inference", "--device", "cuda"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2
    assert "--device cuda was given, but torch sees no CUDA GPU" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_memory_tracker_counts_live_tensors_once():
    with TensorMemoryTracker() as tracker:
        first = torch.empty(1000)  # 4000 bytes
        second = first + 1  # 4000 more: peak 8000
        del first  # freed
        view = second.view(10, 100)  # shares storage: nothing new
        second.add_(1)  # in place: nothing new
        third = second * 2  # 4000: current 8000, peak still 8000
    assert tracker.peak == 8000
    assert tracker.current == 8000
    del view, second, third
    assert tracker.current == 0


def test_memory_tracker_keeps_a_storage_while_a_view_of_it_lives():
    weight = torch.ones(100)
    with TensorMemoryTracker() as tracker:
        same = weight[:10]  # a view of memory from before the block: not new memory
        base = weight * 2  # 400 bytes
        view = base[:10]
        del base
        assert tracker.current == 400  # the view still holds the storage
        del view
    assert tracker.current == 0 and tracker.peak == 400
    assert same.data_ptr() == weight.data_ptr()


def test_memory_tracker_counts_what_autograd_saves_until_backward():
    weights = torch.randn(1000, requires_grad=True)
    with TensorMemoryTracker() as tracker:
        output = weights.exp()  # exp saves its output for backward
        total = output.sum()
        del output
        assert tracker.current >= 4000  # still held by the graph
        total.backward()
        del total
    assert tracker.current == 4000  # only weights.grad remains
