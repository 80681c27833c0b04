"""`hf-trilevel bench`: end to end on a tiny shape on CPU, the JSON it writes, and clean failures on bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hf_trilevel
from hf_trilevel.cli import build_parser, main
from hf_trilevel.cli.bench.models import build_models_by_selector, slimmed_model, switch_setting
from hf_trilevel.cli.bench.options import RunTarget, model_shape
from hf_trilevel.cli.bench.settings import Setting, settings
from hf_trilevel.cli.bench.slimmed_shapes import slimmed_size
from hf_trilevel.cli.bench.timing import TensorMemoryTracker
from hf_trilevel.cli.bench.token_budget import calibrate_keep_mass, kept_token_counts
from hf_trilevel.cli.bench.training import StepResult, dense_sparse_step, project_epochs
from hf_trilevel.evaluation.flops import forward_flops, measured_flops
from hf_trilevel.modeling.token_reduction import token_schedule

from .helpers import images, sharpen_attention, tiny_config, tiny_model

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
    # Inference peaks in the first layers, before any token is dropped (up to the model's few `[batch]` count
    # tensors per pruning layer, which it keeps for `kept_token_counts`).
    assert results["keep 0.5"]["peak_memory_bytes"] == pytest.approx(results["keep 1"]["peak_memory_bytes"], abs=256)
    overhead = results["keep 0.5, attention 0.3"]["attention_overhead"]
    ratio = results["keep 0.5, attention 0.3"]["median_seconds"] / results["keep 0.5"]["median_seconds"]
    assert overhead == pytest.approx(ratio - 1)
    assert results["keep 0.5"]["attention_overhead"] is None
    assert "| keep 0.5, attention 0.3 |" in capsys.readouterr().out


def test_inference_times_every_selector_and_reports_the_tokens_it_kept(tmp_path, capsys):
    path = tmp_path / "selectors.json"
    arguments = ["bench", "inference", *TINY, *QUICK, "--keep-rates", "0.5", "--attention-keep-rates", "1",
                 "--token-selector", "class_attention", "learned", "adaptive", "--token-keep-mass", "0.3", "1",
                 "--no-memory", "--json", str(path)]  # fmt: skip
    assert main(arguments) == 0

    results = {row["setting"]: row for row in json.loads(path.read_text())["results"]}
    assert list(results) == ["dense ViT (transformers)", "keep 0.5", "keep 0.5, learned",
                             "keep 0.5, adaptive mass 0.3", "keep 0.5, adaptive mass 1"]  # fmt: skip
    fixed, learned = results["keep 0.5"], results["keep 0.5, learned"]
    assert fixed["mean_kept_tokens"] == learned["mean_kept_tokens"] == [32, 16, 8]
    assert learned["token_selector"] == "learned"
    assert learned["flops_limit"] < fixed["flops_limit"]  # its scorer runs on every current patch
    assert results["dense ViT (transformers)"]["mean_kept_tokens"] is None
    # Random weights attend almost uniformly: mass 0.3 keeps about 30% of each layer's patches, above the floor.
    low = results["keep 0.5, adaptive mass 0.3"]
    assert low["token_keep_mass"] == 0.3
    assert all(a < b for a, b in zip(low["mean_kept_tokens"], fixed["mean_kept_tokens"], strict=True))
    assert low["min_kept_tokens"][0] >= 16  # ceil(64 * min(token_min_keep_rate, token_keep_rate))
    assert low["flops_limit"] > fixed["flops_limit"]
    for name in ("keep 0.5, adaptive mass 0.3", "keep 0.5, adaptive mass 1"):
        row = results[name]
        assert row["fixed_rate_speedup_share"] == pytest.approx(row["speedup"] / fixed["speedup"])
    assert results["keep 0.5, adaptive mass 1"]["mean_kept_tokens"] == [32, 16, 8]  # mass 1.0 is the fixed rate
    assert fixed["fixed_rate_speedup_share"] is None
    output = capsys.readouterr().out
    assert "| keep 0.5, adaptive mass 0.3 |" in output and "| 32 / 16 / 8 |" in output
    assert "random weights (seed 0)" in output


def test_inference_times_slimmed_shapes_beside_dense_vit_with_their_kept_units_and_limit(tmp_path, capsys):
    path = tmp_path / "slimmed.json"
    arguments = ["bench", "inference", *TINY, *QUICK, "--keep-rates", "1", "0.5", "--attention-keep-rates", "1",
                 "--head-densities", "1", "0.5", "--neuron-densities", "1", "0.25", "--no-memory",
                 "--json", str(path)]  # fmt: skip
    assert main(arguments) == 0

    results = {row["setting"]: row for row in json.loads(path.read_text())["results"]}
    assert list(results) == ["dense ViT (transformers)", "keep 1", "keep 0.5", "keep 1, heads 0.5, neurons 0.25",
                             "keep 0.5, heads 0.5, neurons 0.25"]  # fmt: skip
    full, slim = results["keep 1"], results["keep 1, heads 0.5, neurons 0.25"]
    assert full["heads_per_layer"] == [2] * 4 and full["intermediate_size_per_layer"] == [64] * 4
    assert slim["heads_per_layer"] == [1] * 4 and slim["intermediate_size_per_layer"] == [16] * 4
    assert (slim["head_density"], slim["neuron_density"]) == (0.5, 0.25)
    # The limit is against the full-width dense ViT, so it counts the removed units and the dropped tokens.
    shape = {"num_labels": 10}
    dense = forward_flops(tiny_config(**shape))
    sizes = {"num_attention_heads_per_layer": [1] * 4, "intermediate_size_per_layer": [16] * 4}
    assert slim["flops_limit"] == pytest.approx(dense / forward_flops(tiny_config(**shape, **sizes)))
    both = results["keep 0.5, heads 0.5, neurons 0.25"]
    assert both["mean_kept_tokens"] == results["keep 0.5"]["mean_kept_tokens"] == [32, 16, 8]
    assert both["flops_limit"] == pytest.approx(
        dense / forward_flops(tiny_config(**shape, **sizes, token_keep_rate=0.5))
    )
    assert both["fraction_of_limit"] == pytest.approx(both["speedup"] / both["flops_limit"])
    assert "| 1 of 2 heads, 16 of 64 neurons |" in capsys.readouterr().out


def test_inference_times_merging_rows_with_their_merged_counts_and_limit(tmp_path, capsys):
    path = tmp_path / "merging.json"
    arguments = ["bench", "inference", *TINY, *QUICK, "--keep-rates", "1", "0.7", "--attention-keep-rates", "1",
                 "--token-merge-r", "0", "4", "--no-memory", "--json", str(path)]  # fmt: skip
    assert main(arguments) == 0

    report = json.loads(path.read_text())
    assert report["arguments"]["token_merge_r"] == [0, 4]
    results = {row["setting"]: row for row in report["results"]}
    assert list(results) == ["dense ViT (transformers)", "keep 1", "keep 1, merge r=4", "keep 0.7",
                             "keep 0.7, merge r=4"]  # fmt: skip
    merged, both = results["keep 1, merge r=4"], results["keep 0.7, merge r=4"]
    assert merged["token_merge_r"] == 4 and results["keep 1"]["token_merge_r"] == 0
    # Kept after each pruning layer's drop and merge: layer 0 merges 64 -> 60, then 60 - 4, 56 - 4, 52 - 4.
    assert merged["mean_kept_tokens"] == [56, 52, 48]
    assert both["mean_kept_tokens"] == [38, 23, 13]  # 60 -> 42 - 4, 38 -> 27 - 4, 23 -> 17 - 4
    dense = forward_flops(tiny_config(num_labels=10))
    assert merged["flops_limit"] == pytest.approx(dense / forward_flops(tiny_config(num_labels=10, token_merge_r=4)))
    assert both["flops_limit"] > results["keep 0.7"]["flops_limit"] > merged["flops_limit"] > 1.0
    assert merged["fraction_of_limit"] == pytest.approx(merged["speedup"] / merged["flops_limit"])
    assert "| keep 1, merge r=4 |" in capsys.readouterr().out


def test_train_times_merging_steps(tmp_path):
    path = tmp_path / "train_merging.json"
    arguments = ["bench", "train", *TINY, *QUICK, "--keep-rates", "1", "--token-merge-r", "4", "--no-memory",
                 "--example-keep-fractions", "1", "--dataset-size", "100", "--json", str(path)]  # fmt: skip
    assert main(arguments) == 0
    steps = {row["setting"]: row for row in json.loads(path.read_text())["steps"]}
    assert list(steps) == ["dense ViT (transformers)", "keep 1, merge r=4"]
    merged = steps["keep 1, merge r=4"]
    assert merged["token_merge_r"] == 4 and merged["mean_kept_tokens"] == [56, 52, 48]
    assert merged["flops_limit"] == pytest.approx(
        forward_flops(tiny_config(num_labels=10)) / forward_flops(tiny_config(num_labels=10, token_merge_r=4))
    )
    assert merged["steps_per_second"] > 0


def test_merging_rows_switch_on_one_model_and_restore_the_others():
    model = tiny_model(token_keep_rate=0.7)
    switch_setting(model, Setting(1.0, token_merge_r=4))()
    with torch.no_grad():
        counts = model(images(2), output_kept_token_indices=True).kept_token_counts
    assert [int(count[0]) for count in counts] == [56, 52, 48]
    switch_setting(model, Setting(0.7, 0.5))()  # attention sparsity: merging must be off again
    assert model.config.token_merge_r == 0 and model.config.attention_keep_rate == 0.5


def bench_settings(*arguments: str) -> list[Setting]:
    argv = ["bench", "inference", "--keep-rates", "1", "--attention-keep-rates", "1", *arguments]
    return settings(build_parser(argv).parse_args(argv))


def densities(rows: list[Setting]) -> list[tuple[float, float]]:
    return [(row.head_density, row.neuron_density) for row in rows]


def test_density_lists_pair_by_position_and_a_single_value_applies_to_every_shape():
    assert densities(bench_settings()) == [(1.0, 1.0)]
    assert densities(bench_settings("--head-densities", "1", "0.7", "--neuron-densities", "1", "0.5")) == [
        (1.0, 1.0), (0.7, 0.5)
    ]  # fmt: skip
    assert densities(bench_settings("--head-densities", "0.5", "--neuron-densities", "1", "0.5")) == [
        (0.5, 1.0), (0.5, 0.5)
    ]  # fmt: skip
    assert densities(bench_settings("--neuron-densities", "0.5")) == [(1.0, 0.5)]  # an absent flag is 1


def test_every_keep_rate_row_is_timed_on_every_slimmed_shape():
    rows = bench_settings("--keep-rates", "1", "0.7", "--head-densities", "0.5", "--neuron-densities", "0.5")
    assert [row.name for row in rows] == ["keep 1, heads 0.5, neurons 0.5", "keep 0.7, heads 0.5, neurons 0.5"]
    assert len({row.model_key for row in rows}) == 1  # one slimmed model, switched between the keep rates


def test_a_layer_keeps_the_rounded_share_of_its_units_and_at_least_one():
    assert [slimmed_size(density, 3) for density in (1.0, 0.7, 0.5, 0.01)] == [3, 2, 2, 1]
    assert [slimmed_size(density, 1536) for density in (0.7, 0.5)] == [1075, 768]
    assert slimmed_size(0.5, 5) == 3  # halves round up, as structured sparsity counts its units


def test_a_slimmed_model_is_the_full_model_with_its_other_heads_and_neurons_zeroed():
    model = tiny_model(token_keep_rate=0.5, attention_keep_rate=0.5)
    slim = slimmed_model(model, 0.5, 0.5)
    assert slim.config.num_attention_heads_per_layer == [1] * 4 and slim.config.intermediate_size_per_layer == [32] * 4
    assert (slim.config.token_keep_rate, slim.config.attention_keep_rate) == (0.5, 0.5)
    with torch.no_grad():
        for layer in model.vit.layers:  # head 1 owns rows 16:32 of q/k/v and columns 16:32 of o_proj
            attention, mlp = layer.attention, layer.mlp
            for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
                projection.weight[16:] = 0
                projection.bias[16:] = 0
            mlp.fc1.weight[32:] = 0
            mlp.fc1.bias[32:] = 0
            mlp.fc2.weight[:, 32:] = 0
            attention.o_proj.weight[:, 16:] = 0
        assert torch.allclose(slim(images(3)).logits, model(images(3)).logits, atol=1e-5)
    # The very weights `hf_trilevel.slim` leaves of those zeros: the timed shape is the one a user gets.
    reference = hf_trilevel.slim(model).state_dict()
    assert all(torch.equal(tensor, reference[name]) for name, tensor in slim.state_dict().items())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--head-densities", "0"], "`--head-densities` must be in (0, 1], got 0.0"),
        (["--head-densities", "1", "1.5"], "`--head-densities` must be in (0, 1], got 1.5"),
        (["--neuron-densities", "-0.5"], "`--neuron-densities` must be in (0, 1], got -0.5"),
        (
            ["--head-densities", "1", "0.7", "0.5", "--neuron-densities", "1", "0.5"],
            "--head-densities and --neuron-densities pair up by position: give both the same number of values, or "
            "one of them a single value for every shape; got 3 and 2 values.",
        ),
        (["--head-densities", "0.5", "0.5000001"], "values that print alike"),
    ],
)
def test_bad_densities_exit_2_naming_the_flag(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "inference", *TINY, *QUICK, *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_calibration_finds_the_mass_that_matches_a_fixed_rate_budget():
    model = sharpen_attention(tiny_model(token_selector="adaptive", token_keep_rate=1.0), factor=8.0)
    pixel_values = images(6)
    target = token_schedule(64, 0.6, 3)[-1]  # 64 -> 39 -> 24 -> 15 patch tokens at the fixed rate
    calibration = calibrate_keep_mass(model, pixel_values, float(target))
    assert 0 < calibration.token_keep_mass < 1 and model.config.token_keep_mass == calibration.token_keep_mass
    counts = kept_token_counts(model, pixel_values)
    assert calibration.mean_kept_tokens == counts[-1].double().mean().item()
    assert abs(calibration.mean_kept_tokens - target) <= 0.5
    assert len(set(counts[-1].tolist())) > 1  # an equal budget on average, spread unequally over the images


def test_match_fixed_rate_on_a_saved_folder_spends_the_fixed_rate_budget(tmp_path, capsys):
    folder = tmp_path / "trained"
    sharpen_attention(tiny_model(token_selector="learned", token_keep_rate=0.7), factor=5.0).save_pretrained(folder)
    path = tmp_path / "matched.json"
    arguments = ["bench", "inference", "--model", str(folder), *QUICK, "--batch-size", "6", "--keep-rates", "0.7",
                 "--attention-keep-rates", "1", "--token-selector", "class_attention", "learned", "adaptive",
                 "--match-fixed-rate", "--no-memory", "--json", str(path)]  # fmt: skip
    assert main(arguments) == 0

    report = json.loads(path.read_text())
    assert report["shape"]["checkpoint"] == str(folder) and report["shape"]["hidden_size"] == 32
    results = {row["setting"]: row for row in report["results"]}
    assert list(results) == ["dense ViT (transformers)", "keep 0.7", "keep 0.7, learned", "adaptive at keep 0.7 tokens"]
    matched = results["adaptive at keep 0.7 tokens"]
    assert matched["token_keep_rate"] == 1.0 and matched["matched_keep_rate"] == 0.7
    assert matched["target_kept_tokens"] == results["keep 0.7"]["mean_kept_tokens"][-1] == 23
    assert abs(matched["mean_kept_tokens"][-1] - 23) <= 0.5
    assert matched["min_kept_tokens"][0] < matched["max_kept_tokens"][0]
    assert matched["fixed_rate_speedup_share"] == pytest.approx(matched["speedup"] / results["keep 0.7"]["speedup"])
    assert f"weights from {folder}" in capsys.readouterr().out


def test_models_built_from_a_saved_folder_hold_its_weights_and_its_scorer(tmp_path):
    folder = tmp_path / "trained"
    saved = sharpen_attention(tiny_model(token_selector="learned", token_keep_rate=0.7), factor=5.0)
    with torch.no_grad():  # a scorer that has learned something: it no longer ranks as class attention does
        for layer in (1, 2, 3):
            torch.nn.init.normal_(saved.vit.layers[layer].token_selector.scorer.output.weight, std=5.0)
    saved.save_pretrained(folder)
    argv = ["bench", "inference", "--model", str(folder)]
    shape = model_shape(build_parser(argv).parse_args(argv))
    target = RunTarget(torch.device("cpu"), torch.float32, "sdpa")
    dense, models = build_models_by_selector(shape, target, ["class_attention", "learned"])
    pixel_values = images(3)
    with torch.no_grad():
        dense_logits = dense.eval()(pixel_values).logits
        assert torch.allclose(models["class_attention"].eval()(pixel_values).logits, dense_logits, atol=1e-5)
        models["learned"].eval().set_keep_rates(0.7)
        models["class_attention"].set_keep_rates(0.7)
        learned = models["learned"](pixel_values, output_kept_token_indices=True)
        reference = saved(pixel_values, output_kept_token_indices=True)
        ranked = models["class_attention"](pixel_values, output_kept_token_indices=True)
    assert torch.allclose(learned.logits, reference.logits, atol=1e-5)
    assert torch.equal(learned.kept_token_indices[-1], reference.kept_token_indices[-1])
    assert not torch.equal(learned.kept_token_indices[-1], ranked.kept_token_indices[-1])


def test_bench_flops_limit_is_the_measured_one():
    model = sharpen_attention(
        tiny_model(token_selector="adaptive", token_keep_rate=1.0, token_keep_mass=0.6), factor=5.0
    )
    counts = kept_token_counts(model, images(4))
    with torch.no_grad():
        direct = model(images(4), output_kept_token_indices=True).kept_token_counts
    assert all(torch.equal(a, b) for a, b in zip(counts, direct, strict=True))
    assert measured_flops(model.config, counts).speedup_limit > 1.0


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


def test_train_times_each_selector_with_its_own_model(tmp_path):
    path = tmp_path / "train_selectors.json"
    arguments = ["bench", "train", *TINY, *QUICK, "--keep-rates", "0.5", "--token-selector", "learned", "adaptive",
                 "--token-keep-mass", "0.5", "--example-keep-fractions", "1", "--dataset-size", "100", "--no-memory",
                 "--json", str(path)]  # fmt: skip
    assert main(arguments) == 0
    steps = {row["setting"]: row for row in json.loads(path.read_text())["steps"]}
    assert list(steps) == ["dense ViT (transformers)", "keep 0.5, learned", "keep 0.5, adaptive mass 0.5"]
    assert steps["keep 0.5, learned"]["token_selector"] == "learned"
    assert steps["keep 0.5, learned"]["mean_kept_tokens"] == [32, 16, 8]  # Gumbel noise in training, same count
    adaptive = steps["keep 0.5, adaptive mass 0.5"]
    assert adaptive["token_keep_mass"] == 0.5 and adaptive["mean_kept_tokens"][0] <= 32
    assert adaptive["flops_limit"] >= steps["keep 0.5, learned"]["flops_limit"]  # no more tokens, no scorer
    assert all(row["steps_per_second"] > 0 for row in steps.values())


def test_train_times_a_dense_sparse_step_against_dense_vit_and_counts_every_pass(tmp_path, capsys):
    path = tmp_path / "dense_sparse.json"
    arguments = ["bench", "train", *TINY, *QUICK, "--keep-rates", "1", "--attention-keep-rates", "0.5",
                 "--dense-sparse-keep-rates", "0.5", "1", "--distillation", "none", "--example-keep-fractions", "1",
                 "--dataset-size", "100", "--no-memory", "--json", str(path)]  # fmt: skip
    assert main(arguments) == 0
    steps = {row["setting"]: row for row in json.loads(path.read_text())["steps"]}
    name = "dense/sparse 1/0.5, attention 0.5"
    assert list(steps) == ["dense ViT (transformers)", "keep 1, attention 0.5", name]
    row = steps[name]
    assert (row["dense_sparse_keep_rates"], row["distillation"], row["dense_sparse_schedule"]) == (
        [1.0, 0.5], "none", "dense_and_one"
    )  # fmt: skip
    # One step: the dense pass (keep 1.0, full attention) and the sparse pass (keep 0.5, attention 0.5).
    shape = {"num_labels": 10}
    dense = forward_flops(tiny_config(**shape))
    sparse = forward_flops(tiny_config(**shape, token_keep_rate=0.5, attention_keep_rate=0.5))
    assert row["flops_limit"] == pytest.approx(dense / (dense + sparse))
    assert row["steps_per_second"] > 0 and row["speedup"] < 1.0
    assert f"| {name} |" in capsys.readouterr().out


def test_a_dense_sparse_step_runs_the_dense_pass_then_the_sparse_rates_in_turn():
    model = tiny_model(token_keep_rate=0.5, attention_keep_rate=0.5).train()
    passes = []
    model.register_forward_pre_hook(
        lambda module, args: passes.append((module.config.token_keep_rate, module.config.attention_keep_rate))
    )
    setting = Setting(0.5, 0.5, dense_sparse_keep_rates=(1.0, 0.7, 0.5), distillation="self")
    target = RunTarget(torch.device("cpu"), torch.float32, "sdpa")
    step = dense_sparse_step(target, images(2), torch.tensor([0, 1]))(model, model, setting)
    before = model.classifier.weight.detach().clone()
    step()
    step()
    assert passes == [(1.0, 1.0), (0.7, 0.5), (1.0, 1.0), (0.5, 0.5)]
    assert (model.config.token_keep_rate, model.config.attention_keep_rate) == (0.5, 0.5)  # the row's own rates
    assert model.config.dense_sparse_keep_rates is None  # shared with other rows: no record left behind
    assert not torch.equal(model.classifier.weight, before)  # an optimizer step happened


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--distillation", "self"], "--distillation applies to dense/sparse rows"),
        (["--dense-sparse-schedule", "every_rate"], "--dense-sparse-schedule applies to dense/sparse rows"),
        (["--dense-sparse-keep-rates", "0.5"], "--dense-sparse-keep-rates must be at least two distinct keep rates"),
        (["--dense-sparse-keep-rates", "1", "1.5"], "`--dense-sparse-keep-rates` must be in (0, 1]"),
        (["--dense-sparse-keep-rates", "1", "0.5", "--time-to-accuracy"], "does not apply to --time-to-accuracy"),
    ],
)
def test_bad_dense_sparse_arguments_exit_2_naming_the_argument(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "train", *TINY, *QUICK, *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


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


def test_time_to_accuracy_targets_each_seeds_dense_accuracy_and_summarises_over_seeds(tmp_path, capsys):
    path = tmp_path / "tta_seeds.json"
    arguments = ["bench", "train", "--time-to-accuracy", "--epochs", "2", "--max-train-samples", "64",
                 "--hidden-size", "32", "--num-hidden-layers", "2", "--num-attention-heads", "2",
                 "--intermediate-size", "64", "--keep-rates", "0.5", "--example-keep-fractions", "1",
                 "--seeds", "0", "1", "--target-below-dense", "0.3", "--no-progress", "--json", str(path)]  # fmt: skip
    assert main(arguments) == 0
    runs = json.loads(path.read_text())["runs"]
    assert [(run["setting"], run["seed"]) for run in runs] == [
        ("dense ViT (transformers)", 0), ("keep 0.5", 0), ("dense ViT (transformers)", 1), ("keep 0.5", 1)
    ]  # fmt: skip
    for dense, sparse in (runs[:2], runs[2:]):
        assert dense["target_accuracy"] == sparse["target_accuracy"] == pytest.approx(dense["final_accuracy"] - 0.003)
        assert dense["seconds_to_target"] is not None  # dense reaches its own final accuracy, at the latest at the end
        first = next((r["train_seconds"] for r in sparse["curve"] if r["accuracy"] >= sparse["target_accuracy"]), None)
        assert sparse["seconds_to_target"] == first
    assert runs[0]["curve"] != runs[2]["curve"]  # the seed changed the run
    output = capsys.readouterr().out
    assert "over 2 seeds (mean ± sd):" in output and "| reached dense - 0.3 pt |" in output


def test_time_to_accuracy_compares_policies_at_one_data_budget_on_the_redundant_digits(tmp_path, capsys, monkeypatch):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    policy_block = next(b for b in readme.split("```python\n")[1:] if "class HighestLossPolicy" in b).split("```")[0]
    # The README's own policy, raced as the README says, under a module name no other test imports.
    (tmp_path / "bench_readme_policies.py").write_text(policy_block)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "tta_redundant.json"
    arguments = ["bench", "train", "--time-to-accuracy", "--epochs", "3", "--max-train-samples", "64",
                 "--image-size", "16", "--patch-size", "8", "--hidden-size", "32", "--num-hidden-layers", "2",
                 "--num-attention-heads", "2", "--intermediate-size", "64", "--keep-rates", "1",
                 "--attention-keep-rates", "1", "--example-keep-fractions", "1", "0.8", "--dataset",
                 "digits-redundant", "--example-policy", "random", "loss", "forgetting",
                 "bench_readme_policies:HighestLossPolicy", "--no-progress", "--json", str(path)]  # fmt: skip
    assert main(arguments) == 0
    report = json.loads(path.read_text())
    runs = report["runs"]
    assert [(run["setting"], run["policy"]) for run in runs] == [
        ("dense ViT (transformers)", None), ("keep 1, random examples 0.8", "random"),
        ("keep 1, loss examples 0.8", "loss"), ("keep 1, forgetting examples 0.8", "forgetting"),
        ("keep 1, bench_readme_policies:HighestLossPolicy examples 0.8", "bench_readme_policies:HighestLossPolicy"),
    ]  # fmt: skip
    assert runs[0]["examples_seen"] == 3 * 64
    # Every policy spends the same data budget: round(0.8 x 64) a epoch, or loss's round(0.8 x 64 x 3) in all.
    assert [run["examples_seen"] for run in runs[1:]] == [3 * 51, 154, 3 * 51, 3 * 51]
    assert report["shape"]["image_size"] == 16 and report["shape"]["patch_size"] == 8
    assert report["arguments"]["dataset"] == "digits-redundant"
    output = capsys.readouterr().out
    assert "digits-redundant (64 train / 360 validation images)" in output and "| data seen |" in output


def test_time_to_accuracy_trains_the_learned_and_adaptive_selectors(tmp_path):
    path = tmp_path / "tta_selectors.json"
    arguments = ["bench", "train", "--time-to-accuracy", "--epochs", "1", "--max-train-samples", "32",
                 "--hidden-size", "32", "--num-hidden-layers", "2", "--num-attention-heads", "2",
                 "--intermediate-size", "64", "--keep-rates", "0.5", "--example-keep-fractions", "1",
                 "--token-selector", "learned", "adaptive", "--token-keep-mass", "0.8", "--no-progress",
                 "--json", str(path)]  # fmt: skip
    assert main(arguments) == 0
    runs = json.loads(path.read_text())["runs"]
    assert [run["setting"] for run in runs] == ["dense ViT (transformers)", "keep 0.5, learned",
                                                "keep 0.5, adaptive mass 0.8"]  # fmt: skip
    assert all(0 <= run["final_accuracy"] <= 1 for run in runs)


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
        (["bench", "train", "--time-to-accuracy", "--target-below-dense", "-1"], "`--target-below-dense` must be in"),
        (["bench", "train", "--time-to-accuracy", "--seeds", "0", "-3"], "`--seeds` must be an integer in [0, "),
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
        (
            ["bench", "train", "--time-to-accuracy", "--image-size", "2048"],
            "`--image-size` must be an integer in [8, 1024]",
        ),
        (["bench", "train", "--time-to-accuracy", "--patch-size", "5"], "--patch-size must divide --image-size"),
        (
            [
                "bench",
                "train",
                "--time-to-accuracy",
                "--epochs",
                "4",
                "--example-keep-fractions",
                "1",
                "0.5",
                "--example-policy",
                "random",
                "loss",
            ],
            "--example-policy loss --example-keep-fractions 0.5: the loss policy's `budget` 0.5 is out of reach",
        ),
        (
            [
                "bench",
                "train",
                "--time-to-accuracy",
                "--example-keep-fractions",
                "1",
                "0.5",
                "--example-policy",
                "no_such_module:Policy",
            ],
            "`policy` 'no_such_module:Policy' cannot be imported",
        ),
        (
            [
                "bench",
                "train",
                "--time-to-accuracy",
                "--max-train-samples",
                "10",
                "--epochs",
                "10",
                "--example-keep-fractions",
                "1",
                "0.31",
                "--example-policy",
                "loss",
            ],
            "--example-policy loss --example-keep-fractions 0.31: the loss policy's `budget` 0.31 would skip",
        ),
        (
            ["bench", "train", "--time-to-accuracy", "--example-policy", "bogus"],
            "must be one of forgetting, random, loss or package.module:ClassName, got 'bogus'",
        ),
        (["bench", "inference", "--keep-rates", "0.7", "0.7000001"], "values that print alike"),
        (["bench", "inference", "--token-merge-r", "-1"], "`--token-merge-r` must be an integer >= 0, got -1"),
        (
            ["bench", "inference", "--token-merge-r", "0", "8", "--attention-keep-rates", "1", "0.3"],
            "--token-merge-r 8 cannot be combined with --attention-keep-rates 0.3",
        ),
        (
            ["bench", "train", "--token-merge-r", "8", "--token-selector", "class_attention", "adaptive"],
            "--token-merge-r 8 cannot be combined with `--token-selector adaptive`",
        ),
        (
            ["bench", "inference", "--keep-rates", "1", "0.5", "--attention-keep-rates", "1", "--token-merge-r", "13"],
            "--keep-rates 0.5 with --token-merge-r 13 (row 'keep 0.5, merge r=13'): `token_merge_r` merges 13 tokens",
        ),
        (["bench", "train", "--time-to-accuracy", "--token-merge-r", "4"], "--token-merge-r times training steps"),
        (["bench", "inference", "--compile", "--warmup", "0"], "--compile needs --warmup >= 1"),
        (
            ["bench", "inference", "--token-selector", "class_attention", "random"],
            "`--token-selector` must be one of class_attention, learned, adaptive, got 'random'",
        ),
        (
            ["bench", "train", "--token-selector", "adaptive", "--token-keep-mass", "0.9", "1.5"],
            "`--token-keep-mass` must be in (0, 1], got 1.5",
        ),
        (["bench", "inference", "--token-selector", "adaptive", "--token-keep-mass", "0"], "`--token-keep-mass`"),
        (["bench", "inference", "--token-keep-mass", "0.9"], "--token-keep-mass applies to the adaptive selector"),
        (
            ["bench", "inference", "--token-selector", "adaptive", "--match-fixed-rate", "--token-keep-mass", "0.9"],
            "--token-keep-mass does not apply with --match-fixed-rate",
        ),
        (
            [
                "bench",
                "inference",
                "--token-selector",
                "adaptive",
                "--match-fixed-rate",
                "--match-max-keep-rate",
                "1.2",
            ],
            "`--match-max-keep-rate` must be in (0, 1]",
        ),
        (["bench", "inference", "--match-fixed-rate"], "--match-fixed-rate calibrates adaptive rows"),
        (["bench", "inference", "--match-max-keep-rate", "0.9"], "applies with --match-fixed-rate only"),
        (["bench", "train", "--token-count-buckets", "0"], "`--token-count-buckets` must be an integer >= 1"),
        (["bench", "inference", "--model", "/no/such/folder"], "no config.json there"),
        (["bench", "inference", "--model", "/no/such/folder", "--hidden-size", "64"], "do not apply with --model"),
        (["bench", "train", "--time-to-accuracy", "--model", "/no/such/folder"], "--model do not apply"),
        (
            ["bench", "train", "--time-to-accuracy", "--token-selector", "bogus"],
            "`--token-selector` must be one of",
        ),
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
