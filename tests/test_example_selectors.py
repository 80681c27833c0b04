"""The three token selectors in `examples/run_image_classification.py` and `hf_trilevel.recipe`: the
`--token_selector` flags reach the config (from scratch and over a saved folder), bad values stop before any data
loads (exit 2), learned scores get the temperature schedule, and the final evaluation reports the mean kept tokens
per pruning layer (measured from `kept_token_counts`) that model cards quote.

One short end-to-end run (adaptive over learned scores, on 64 digits) checks the plumbing; the rest runs in-process
and stops before training.
"""

import json
from types import SimpleNamespace

import pytest
import torch

from hf_trilevel import SelectorTemperatureSchedule, TriLevelViTForImageClassification
from hf_trilevel.evaluation.flops import measured_flops
from hf_trilevel.evaluation.token_counts import (
    collect_kept_token_counts,
    fixed_kept_token_counts,
    kept_token_counts,
    kept_token_metrics,
)
from hf_trilevel.modeling.token_reduction import token_schedule
from hf_trilevel.modeling.token_selectors import registered_token_selectors
from hf_trilevel.recipe.arguments import ModelArguments
from hf_trilevel.recipe.model import check_config_overrides
from hf_trilevel.recipe.parsing import build_parser

from .helpers import assert_usage_error_before_the_data, images, tiny_config, tiny_model
from .test_example import checked_arguments, load_example, techniques_from_flags
from .test_example_workflow import TINY_MODEL

ADAPTIVE = {"token_selector": "adaptive", "token_keep_rate": 0.7, "token_keep_mass": 0.7}


@pytest.fixture(scope="module")
def example():
    return load_example()


def batches_of(pixel_values: torch.Tensor, size: int) -> list[dict]:
    return [{"pixel_values": chunk, "labels": torch.zeros(len(chunk))} for chunk in pixel_values.split(size)]


# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "importance", "learned"),
    [
        ("class_attention", "class_attention", False),
        ("learned", "class_attention", True),
        ("adaptive", "class_attention", False),
        ("adaptive", "learned", True),
    ],
)
def test_learned_scores_are_those_of_learned_and_of_adaptive_over_learned_importance(selector, importance, learned):
    assert tiny_config(token_selector=selector, token_importance=importance).uses_learned_scores() is learned


def test_collected_counts_are_the_models_counts_per_image_and_the_mode_is_restored():
    model = tiny_model(**ADAPTIVE, initializer_range=0.3).train()
    pixel_values = images(batch_size=6)
    gathered = []
    counts = collect_kept_token_counts(model, batches_of(pixel_values, 4), gather=lambda c: gathered.append(c) or c)
    assert model.training and len(gathered) == 2  # back in training mode; one gather per batch
    with torch.no_grad():
        expected = torch.stack(model.eval()(pixel_values, output_kept_token_indices=True).kept_token_counts, dim=1)
    torch.testing.assert_close(counts, expected, rtol=0, atol=0)
    assert counts.shape == (6, 3) and len(set(counts[:, -1].tolist())) > 1  # adaptive: counts differ per image


def test_counts_fall_back_to_the_valid_slots_of_the_indices():
    indices = (torch.tensor([[3, 1, 2], [4, -1, -1]]), torch.tensor([[1], [-1]]))
    outputs = SimpleNamespace(kept_token_indices=indices)  # an output without `kept_token_counts`
    torch.testing.assert_close(kept_token_counts(outputs), torch.tensor([[3, 1], [1, 0]]))


def test_kept_token_metrics_give_the_mean_per_layer_and_the_measured_flops():
    config = tiny_config(**ADAPTIVE)
    counts = torch.tensor([[45, 30, 20], [40, 20, 10], [44, 31, 9]])
    metrics = kept_token_metrics(config, counts)
    flops = measured_flops(config, list(counts.T))
    assert metrics == pytest.approx(
        {
            "eval_kept_tokens_layer_1": 43.0,
            "eval_kept_tokens_layer_2": 27.0,
            "eval_kept_tokens_layer_3": 13.0,
            "eval_measured_gflops_per_image": flops.flops_per_image / 1e9,
            "eval_measured_flops_speedup_limit": flops.speedup_limit,
        }
    )
    assert kept_token_metrics(config, None) == {} and kept_token_metrics(config, counts[:0]) == {}


def test_fixed_rate_selectors_measure_the_schedule():
    model = tiny_model(token_keep_rate=0.5)
    counts = collect_kept_token_counts(model, batches_of(images(batch_size=3), 2))
    metrics = kept_token_metrics(model.config, counts, prefix="")
    assert [metrics[f"kept_tokens_layer_{layer}"] for layer in (1, 2, 3)] == token_schedule(64, 0.5, 3)
    assert collect_kept_token_counts(tiny_model(token_prune_layers=[]), batches_of(images(), 2)) is None


@pytest.mark.parametrize("selector", ["class_attention", "learned"])
def test_fixed_count_selectors_give_their_schedule_without_a_pass_over_data(selector):
    model = tiny_model(token_selector=selector, token_keep_rate=0.7)
    measured = collect_kept_token_counts(model, batches_of(images(batch_size=3), 3))
    fixed = fixed_kept_token_counts(model.config)
    assert fixed.tolist() == [token_schedule(64, 0.7, 3)] and (measured == fixed).all()
    assert fixed_kept_token_counts(tiny_config(**ADAPTIVE)) is None  # per-image counts must be measured


def test_config_overrides_are_checked_against_the_config_they_change(tmp_path):
    scratch = {"image_size": 16, "patch_size": 4, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    check_config_overrides({"token_selector": "adaptive", "token_keep_mass": 0.9}, scratch=scratch)
    with pytest.raises(ValueError, match="`token_selector` must be one of"):
        check_config_overrides({"token_selector": "random"}, scratch=scratch)
    tiny_model(token_prune_layers=[]).save_pretrained(tmp_path / "unpruned")
    check_config_overrides({"token_selector": "adaptive"}, model_name_or_path=str(tmp_path / "unpruned"))
    with pytest.raises(ValueError, match="`token_prune_layers` is empty"):  # the checkpoint's layers, not a default
        check_config_overrides({"token_selector": "learned"}, model_name_or_path=str(tmp_path / "unpruned"))


# --- examples/run_image_classification.py: flags ----------------------------------------------------------------------


def test_selector_flags_reach_the_config_from_scratch():
    argv = ["--token_selector", "adaptive", "--token_keep_mass", "0.8", "--token_min_keep_rate", "0.3"]
    argv += ["--token_importance", "learned", "--token_count_buckets", "2"]
    model_args = checked_arguments(*argv)[0]
    config = model_args.build_config(["a", "b"])
    assert (config.token_selector, config.token_keep_mass, config.token_min_keep_rate) == ("adaptive", 0.8, 0.3)
    assert (config.token_importance, config.token_count_buckets) == ("learned", 2)
    assert config.token_keep_rate == 0.7  # the scratch default stays
    assert "{" + ",".join(registered_token_selectors()) + "}" in build_parser().format_help()


def test_selector_flags_win_over_a_saved_folder_and_its_values_stay_otherwise(tmp_path):
    tiny_model(**ADAPTIVE, token_min_keep_rate=0.4).save_pretrained(tmp_path / "adaptive")
    names = [str(index) for index in range(5)]
    kept = ModelArguments(model_name_or_path=str(tmp_path / "adaptive")).build_config(names)
    assert (kept.token_selector, kept.token_keep_mass, kept.token_min_keep_rate) == ("adaptive", 0.7, 0.4)
    given = ModelArguments(model_name_or_path=str(tmp_path / "adaptive"), token_selector="learned", token_keep_mass=0.9)
    config = given.build_config(names)
    assert (config.token_selector, config.token_keep_mass, config.token_min_keep_rate) == ("learned", 0.9, 0.4)


def test_the_flags_build_a_learned_model_with_the_temperature_schedule(tmp_path):
    argv = [*TINY_MODEL, "--token_selector", "learned", "--output_dir", str(tmp_path)]
    config, techniques = techniques_from_flags(*argv)
    assert config.token_selector == "learned"
    assert [type(technique) for technique in techniques] == [SelectorTemperatureSchedule]


# --- bad input: exit 2 before any data loads --------------------------------------------------------------------------

BAD_SELECTOR_INPUT = {
    "unknown selector": (["--token_selector", "random"], "`token_selector` must be one of"),
    "mass above 1": (["--token_keep_mass", "1.5"], "`token_keep_mass` must be"),
    "mass 0": (["--token_keep_mass", "0"], "`token_keep_mass` must be"),
    "floor above 1": (["--token_min_keep_rate", "2"], "`token_min_keep_rate` must be"),
    "unknown importance": (["--token_importance", "entropy"], "`token_importance` must be one of"),
    "temperature 0": (
        ["--token_selector_temperature_end", "0"],
        "`token_selector_temperature_end` must be in (0, inf)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SELECTOR_INPUT))
def test_bad_selector_input_stops_before_the_data_loads(case, example, tmp_path, capsys):
    assert_usage_error_before_the_data(example, *BAD_SELECTOR_INPUT[case], tmp_path, capsys)


def test_a_learned_selector_without_pruning_layers_is_a_usage_error(example, tmp_path, capsys):
    arguments = {"token_selector": "learned", "token_prune_layers": [], "output_dir": str(tmp_path / "out")}
    (tmp_path / "args.json").write_text(json.dumps({**arguments, "train_dir": str(tmp_path / "missing")}))
    with pytest.raises(SystemExit) as raised:
        example.main([str(tmp_path / "args.json")])
    assert raised.value.code == 2
    assert "`token_prune_layers` is empty" in capsys.readouterr().err


# --- end to end -------------------------------------------------------------------------------------------------------


def test_an_adaptive_run_reports_the_mean_kept_tokens_per_layer_and_its_card_quotes_them(example, tmp_path, capsys):
    example.main(
        [
            *TINY_MODEL,
            "--token_selector", "adaptive", "--token_importance", "learned", "--token_keep_mass", "0.6",
            "--num_train_epochs", "1", "--max_train_samples", "32", "--max_eval_samples", "32",
            "--per_device_train_batch_size", "16", "--logging_steps", "1",
            "--output_dir", str(tmp_path), "--disable_tqdm", "True",
        ]
    )  # fmt: skip
    stdout = capsys.readouterr().out
    assert "selector adaptive (token_keep_mass=0.6" in stdout
    assert "patch tokens kept per image after each pruning layer (mean): " in stdout
    # The temperature callback annealed the learned scores from 10 (step 1) to 0.1 (the last step, 2).
    assert "'token_selector_temperature': '10'" in stdout and "'token_selector_temperature': '0.1'" in stdout
    model = TriLevelViTForImageClassification.from_pretrained(tmp_path)
    config = model.config
    assert (config.token_selector, config.token_importance, config.token_keep_mass) == ("adaptive", "learned", 0.6)
    evaluation = json.loads((tmp_path / "eval_results.json").read_text())
    patches, layers = 16, config.token_prune_layers  # 16 px images of 4 px patches; 2 layers: [0, 1]
    means = [evaluation[f"eval_kept_tokens_layer_{layer}"] for layer in layers]
    caps = token_schedule(patches, 0.7, len(layers))
    floors = token_schedule(patches, 0.25, len(layers))
    assert all(floor <= mean <= cap for floor, mean, cap in zip(floors, means, caps, strict=True))
    assert evaluation["eval_measured_gflops_per_image"] <= evaluation["eval_gflops_per_image"]  # the cap
    assert json.loads((tmp_path / "all_results.json").read_text())["eval_kept_tokens_layer_0"] == means[0]
    card = (tmp_path / "README.md").read_text()
    assert "| `token_selector` | `adaptive` |" in card and "| `token_keep_mass` | 0.6 |" in card
    assert "(measured mean) | " + " → ".join(f"{mean:.1f}" for mean in means) in card
    assert "| learned scores' Gumbel temperature | start=10.0, end=0.1, schedule=linear per step |" in card
