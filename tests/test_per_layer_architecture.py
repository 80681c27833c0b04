"""Per-layer architecture: heads and MLP width per layer, read from one place, built, saved and loaded."""

import pytest
import torch
from transformers import AutoConfig

from hf_trilevel import TriLevelViTConfig, TriLevelViTForImageClassification

from .helpers import images, tiny_config, tiny_model

HEADS = [2, 1, 2, 1]
MLP = [64, 16, 48, 8]


def test_uniform_config_reports_the_uniform_sizes_for_every_layer():
    config = tiny_config()
    assert [config.layer_num_attention_heads(i) for i in range(4)] == [2] * 4
    assert [config.layer_intermediate_size(i) for i in range(4)] == [64] * 4
    assert config.num_attention_heads_per_layer is None and config.intermediate_size_per_layer is None


def test_per_layer_lists_override_the_uniform_sizes():
    config = tiny_config(num_attention_heads_per_layer=HEADS, intermediate_size_per_layer=MLP)
    assert [config.layer_num_attention_heads(i) for i in range(4)] == HEADS
    assert [config.layer_intermediate_size(i) for i in range(4)] == MLP


@pytest.mark.parametrize("index", [-1, 4, 1.0])
def test_layer_index_outside_the_depth_is_refused(index):
    with pytest.raises(ValueError, match=r"`layer index` must be an integer in \[0, 3\]"):
        tiny_config().layer_num_attention_heads(index)


@pytest.mark.parametrize("field", ["num_attention_heads_per_layer", "intermediate_size_per_layer"])
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([2, 2, 2], r"` must be None \(uniform\) or a list of 4 positive integers"),
        ("2222", r"` must be None \(uniform\) or a list of 4 positive integers"),
        ([2, 0, 2, 2], r"\[1\]` must be an integer >= 1, got 0"),
        ([2, 2, 2.5, 2], r"\[2\]` must be an integer >= 1, got 2.5"),
        ([2, 2, 2, True], r"\[3\]` must be an integer >= 1, got True"),
    ],
)
def test_mismatched_per_layer_lists_are_config_errors_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=rf"`{field}" + message):
        tiny_config(**{field: value})


def test_each_layer_is_built_with_its_own_sizes_and_vit_parameter_names():
    model = tiny_model(num_attention_heads_per_layer=HEADS, intermediate_size_per_layer=MLP)
    head_dim = 32 // 2  # hidden_size / num_attention_heads, whatever a layer's head count
    for layer, heads, width in zip(model.vit.layers, HEADS, MLP, strict=True):
        assert layer.attention.num_attention_heads == heads
        for projection in ("q_proj", "k_proj", "v_proj"):
            assert getattr(layer.attention, projection).weight.shape == (heads * head_dim, 32)
        assert layer.attention.o_proj.weight.shape == (32, heads * head_dim)
        assert layer.mlp.fc1.weight.shape == (width, 32) and layer.mlp.fc2.weight.shape == (32, width)
    with torch.no_grad():
        assert model(images(2)).logits.shape == (2, 5)


def test_a_slimmed_layer_computes_what_the_full_layer_computes_with_those_heads_zeroed():
    # Dropping head 1 of layer 0 (and half of its MLP) equals the full model with those weights zeroed: the heads are
    # laid out as contiguous head_dim blocks of the projections, as in transformers' ViT.
    full = tiny_model(token_keep_rate=0.5)
    slim = tiny_model(
        token_keep_rate=0.5, num_attention_heads_per_layer=[1, 2, 2, 2], intermediate_size_per_layer=[32] + [64] * 3
    )
    state = full.state_dict()
    attention, mlp = "vit.layers.0.attention.", "vit.layers.0.mlp."
    for name in ("q_proj", "k_proj", "v_proj"):
        state[attention + name + ".weight"][16:] = 0
        state[attention + name + ".bias"][16:] = 0
    state[attention + "o_proj.weight"][:, 16:] = 0
    state[mlp + "fc1.weight"][32:] = 0
    state[mlp + "fc1.bias"][32:] = 0
    state[mlp + "fc2.weight"][:, 32:] = 0
    full.load_state_dict(state)
    slim_state = {
        name: tensor[tuple(slice(0, size) for size in slim.state_dict()[name].shape)] for name, tensor in state.items()
    }
    slim.load_state_dict(slim_state)
    with torch.no_grad():
        torch.testing.assert_close(slim(images(2)).logits, full(images(2)).logits, rtol=1e-5, atol=1e-6)


def test_per_layer_sizes_round_trip_through_save_and_load(tmp_path):
    model = tiny_model(num_attention_heads_per_layer=HEADS, intermediate_size_per_layer=MLP, token_keep_rate=0.5)
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.num_attention_heads_per_layer == HEADS and config.intermediate_size_per_layer == MLP
    loaded = TriLevelViTForImageClassification.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(images(2)).logits, model(images(2)).logits)


def test_per_layer_lists_must_follow_a_changed_depth():
    with pytest.raises(ValueError, match=r"`num_attention_heads_per_layer` must be None \(uniform\) or a list of 6"):
        TriLevelViTConfig(num_hidden_layers=6, num_attention_heads_per_layer=[12] * 12)
