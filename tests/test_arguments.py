"""The argument groups (`hf_trilevel/*/arguments.py`, `hf_trilevel/recipe/arguments.py`): a field's name is its flag,
each group refuses a bad value in `__post_init__` with a message naming the flag, the value and the allowed range, and
each technique's group builds its technique, or None when its flags (or a run without training) leave it off.

What the example makes of them end to end (exit status 2 before any data loads): tests/test_example*.py and
tests/test_bad_input.py. docs/flags.md, the flag manual, must list every flag these groups define.
"""

import dataclasses
import logging
import re
from pathlib import Path

import pytest
from transformers import TrainingArguments

from hf_trilevel import (
    DenseSparseTraining,
    ExamplePruning,
    KeepRateSchedule,
    SelectorTemperatureSchedule,
    WeightSparsity,
)
from hf_trilevel.example_pruning.arguments import ExamplePruningArguments
from hf_trilevel.recipe.arguments import DataArguments, ModelArguments, RunArguments
from hf_trilevel.recipe.parsing import ARGUMENT_GROUPS, TECHNIQUE_ARGUMENTS, TRAINING_DEFAULTS
from hf_trilevel.token_training.arguments import (
    DenseSparseArguments,
    KeepRateScheduleArguments,
    SelectorTemperatureArguments,
)
from hf_trilevel.training.arguments import TechniqueContext
from hf_trilevel.weight_sparsity.arguments import WeightSparsityArguments

from .helpers import tiny_config

FLAG_MANUAL = Path(__file__).resolve().parents[1] / "docs" / "flags.md"


def training_arguments(tmp_path, **settings) -> TrainingArguments:
    """A training run (transformers' own default is `do_train=False`) of 3 epochs, batches of 8."""
    defaults = {"do_train": True, "remove_unused_columns": False, "report_to": "none", "use_cpu": True}
    return TrainingArguments(output_dir=str(tmp_path), **{**defaults, **settings})


# --- __post_init__: one bad value per group, refused with the flag, the value and the range --------------------------

BAD_VALUES = [
    (ExamplePruningArguments, {"keep_fraction": 0.0}, r"`keep_fraction` must be in (0, 1], got 0.0"),
    (ExamplePruningArguments, {"example_pruning": "loss", "prune_ratio": 1.0}, r"`prune_ratio` must be in (0, 1)"),
    (ExamplePruningArguments, {"swap_epochs": [0]}, "`swap_epochs` must be an integer >= 1, got 0"),
    (ExamplePruningArguments, {"example_pruning": "bogus"}, "`example_pruning` must be none, random, forgetting"),
    (KeepRateScheduleArguments, {"keep_rate_warmup_fraction": 1.0}, "`keep_rate_warmup_fraction` must be in [0, 1)"),
    (KeepRateScheduleArguments, {"keep_rate_decay_fraction": 0.0}, "`keep_rate_decay_fraction` must be in (0, 1]"),
    (
        KeepRateScheduleArguments,
        {"keep_rate_warmup_fraction": 0.5, "keep_rate_decay_fraction": 0.6},
        "`keep_rate_warmup_fraction + keep_rate_decay_fraction` must be <= 1, got 0.5 + 0.6",
    ),
    (
        SelectorTemperatureArguments,
        {"token_selector_temperature_start": 0.0},
        "`token_selector_temperature_start` must be in (0, inf)",
    ),
    (SelectorTemperatureArguments, {"token_selector_noise_end": 1.5}, "`token_selector_noise_end` must be in [0, 1]"),
    (
        DenseSparseArguments,
        {"dense_sparse_keep_rates": [1.0, 1.5]},
        "`dense_sparse_keep_rates` must be in (0, 1] (1.0 keeps everything), got 1.5",
    ),
    (
        DenseSparseArguments,
        {"dense_sparse_keep_rates": [1.0, 0.5], "distillation_temperature": 0.0},
        "`distillation_temperature` must be in (0, inf), got 0.0",
    ),
    (DenseSparseArguments, {"distillation_weight": 2.0}, "`distillation_weight` is a setting of dense/sparse"),
    (
        WeightSparsityArguments,
        {"weight_sparsity": "unstructured", "weight_density": 0.0},
        "`weight_density` must be in (0, 1], got 0.0",
    ),
    (
        WeightSparsityArguments,
        {"weight_sparsity": "structured", "sparse_update_interval": 0},
        "`sparse_update_interval` must be an integer >= 1, got 0",
    ),
    (WeightSparsityArguments, {"weight_sparsity": "dense"}, "`weight_sparsity` must be one of"),
    (ModelArguments, {"hidden_size": 0}, "`hidden_size` must be an integer >= 1, got 0"),
    (ModelArguments, {"config_name": "x", "patch_size": 8}, "`patch_size` shapes a model trained from scratch"),
    (DataArguments, {"train_val_split": 1.0}, "`train_val_split` must be in [0, 1), got 1.0"),
    (DataArguments, {"min_crop_scale": 0.0}, "`min_crop_scale` must be in (0, 1], got 0.0"),
    (DataArguments, {"augmentation": "flip"}, "`augmentation` must be one of auto, crop_flip"),
    (DataArguments, {"dataset_name": "x", "train_dir": "y"}, "give either `dataset_name` or `train_dir`"),
]


@pytest.mark.parametrize(("group", "values", "message"), BAD_VALUES, ids=[message for *_, message in BAD_VALUES])
def test_a_bad_value_is_refused_with_its_flag_and_the_allowed_range(group, values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        group(**values)


@pytest.mark.parametrize("group", [*TECHNIQUE_ARGUMENTS, ModelArguments, DataArguments, RunArguments])
def test_every_group_takes_its_defaults(group):
    group()  # the defaults are valid: a run without flags passes every check


# --- build: None when off, the technique when on ----------------------------------------------------------------------

BUILDS = [
    (ExamplePruningArguments(), ExamplePruningArguments(example_pruning="random"), ExamplePruning, {}),
    (KeepRateScheduleArguments(), KeepRateScheduleArguments(keep_rate_schedule=True), KeepRateSchedule, {}),
    (
        SelectorTemperatureArguments(),
        SelectorTemperatureArguments(token_selector_temperature_start=5.0),
        SelectorTemperatureSchedule,
        {"token_selector": "learned"},
    ),
    (
        DenseSparseArguments(),
        DenseSparseArguments(dense_sparse_keep_rates=[1.0, 0.7]),
        DenseSparseTraining,
        {"token_keep_rate": 0.7},
    ),
    (
        WeightSparsityArguments(),
        WeightSparsityArguments(weight_sparsity="structured", sparse_update_interval=2),
        WeightSparsity,
        {},
    ),
]


@pytest.mark.parametrize(("off", "on", "technique", "config"), BUILDS, ids=[type(row[0]).__name__ for row in BUILDS])
def test_build_returns_the_technique_when_on_and_none_when_off(tmp_path, off, on, technique, config):
    training_args = training_arguments(tmp_path, do_train=True)
    assert (
        off.build(TechniqueContext(tiny_config(), training_args, num_train_examples=64, technique_args=[off])) is None
    )
    built = on.build(TechniqueContext(tiny_config(**config), training_args, num_train_examples=64, technique_args=[on]))
    assert type(built) is technique


@pytest.mark.parametrize(("off", "on", "technique", "config"), BUILDS, ids=[type(row[0]).__name__ for row in BUILDS])
def test_nothing_is_built_for_a_run_that_does_not_train(tmp_path, off, on, technique, config):
    training_args = training_arguments(tmp_path, do_train=False)
    assert on.build(TechniqueContext(tiny_config(**config), training_args, technique_args=[on])) is None


def test_with_dense_sparse_training_the_warm_up_goes_to_it_not_to_its_own_technique(tmp_path):
    schedule = KeepRateScheduleArguments(keep_rate_schedule=True, keep_rate_warmup_fraction=0.1)
    dense_sparse = DenseSparseArguments(dense_sparse_keep_rates=[1.0, 0.7])
    both, training_args, config = [schedule, dense_sparse], training_arguments(tmp_path), tiny_config()
    assert schedule.build(TechniqueContext(config, training_args, technique_args=both)) is None
    technique = dense_sparse.build(TechniqueContext(config, training_args, technique_args=both))
    assert technique.warmup_fraction == 0.1 and technique.decay_fraction == pytest.approx(1 / 3)


def test_the_weight_sparsity_flags_are_checked_against_the_model_and_the_run(tmp_path):
    training_args = training_arguments(tmp_path, num_train_epochs=1, per_device_train_batch_size=16)
    structured = WeightSparsityArguments(weight_sparsity="structured", head_density=0.2)
    with pytest.raises(ValueError, match=r"`head_density` 0.2 leaves no unit of the 2 in layer 0"):
        structured.build(TechniqueContext(tiny_config(), training_args))
    unstructured = WeightSparsityArguments(weight_sparsity="unstructured")  # 100 steps between updates; 4 in the run
    with pytest.raises(ValueError, match=r"`sparse_update_interval` 100 is longer .* \(`sparse_end_fraction` 0.8"):
        unstructured.build(TechniqueContext(tiny_config(), training_args, num_train_examples=64))
    with pytest.raises(ValueError, match=r"`weight_sparsity` structured trains sparse weights and needs `do_train`"):
        structured.check_training_arguments(training_arguments(tmp_path, do_train=False))


# --- example pruning: the policy and its settings are flags -----------------------------------------------------------


def test_the_loss_policys_pool_is_a_flag_so_the_example_can_reach_any_budget(tmp_path):
    arguments = ExamplePruningArguments(example_pruning="loss", prune_ratio=0.6, well_learned_fraction=1.0)
    technique = arguments.build(TechniqueContext(tiny_config(), training_arguments(tmp_path)))
    assert technique.policy.config()["well_learned_fraction"] == 1.0
    assert technique.policy.epoch_sizes(100, 8)[1:7] == [40] * 6  # pruned epochs serve 1 - 0.6 x 1.0 of the data
    with pytest.raises(ValueError, match=r"`well_learned_fraction` must be in \(0, 1\]"):
        ExamplePruningArguments(example_pruning="loss", well_learned_fraction=0.0)


def test_the_example_takes_a_users_own_policy_by_import_path(tmp_path, monkeypatch):
    # A module name no other test imports: sys.modules keeps an imported module for the whole session.
    (tmp_path / "example_user_policies.py").write_text(
        "import torch\n"
        "from hf_trilevel import EpochPlan, PruningPolicy\n\n\n"
        "class FirstHalf(PruningPolicy):\n"
        "    name = 'first_half'\n\n"
        "    def __init__(self, share=0.5):\n"
        "        self.share = share\n\n"
        "    def epoch_sizes(self, num_examples, num_epochs):\n"
        "        return [round(self.share * num_examples)] * num_epochs\n\n"
        "    def plan_epoch(self, epoch, previous, statistics, num_examples, seed):\n"
        "        return EpochPlan(torch.arange(round(self.share * num_examples)))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    arguments = ExamplePruningArguments(
        example_pruning="example_user_policies:FirstHalf", example_pruning_settings='{"share": 0.25}'
    )
    technique = arguments.build(TechniqueContext(tiny_config(), training_arguments(tmp_path / "out")))
    assert type(technique.policy).__name__ == "FirstHalf" and technique.policy.epoch_sizes(100, 2) == [25, 25]
    for bad, message in [
        (
            {"example_pruning": "example_user_policies:Missing"},
            "`example_pruning` 'example_user_policies:Missing' cannot be imported",
        ),
        ({"example_pruning": "json:loads"}, "is not a PruningPolicy subclass"),
        (
            {"example_pruning": "example_user_policies:FirstHalf", "example_pruning_settings": "[1]"},
            "`example_pruning_settings` must be a JSON object",
        ),
        ({"example_pruning": "example_user_policies:FirstHalf", "example_pruning_settings": "{"}, "is not JSON"),
        (
            {"example_pruning": "example_user_policies:FirstHalf", "example_pruning_settings": '{"size": 1}'},
            "`example_pruning_settings` holds an unknown setting",
        ),
        (
            {"example_pruning": "loss", "example_pruning_settings": "{}"},
            "`example_pruning_settings` configures a package.module:ClassName",
        ),
        ({"example_pruning": "bogus"}, "`example_pruning` must be none, random, forgetting, loss or"),
        ({"example_pruning": "forgetting", "budget": 0.5}, "`budget` configures `example_pruning` loss only"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            ExamplePruningArguments(**bad).policy()


def test_the_loss_policy_takes_a_data_budget_so_it_compares_with_random_at_equal_cost(tmp_path):
    arguments = ExamplePruningArguments(example_pruning="loss", budget=0.5)
    assert sum(arguments.policy().epoch_sizes(100, 30)) == 100 * 30 // 2
    with pytest.raises(ValueError, match=r"`budget` 0\.5 is out of reach"):  # 2 of 4 epochs are full: before the data
        arguments.check_training_arguments(training_arguments(tmp_path, num_train_epochs=4))
    with pytest.raises(ValueError, match="not both"):
        ExamplePruningArguments(example_pruning="loss", budget=0.5, prune_ratio=0.5)


# --- selector temperature: decided by the model's config --------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "selector", "importance", "expected"),
    [
        ({}, "learned", "class_attention", (10.0, 0.1)),
        ({"token_selector_temperature_start": 5.0}, "adaptive", "learned", (5.0, 0.1)),
        ({}, "adaptive", "class_attention", None),
        ({}, "class_attention", "class_attention", None),
    ],
)
def test_learned_scores_get_the_temperature_schedule(tmp_path, settings, selector, importance, expected):
    config = tiny_config(token_selector=selector, token_importance=importance)
    technique = SelectorTemperatureArguments(**settings).build(TechniqueContext(config, training_arguments(tmp_path)))
    if expected is None:
        assert technique is None
    else:
        assert isinstance(technique, SelectorTemperatureSchedule)
        assert (technique.start, technique.end) == expected


def test_a_temperature_without_learned_scores_is_ignored_with_a_notice(tmp_path, caplog):
    config = tiny_config(token_selector="class_attention")
    arguments = SelectorTemperatureArguments(token_selector_temperature_end=1.0)
    with caplog.at_level(logging.WARNING, logger="hf_trilevel"):
        assert arguments.build(TechniqueContext(config, training_arguments(tmp_path))) is None
    assert "`token_selector_temperature_end` is ignored" in caplog.text


# --- token merging: one r or one per layer; from scratch it replaces the default dropping ----------------------------


def test_one_merge_r_is_the_same_r_in_every_layer_and_a_list_is_per_layer():
    assert ModelArguments(token_merge_r=[8]).config_overrides()["token_merge_r"] == 8
    assert ModelArguments(token_merge_r=[8, 6]).config_overrides()["token_merge_r"] == [8, 6]
    assert ModelArguments(token_merge_r=8).config_overrides()["token_merge_r"] == 8  # a JSON file's plain integer
    assert "token_merge_r" not in ModelArguments().config_overrides()


def test_from_scratch_merging_replaces_the_default_dropping_unless_keep_rates_are_given():
    config = ModelArguments(token_merge_r=[4]).build_config(["a", "b"])
    assert (config.token_merge_r, config.token_keep_rate, config.attention_keep_rate) == (4, 1.0, 1.0)
    config = ModelArguments(token_merge_r=[4], token_keep_rate=0.7).build_config(["a", "b"])
    assert (config.token_keep_rate, config.attention_keep_rate) == (0.7, 1.0)
    config = ModelArguments(token_merge_r=[0]).build_config(["a", "b"])  # 0 is off: the scratch sparsity stays
    assert (config.token_merge_r, config.token_keep_rate, config.attention_keep_rate) == (0, 0.7, 0.5)


def test_merge_r_is_applied_over_a_checkpoints_config(tmp_path):
    tiny_config(token_keep_rate=0.7).save_pretrained(tmp_path)
    arguments = ModelArguments(config_name=str(tmp_path), token_merge_r=[2], token_merge_proportional_attention=False)
    config = arguments.build_config(["a", "b"])
    assert (config.token_merge_r, config.token_merge_proportional_attention, config.token_keep_rate) == (2, False, 0.7)


# --- the flag manual --------------------------------------------------------------------------------------------------


def manual_rows() -> dict[str, str]:
    """docs/flags.md's table rows, keyed by their flag (`| `--flag` | `default` | range | what it does |`)."""
    rows = {}
    for line in FLAG_MANUAL.read_text(encoding="utf-8").splitlines():
        found = re.match(r"\| `--(\w+)` \|", line)
        if found:
            rows[found[1]] = line
    return rows


def rendered(default: object) -> str:
    return f"{default:.4g}" if isinstance(default, float) else str(default)


def test_the_flag_manual_lists_every_flag_of_every_group_with_its_default():
    rows = manual_rows()
    for group in ARGUMENT_GROUPS:
        if group is TrainingArguments:
            continue
        for item in dataclasses.fields(group):
            assert item.name in rows, f"docs/flags.md has no row for --{item.name}"
            assert rows[item.name].split(" | ")[1] == f"`{rendered(item.default)}`", rows[item.name]
    for name in TRAINING_DEFAULTS:  # the recipe's defaults that replace transformers' own
        assert name in rows, f"docs/flags.md does not give the recipe's default of --{name}"
