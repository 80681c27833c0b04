"""TriLevelViTConfig: defaults derived from depth, and validation that names the field and the allowed range."""

import pytest
from transformers import AutoConfig, ViTConfig

from hf_trilevel import TriLevelViTConfig
from hf_trilevel.modeling.configuration_trilevel_vit import default_token_prune_layers


@pytest.mark.parametrize(
    ("depth", "expected"),
    [(12, [3, 6, 9]), (24, [6, 12, 18]), (6, [1, 3, 4]), (4, [1, 2, 3]), (2, [0, 1]), (1, [0])],
)
def test_default_pruning_layers_follow_depth(depth, expected):
    assert default_token_prune_layers(depth) == expected
    assert TriLevelViTConfig(num_hidden_layers=depth).token_prune_layers == expected


def test_defaults_are_dense_and_model_type_is_unique():
    config = TriLevelViTConfig()
    assert (config.token_keep_rate, config.attention_keep_rate, config.token_fusion) == (1.0, 1.0, False)
    assert config.model_type == "trilevel_vit" != ViTConfig.model_type


def test_explicit_pruning_layers_are_kept_sorted():
    assert TriLevelViTConfig(token_prune_layers=[9, 3]).token_prune_layers == [3, 9]


@pytest.mark.parametrize("field", ["token_keep_rate", "attention_keep_rate"])
@pytest.mark.parametrize("value", [0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_keep_rate_out_of_range_is_rejected_with_field_and_range(field, value):
    with pytest.raises(ValueError, match=rf"`{field}` must be (a number )?in \(0, 1\]"):
        TriLevelViTConfig(**{field: value})


@pytest.mark.parametrize("value", ["0.5", True, None])
def test_keep_rate_of_wrong_type_is_rejected(value):
    with pytest.raises(ValueError, match=r"`token_keep_rate` must be a number in \(0, 1\]"):
        TriLevelViTConfig(token_keep_rate=value)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([3, 12], r"12 is out of range"),
        ([-1], r"-1 is out of range"),
        ([3, 3], r"duplicates"),
        ([1.5], r"not an integer"),
        ("3,6", r"must be a list"),
        (3, r"must be a list"),
    ],
)
def test_bad_pruning_layers_are_rejected(layers, message):
    with pytest.raises(ValueError, match=r"`token_prune_layers`.*\[0, 11\]") as error:
        TriLevelViTConfig(token_prune_layers=layers)
    assert error.match(message)


def test_fusion_must_be_boolean():
    with pytest.raises(ValueError, match="`token_fusion` must be True or False"):
        TriLevelViTConfig(token_fusion="yes")


def test_integer_keep_rate_one_is_accepted_as_float():
    assert TriLevelViTConfig(token_keep_rate=1).token_keep_rate == 1.0


def test_round_trip_through_json_and_autoconfig(tmp_path):
    config = TriLevelViTConfig(num_hidden_layers=6, token_keep_rate=0.7, attention_keep_rate=0.3, token_fusion=True)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, TriLevelViTConfig)
    assert (loaded.token_keep_rate, loaded.attention_keep_rate, loaded.token_fusion) == (0.7, 0.3, True)
    assert loaded.token_prune_layers == [1, 3, 4]


def test_plain_vit_config_becomes_a_trilevel_config(tmp_path):
    ViTConfig(num_hidden_layers=8).save_pretrained(tmp_path)
    config = TriLevelViTConfig.from_pretrained(tmp_path)
    assert config.model_type == "trilevel_vit"
    assert config.token_prune_layers == [2, 4, 6]


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (
            {"hidden_size": 30, "num_attention_heads": 4},
            r"`hidden_size` \(30\) must be divisible by `num_attention_heads` \(4\)",
        ),
        ({"image_size": 30, "patch_size": 4}, r"`image_size` \(30x30\) must be divisible by `patch_size` \(4x4\)"),
        ({"image_size": [32, 30], "patch_size": 4}, r"`image_size` \(32x30\) must be divisible"),
        ({"num_attention_heads": 0}, r"`num_attention_heads` must be an integer >= 1, got 0"),
    ],
)
def test_architecture_that_does_not_divide_is_rejected_at_construction(shape, message):
    with pytest.raises(ValueError, match=message):
        TriLevelViTConfig(**shape)


def test_architecture_changed_after_construction_is_rejected_when_the_model_is_built():
    from hf_trilevel import TriLevelViTForImageClassification

    config = TriLevelViTConfig(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=2)
    config.num_attention_heads = 3
    with pytest.raises(ValueError, match=r"`hidden_size` \(32\) must be divisible by `num_attention_heads` \(3\)"):
        TriLevelViTForImageClassification(config)


def test_trilevel_checks_are_the_configs_own_strict_validators(tmp_path):
    from huggingface_hub.errors import StrictDataclassClassValidationError

    names = {validator.__name__ for validator in TriLevelViTConfig.__class_validators__}
    assert {"validate_architecture", "validate_token_sparsity"} <= names
    config = TriLevelViTConfig(num_hidden_layers=2)
    config.token_keep_rate = 5.0  # direct assignment bypasses the constructor...
    with pytest.raises(StrictDataclassClassValidationError, match="validate_token_sparsity"):
        config.validate()  # ...but not the config's own validation, which save_pretrained runs too
    with pytest.raises(StrictDataclassClassValidationError, match=r"`token_keep_rate` must be in \(0, 1\]"):
        config.save_pretrained(tmp_path)
