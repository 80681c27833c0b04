"""Settings that would be silently ignored are acted on or refused (issue 24, items 2, 8 and 9).

`--save_steps` without `--save_strategy` saves by steps (the recipe's default saves nothing); selector and
example-pruning flags the chosen selector or policy does not read stop with exit 2; per-layer sizes wider than the
config are refused; an unreachable `--budget` and an output folder holding only incomplete checkpoints say what to do.
Everything runs in-process and stops before any data loads (a `--train_dir` that does not exist).
"""

import json
import re

import pytest

from hf_trilevel import TriLevelViTConfig
from hf_trilevel.example_pruning.arguments import ExamplePruningArguments
from hf_trilevel.example_pruning.policies import LossPolicy
from hf_trilevel.recipe.arguments import ModelArguments
from hf_trilevel.recipe.checks import check_output_dir, check_selector_settings, resolve_resume_checkpoint
from hf_trilevel.recipe.parsing import build_parser, parse_flags_or_json, resolve_defaults

from .helpers import assert_usage_error_before_the_data, tiny_model
from .test_bad_input import TINY_MODEL
from .test_example import load_example


@pytest.fixture(scope="module")
def example():
    return load_example()


def training_arguments(*argv: str, tmp_path=None):
    """The `TrainingArguments` the example parses from `argv` (flags, or one JSON file)."""
    return parse_flags_or_json(build_parser(), list(argv), resolve_defaults)[-1]


# --- item 2: --save_steps alone saves checkpoints ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "strategy"),
    [
        ([], "no"),  # `make example`: no checkpoints, fast
        (["--save_steps", "4"], "steps"),
        (["--save_total_limit", "2"], "steps"),
        (["--save_strategy", "epoch", "--save_steps", "4"], "epoch"),
        (["--save_strategy", "steps", "--save_steps", "4"], "steps"),
    ],
)
def test_save_steps_without_a_save_strategy_saves_by_steps_as_transformers_would(argv, strategy):
    assert training_arguments(*argv).save_strategy.value == strategy


def test_save_steps_in_a_json_file_saves_by_steps_too(tmp_path):
    (tmp_path / "args.json").write_text(json.dumps({"save_steps": 4}))
    arguments = training_arguments(str(tmp_path / "args.json"))
    assert (arguments.save_strategy.value, arguments.save_steps) == ("steps", 4)


@pytest.mark.parametrize("setting", [["--save_steps", "4"], ["--save_total_limit", "1"]])
def test_save_strategy_no_with_a_save_setting_is_a_usage_error(example, tmp_path, capsys, setting):
    argv = ["--save_strategy", "no", *setting]
    assert_usage_error_before_the_data(
        example, argv, f"`{setting[0][2:]}` is given but `save_strategy` is 'no'", tmp_path, capsys
    )


# --- item 8a: selector settings the selector does not read ------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--token_keep_mass", "0.9"],
            "`token_keep_mass` has no effect with token_selector 'class_attention' (the default)",
        ),
        (
            ["--token_selector", "learned", "--token_importance", "learned"],
            "`token_importance` has no effect with token_selector 'learned' (given): only token_selector adaptive",
        ),
        (["--token_min_keep_rate", "0.5"], "`token_min_keep_rate` has no effect"),
        (["--token_selector", "class_attention", "--token_count_buckets", "2"], "`token_count_buckets` has no effect"),
    ],
)
def test_selector_settings_the_selector_ignores_are_a_usage_error(example, tmp_path, capsys, argv, message):
    assert_usage_error_before_the_data(example, [*TINY_MODEL, *argv], message, tmp_path, capsys)


def test_selector_settings_are_checked_against_the_checkpoints_selector(example, tmp_path, capsys):
    tiny_model().save_pretrained(tmp_path / "fixed")
    tiny_model(token_selector="adaptive", token_keep_mass=0.7).save_pretrained(tmp_path / "adaptive")
    argv = ["--model_name_or_path", str(tmp_path / "fixed"), "--token_keep_mass", "0.9"]
    message = f"token_selector 'class_attention' (from `model_name_or_path` '{tmp_path / 'fixed'}')"
    assert_usage_error_before_the_data(example, argv, message, tmp_path, capsys)
    # The selector the run ends up with decides: the checkpoint's adaptive one reads the mass.
    check_selector_settings(
        ModelArguments(model_name_or_path=str(tmp_path / "adaptive"), token_keep_mass=0.9), "adaptive"
    )
    # A selector registered by the user may read any config field.
    check_selector_settings(ModelArguments(token_keep_mass=0.9), "my_selector")


# --- item 8b: example-pruning flags the policy does not read ----------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"example_pruning": "loss", "keep_fraction": 0.5},
            "`keep_fraction` configures `example_pruning` random and forgetting only; 'loss' does not read it",
        ),
        (
            {"example_pruning": "random", "swap_fraction": 0.1},
            "`swap_fraction` configures `example_pruning` forgetting only; 'random'",
        ),
        (
            {"example_pruning": "random", "swap_epochs": [2]},
            "`swap_epochs` configures `example_pruning` forgetting only",
        ),
        (
            {"example_pruning": "forgetting", "full_data_fraction": 0.25},
            "`full_data_fraction` configures `example_pruning` loss only",
        ),
        ({"example_pruning": "forgetting", "budget": 0.5}, "`budget` configures `example_pruning` loss only"),
        ({"keep_fraction": 0.5}, "`example_pruning` is none (no example pruning)"),
        (
            {"example_pruning": "json:JSONDecoder", "keep_fraction": 0.5},
            "takes its settings from `example_pruning_settings`",
        ),
    ],
)
def test_example_pruning_flags_the_policy_does_not_read_are_refused(settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ExamplePruningArguments(**settings)


def test_example_pruning_flags_the_policy_reads_are_accepted():
    ExamplePruningArguments(example_pruning="forgetting", keep_fraction=0.5, swap_fraction=0.1, swap_epochs=[2])
    ExamplePruningArguments(example_pruning="random", keep_fraction=0.5)
    ExamplePruningArguments(example_pruning="loss", budget=0.5, full_data_fraction=0.25, well_learned_fraction=0.6)


def test_keep_fraction_with_the_loss_policy_is_a_usage_error(example, tmp_path, capsys):
    argv = ["--example_pruning", "loss", "--keep_fraction", "0.5"]
    assert_usage_error_before_the_data(
        example, argv, "`keep_fraction` configures `example_pruning` random and forgetting only", tmp_path, capsys
    )


# --- item 8c: per-layer sizes wider than the config -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        (
            {"num_attention_heads_per_layer": [4, 8, 4, 4]},
            "`num_attention_heads_per_layer[1]` (layer 1) is 8, above `num_attention_heads` (4)",
        ),
        (
            {"intermediate_size_per_layer": [64, 64, 64, 96]},
            "`intermediate_size_per_layer[3]` (layer 3) is 96, above `intermediate_size` (64)",
        ),
    ],
)
def test_per_layer_sizes_above_the_configs_are_refused(sizes, message):
    shape = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 64}
    with pytest.raises(ValueError, match=re.escape(message)):
        TriLevelViTConfig(**shape, **sizes)
    narrower = {name: [min(size, 4 if "heads" in name else 64) for size in value] for name, value in sizes.items()}
    TriLevelViTConfig(**shape, **narrower)  # at most the config's sizes: a slimmed model


# --- item 9a: an unreachable loss budget ------------------------------------------------------------------------------


def test_an_unreachable_budget_says_why_and_which_flags_reach_it(example, tmp_path, capsys):
    argv = ["--example_pruning", "loss", "--budget", "0.8", "--num_train_epochs", "2", "--full_data_fraction", "0.5"]
    assert_usage_error_before_the_data(
        example, argv, "`budget` 0.8 cannot be reached with `num_train_epochs` 2", tmp_path, capsys
    )
    with pytest.raises(ValueError) as raised:
        LossPolicy(budget=0.8, full_data_fraction=0.5).check_epochs(2)
    message = str(raised.value)
    assert "no budget below 1 can be reached" in message and "above 1" not in message
    assert "`num_train_epochs` 4 or more" in message
    LossPolicy(budget=0.8, full_data_fraction=0.5).check_epochs(4)  # the suggestion works
    with pytest.raises(ValueError):
        LossPolicy(budget=0.8, full_data_fraction=0.5).check_epochs(3)  # and is the fewest epochs that do


@pytest.mark.parametrize(
    ("budget", "fraction", "epochs", "lowest", "longer", "lower"),
    [
        (0.3, 0.25, 4, "above 0.5", 24, None),  # 2 of 4 epochs full
        (0.13, 0.125, 30, "above 0.1667", 208, 0.0666),  # 5 of 30 epochs full
        (0.8, 0.5, 3, None, 4, 0.3333),  # every epoch full
    ],
)
def test_the_budget_message_gives_the_lowest_budget_and_settings_that_reach_it(
    budget, fraction, epochs, lowest, longer, lower
):
    with pytest.raises(ValueError) as raised:
        LossPolicy(budget=budget, full_data_fraction=fraction).check_epochs(epochs)
    message = str(raised.value)
    if lowest is not None:
        assert f"the lowest reachable budget is {lowest}" in message and f"raise `budget` {lowest}" in message.lower()
    assert f"`num_train_epochs` {longer} or more" in message
    LossPolicy(budget=budget, full_data_fraction=fraction).check_epochs(longer)
    with pytest.raises(ValueError):
        LossPolicy(budget=budget, full_data_fraction=fraction).check_epochs(longer - 1)
    if lower is None:
        assert "lower `full_data_fraction` to" not in message
    else:
        assert f"lower `full_data_fraction` to {lower} or less" in message
        LossPolicy(budget=budget, full_data_fraction=lower).check_epochs(epochs)


# --- item 9b: an output folder with only incomplete checkpoints -------------------------------------------------------


def test_a_fresh_run_over_only_incomplete_checkpoints_offers_to_replace_them_not_to_resume(example, tmp_path, capsys):
    output_dir = tmp_path / "out"
    (output_dir / "checkpoint-4").mkdir(parents=True)  # a save cut short: no trainer_state.json
    with pytest.raises(ValueError) as raised:
        check_output_dir(str(output_dir), resume_from_checkpoint=None)
    message = str(raised.value)
    assert "checkpoint-4 is an incomplete checkpoint that cannot be resumed: " in message
    assert "no trainer_state.json" in message  # the problem, named by `checkpoint_problem`
    assert "`overwrite_output_dir` to replace them, or choose another" in message
    assert "resume_from_checkpoint" not in message
    assert_usage_error_before_the_data(example, [], "checkpoint-4 is an incomplete checkpoint", tmp_path, capsys)
    with pytest.raises(ValueError, match=r"no complete checkpoint-\* folder \(only incomplete ones: checkpoint-4\)"):
        resolve_resume_checkpoint("latest", str(output_dir))


def test_a_fresh_run_over_a_complete_checkpoint_offers_to_resume_it(tmp_path):
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    with pytest.raises(ValueError) as raised:
        check_output_dir(str(tmp_path), resume_from_checkpoint=None)
    message = str(raised.value)
    assert "checkpoint-4 is an incomplete checkpoint" in message
    assert "`resume_from_checkpoint` latest to continue the run saved there (from checkpoint-2)" in message


def test_keep_rate_fractions_without_the_warm_up_are_refused():
    from hf_trilevel.token_training.arguments import KeepRateScheduleArguments

    with pytest.raises(ValueError, match="`keep_rate_decay_fraction` shapes the keep-rate warm-up, which is off"):
        KeepRateScheduleArguments(keep_rate_decay_fraction=0.5)
    assert KeepRateScheduleArguments(keep_rate_schedule=True, keep_rate_decay_fraction=0.5).fractions()[1] == 0.5
