"""A checkpoint records which training techniques it was trained with and their settings; resuming with a technique
missing, added or changed is refused before the first step, naming the setting (the flag) and both values.

Two layers: the record and its check, per technique and per saved setting (fast, no training); and the example, per
technique, resumed without its flag, with a setting changed, and with a technique added (exit status 2).
"""

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_trilevel import DenseSparseTraining, ExamplePruning, KeepRateSchedule, WeightSparsity
from hf_trilevel.example_pruning.policies import RandomPolicy
from hf_trilevel.token_training.selector_temperature import SelectorTemperatureSchedule
from hf_trilevel.training.errors import TrainingRefused
from hf_trilevel.training.technique_manifest import (
    MANIFEST_NAME,
    check_resumed_techniques,
    read_technique_manifest,
    write_technique_manifest,
)

from .test_example import load_example

# Each technique (case -> its name, a builder, and for every setting it records a different valid value).
TECHNIQUES = {
    "example_pruning": (
        "example_pruning",
        lambda **changed: ExamplePruning(**{"policy": "loss", "prune_ratio": 0.5, **changed}),
        {"policy": "forgetting", "prune_ratio": 0.3, "full_data_fraction": 0.25, "well_learned_fraction": 0.7},
    ),
    "keep_rate_schedule": (
        "keep_rate_schedule",
        lambda **changed: KeepRateSchedule(**{"warmup_fraction": 0.1, "decay_fraction": 0.5, **changed}),
        {"target_token_keep_rate": 0.5, "warmup_fraction": 0.2, "decay_fraction": 0.6},
    ),
    "token_selector_temperature": (
        "token_selector_temperature",
        lambda **changed: SelectorTemperatureSchedule(**{"start": 10.0, "end": 0.1, **changed}),
        {"start": 5.0, "end": 0.5, "noise_start": 0.5, "noise_end": 0.0},
    ),
    "dense_sparse": (
        "dense_sparse",
        lambda **changed: DenseSparseTraining(**{"keep_rates": [1.0, 0.7], "decay_fraction": 0.5, **changed}),
        {
            "keep_rates": [1.0, 0.5],
            "schedule": "every_rate",
            "distillation": "none",
            "distillation_temperature": 2.0,
            "distillation_weight": 0.5,
            "importance_weight": 0.1,
            "warmup_fraction": 0.1,
            "decay_fraction": 0.6,
        },
    ),
    "weight_sparsity-structured": (
        "weight_sparsity",
        lambda **changed: WeightSparsity(**{"sparsity": "structured", "update_interval": 2, **changed}),
        {
            "sparsity": "unstructured",
            "head_density": 0.75,
            "neuron_density": 0.25,
            "update_interval": 3,
            "end_fraction": 0.5,
            "death_rate": 0.3,
            "final_death_rate": 0.1,
            "one_shot": True,
            "seed": 7,
        },
    ),
    "weight_sparsity-unstructured": (
        "weight_sparsity",
        lambda **changed: WeightSparsity(**{"sparsity": "unstructured", "update_interval": 2, **changed}),
        {"density": 0.3, "pattern": "2:4", "initial_mask": "magnitude"},
    ),
}
CHANGES = [(case, key, value) for case, (_, _, changes) in TECHNIQUES.items() for key, value in changes.items()]


def checkpoint_with(tmp_path: Path, *techniques, seed: int | None = None) -> Path:
    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    write_technique_manifest(folder, techniques, seed)
    return folder


def build(case: str, **changed):
    _, factory, _ = TECHNIQUES[case]
    if changed.get("pattern") == "2:4":  # 2:4 keeps two of four: density 0.5
        changed |= {"density": 0.5}
    if case == "example_pruning" and "policy" in changed:  # another policy, with its own default settings
        return ExamplePruning(changed["policy"])
    return factory(**changed)


@pytest.mark.parametrize("case", sorted(TECHNIQUES))
def test_every_technique_records_every_setting_it_is_compared_on(tmp_path, case):
    name = TECHNIQUES[case][0]
    recorded = read_technique_manifest(checkpoint_with(tmp_path, build(case)))
    assert set(recorded) == {name}
    assert set(recorded[name]["settings"]) >= set(TECHNIQUES[case][2])


@pytest.mark.parametrize("case", sorted(TECHNIQUES))
def test_resuming_with_the_same_technique_and_settings_is_allowed(tmp_path, case):
    check_resumed_techniques(checkpoint_with(tmp_path, build(case), seed=3), [build(case)], seed=3)


@pytest.mark.parametrize("case", sorted(TECHNIQUES))
def test_resuming_without_a_technique_the_checkpoint_was_trained_with_is_refused(tmp_path, case):
    folder = checkpoint_with(tmp_path, build(case))
    name = TECHNIQUES[case][0]
    with pytest.raises(TrainingRefused, match=rf"checkpoint-4 was trained with {name} .* which this run does not use"):
        check_resumed_techniques(folder, [])


@pytest.mark.parametrize("case", sorted(TECHNIQUES))
def test_resuming_with_a_technique_added_is_refused(tmp_path, case):
    folder = checkpoint_with(tmp_path)
    name = TECHNIQUES[case][0]
    with pytest.raises(TrainingRefused, match=rf"this run adds {name} .* checkpoint-4 was not trained with"):
        check_resumed_techniques(folder, [build(case)])


@pytest.mark.parametrize(("case", "key", "value"), CHANGES, ids=[f"{case}-{key}" for case, key, _ in CHANGES])
def test_resuming_with_a_setting_changed_is_refused_naming_it_and_both_values(tmp_path, case, key, value):
    original, changed = build(case), build(case, **{key: value})
    before, after = original.resume_settings(), changed.resume_settings()
    differing = {setting for setting in before | after if before.get(setting) != after.get(setting)}
    assert key in differing, f"changing {key} changed {sorted(differing)}"
    with pytest.raises(TrainingRefused) as refused:
        check_resumed_techniques(checkpoint_with(tmp_path, original), [changed])
    named = re.match(
        r"`(\w+)` \((\w+)\): checkpoint-4 was trained with (.+), this run asks for (.+); ", str(refused.value)
    )
    assert named is not None, str(refused.value)
    setting, technique, saved, asked = named.groups()
    assert technique == TECHNIQUES[case][0] and setting in differing
    assert (saved, asked) == (value_text(before.get(setting)), value_text(after.get(setting)))


def value_text(value) -> str:
    """A setting's value as the messages write it."""
    if value is None:
        return "none (unset)"
    if isinstance(value, list):
        return " ".join(str(item) for item in value)
    return repr(value) if isinstance(value, str) else str(value)


def test_resuming_with_another_seed_is_refused_naming_both(tmp_path):
    folder = checkpoint_with(tmp_path, build("weight_sparsity-structured"), seed=42)
    with pytest.raises(TrainingRefused, match=r"^`seed`: checkpoint-4 was trained with 42, this run asks for 7;"):
        check_resumed_techniques(folder, [build("weight_sparsity-structured")], seed=7)


def test_the_message_names_the_flag_a_script_spells_the_setting_with(tmp_path):
    saved = WeightSparsity("structured", update_interval=2).name_settings({"update_interval": "sparse_update_interval"})
    resumed = WeightSparsity("structured", update_interval=3).name_settings(
        {"update_interval": "sparse_update_interval"}
    )
    with pytest.raises(TrainingRefused) as refused:
        check_resumed_techniques(checkpoint_with(tmp_path, saved), [resumed])
    assert str(refused.value).startswith(
        "`sparse_update_interval` (weight_sparsity): checkpoint-4 was trained with 2, this run asks for 3;"
    )


def test_resuming_with_another_model_config_is_refused_naming_the_field(tmp_path):
    from hf_trilevel.training.technique_manifest import config_record

    from .helpers import tiny_config

    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    write_technique_manifest(folder, [], model_config=config_record(tiny_config(token_keep_rate=0.7)))
    check_resumed_techniques(folder, [], model_config=config_record(tiny_config(token_keep_rate=0.7)))
    with pytest.raises(TrainingRefused, match=r"^`attention_keep_rate` \(the model's config\): checkpoint-4 was "):
        check_resumed_techniques(
            folder, [], model_config=config_record(tiny_config(token_keep_rate=0.7, attention_keep_rate=0.5))
        )


def test_a_record_written_before_token_merging_resumes_at_r_0_and_refuses_another_r(tmp_path):
    """A record from before `token_merge_r` existed was trained without merging: resuming at r=0 (the default) is
    the same run; asking for merging is a changed setting, refused by its name."""
    from hf_trilevel.training.technique_manifest import ADDED_CONFIG_FIELDS, config_record

    from .helpers import tiny_config

    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    before = {key: value for key, value in config_record(tiny_config()).items() if key not in ADDED_CONFIG_FIELDS}
    write_technique_manifest(folder, [], model_config=before)
    check_resumed_techniques(folder, [], model_config=config_record(tiny_config()))
    with pytest.raises(
        TrainingRefused, match=r"^`token_merge_r` \(the model's config\): checkpoint-4 was trained with 0"
    ):
        check_resumed_techniques(folder, [], model_config=config_record(tiny_config(token_merge_r=2)))


def test_a_user_policy_is_recorded_by_its_class(tmp_path):
    class MyPolicy(RandomPolicy):
        pass

    folder = checkpoint_with(tmp_path, ExamplePruning(MyPolicy(keep_fraction=0.5)))
    with pytest.raises(TrainingRefused, match="policy_class"):
        check_resumed_techniques(folder, [ExamplePruning(RandomPolicy(keep_fraction=0.5))])


def test_a_checkpoint_without_a_record_is_checked_by_its_state_files(tmp_path):
    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    (folder / "weight_sparsity.safetensors").write_bytes(b"")
    (folder / "weight_sparsity.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(TrainingRefused, match=r"holds weight_sparsity state .* this run does not use weight_sparsity"):
        check_resumed_techniques(folder, [])
    check_resumed_techniques(folder, [WeightSparsity("structured")])


def test_a_corrupt_record_refuses_the_resume(tmp_path):
    folder = checkpoint_with(tmp_path)
    (folder / MANIFEST_NAME).write_text('{"format": 1, "techn')
    with pytest.raises(TrainingRefused, match=f"{MANIFEST_NAME} is truncated or corrupt"):
        check_resumed_techniques(folder, [])


# -- the example: resumed without its flag, with a setting changed, with a technique added ---------------------------

TINY = [
    "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2", "--intermediate_size", "64",
    "--max_train_samples", "32", "--max_eval_samples", "16", "--per_device_train_batch_size", "16",
    "--num_train_epochs", "2", "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no",
    "--disable_tqdm", "True", "--token_prune_layers", "1", "--token_keep_rate", "0.7",
]  # fmt: skip
# Each technique's flags, and one of them changed.
RUNS = {
    "weight_sparsity": (
        ["--weight_sparsity", "structured", "--sparse_update_interval", "2"],
        ["--weight_sparsity", "structured", "--sparse_update_interval", "3"],
        "`sparse_update_interval` (weight_sparsity): checkpoint-4 was trained with 2, this run asks for 3",
    ),
    "example_pruning": (
        ["--example_pruning", "loss"],
        ["--example_pruning", "loss", "--prune_ratio", "0.3"],
        "`prune_ratio` (example_pruning): checkpoint-4 was trained with 0.5, this run asks for 0.3",
    ),
    "keep_rate_schedule": (
        ["--keep_rate_schedule", "True", "--keep_rate_warmup_fraction", "0.1", "--keep_rate_decay_fraction", "0.5"],
        ["--keep_rate_schedule", "True", "--keep_rate_warmup_fraction", "0.2", "--keep_rate_decay_fraction", "0.5"],
        "`keep_rate_warmup_fraction` (keep_rate_schedule): checkpoint-4 was trained with 0.1, this run asks for 0.2",
    ),
    "token_selector_temperature": (
        ["--token_selector", "learned"],
        ["--token_selector", "learned", "--token_selector_temperature_end", "0.5"],
        "`token_selector_temperature_end` (token_selector_temperature): checkpoint-4 was trained with 0.1, this run "
        "asks for 0.5",
    ),
    "dense_sparse": (
        ["--dense_sparse_keep_rates", "1.0", "0.7"],
        ["--dense_sparse_keep_rates", "1.0", "0.5", "--token_keep_rate", "0.5"],
        "`dense_sparse_keep_rates` (dense_sparse): checkpoint-4 was trained with 1.0 0.7, this run asks for 1.0 0.5",
    ),
}


@pytest.fixture(scope="module")
def example():
    return load_example()


@pytest.fixture(scope="module")
def trained(example, tmp_path_factory):
    """name -> the output folder of a short run with that technique's flags (checkpoints every 2 steps)."""
    folders = {}
    for name, (flags, _, _) in RUNS.items():
        output = tmp_path_factory.mktemp(name) / "out"
        example.main([*TINY, *flags, "--output_dir", str(output)])
        folders[name] = output
    return folders


def refusal(example, capsys, output: Path, *flags: str) -> str:
    with pytest.raises(SystemExit) as raised:
        example.main([*TINY, *flags, "--output_dir", str(output), "--resume_from_checkpoint", "latest"])
    assert raised.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_example_refuses_to_resume_without_the_techniques_flag_and_quotes_the_flags_that_resume(
    example, trained, capsys, name
):
    error = refusal(example, capsys, trained[name])
    quoted = re.search(rf"checkpoint-4 was trained with {name} \(`([^`]*)`\), which this run does not use", error)
    assert quoted is not None, error
    assert shlex.split(quoted[1]) == RUNS[name][0]
    # The advice works: those flags resume (checkpoint-4 is the run's last step, so nothing more is trained).
    example.main(
        [*TINY, *shlex.split(quoted[1]), "--output_dir", str(trained[name]), "--resume_from_checkpoint", "latest"]
    )


@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_example_refuses_to_resume_with_a_setting_changed(example, trained, capsys, name):
    assert RUNS[name][2] in refusal(example, capsys, trained[name], *RUNS[name][1])


def test_the_example_refuses_a_resumed_warm_up_to_another_keep_rate(example, trained, capsys):
    flags = [*RUNS["keep_rate_schedule"][0], "--token_keep_rate", "0.3"]  # the target the warm-up decays to
    error = refusal(example, capsys, trained["keep_rate_schedule"], *flags)
    assert "`token_keep_rate` (keep_rate_schedule): checkpoint-4 was trained with 0.7, this run asks for 0.3" in error


def test_the_example_refuses_to_resume_with_another_seed(example, trained, capsys):
    error = refusal(example, capsys, trained["weight_sparsity"], *RUNS["weight_sparsity"][0], "--seed", "7")
    assert re.search(r"`seed`: checkpoint-4 was trained with \d+, this run asks for 7;", error), error


def test_the_example_refuses_to_resume_with_the_models_config_changed(example, trained, capsys):
    """Without a warm-up the keep rate is the config's alone: changed on resume, the run would go on at another rate."""
    error = refusal(
        example, capsys, trained["example_pruning"], *RUNS["example_pruning"][0], "--token_keep_rate", "0.5"
    )
    assert "`token_keep_rate` (the model's config): checkpoint-4 was trained with 0.7, this run asks for 0.5" in error


def test_the_example_refuses_to_resume_with_a_technique_added(example, trained, capsys):
    flags = [*RUNS["keep_rate_schedule"][0], "--example_pruning", "random"]
    error = refusal(example, capsys, trained["keep_rate_schedule"], *flags)
    assert (
        "this run adds example_pruning (`--example_pruning random`), which checkpoint-4 was not trained with" in error
    )


def test_a_structured_run_resumed_with_its_flags_keeps_its_pruned_heads(example, trained, tmp_path):
    """The case that used to lose the masks: resumed as trained, the pruned heads stay pruned to the end."""
    output = trained["weight_sparsity"]
    resume = ["--resume_from_checkpoint", str(output / "checkpoint-2")]
    example.main([*TINY, *RUNS["weight_sparsity"][0], "--output_dir", str(output), *resume])
    weights = load_file(output / "model.safetensors")
    config = json.loads((output / "config.json").read_text())
    head_size = config["hidden_size"] // config["num_attention_heads"]
    for layer in range(config["num_hidden_layers"]):
        rows = weights[f"vit.encoder.layer.{layer}.attention.attention.query.weight"].view(
            config["num_attention_heads"], head_size, -1
        )
        zero_heads = int((rows.abs().sum(dim=(1, 2)) == 0).sum())
        assert zero_heads == 1, f"layer {layer} has {zero_heads} zeroed heads of 2, expected 1 (head_density 0.5)"
    assert torch.isfinite(next(iter(weights.values()))).all()
