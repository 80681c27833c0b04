"""Physical slimming: pruned heads and neurons (all-zero units) removed, outputs, config and loading unchanged."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModelForImageClassification

from hf_trilevel import TriLevelViTForImageClassification, TriLevelViTModel
from hf_trilevel.evaluation.flops import forward_flops
from hf_trilevel.weight_sparsity.slimming import slim, structured_unit_masks

from .helpers import images, run_without_hf_trilevel, sharpen_attention, tiny_config, tiny_model, tiny_vit

HIDDEN, HEAD_DIM, HEADS, MLP = 32, 16, 2, 64
# Layer -> pruned heads / neurons. Layer 2 is left whole: a slimmed model may keep some layers dense.
PRUNED_HEADS = {0: [1], 1: [0], 3: [0]}
PRUNED_NEURONS = {0: list(range(0, 64, 2)), 1: [5, 6, 7], 3: list(range(40))}
KEPT_HEADS = [HEADS - len(PRUNED_HEADS.get(i, [])) for i in range(4)]
KEPT_NEURONS = [MLP - len(PRUNED_NEURONS.get(i, [])) for i in range(4)]
SPARSE = {"token_keep_rate": 0.5, "attention_keep_rate": 0.5}


def zero_units(model, heads=PRUNED_HEADS, neurons=PRUNED_NEURONS, output_side: bool = False):
    """Prune as the contract defines it: q, k, v rows (and biases) of a head, the fc1 row (and bias) of a neuron.

    The output side (o_proj / fc2 columns) keeps its random values unless `output_side`: slimming must not need it.
    """
    encoder = model.vit if hasattr(model, "vit") else model
    with torch.no_grad():
        for index, pruned in heads.items():
            attention = encoder.layers[index].attention
            for head in pruned:
                rows = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
                for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
                    projection.weight[rows] = 0
                    projection.bias[rows] = 0
                if output_side:
                    attention.o_proj.weight[:, rows] = 0
        for index, pruned in neurons.items():
            mlp = encoder.layers[index].mlp
            mlp.fc1.weight[pruned] = 0
            mlp.fc1.bias[pruned] = 0
            if output_side:
                mlp.fc2.weight[:, pruned] = 0
    return model


def pruned_model(seed: int = 0, **overrides) -> TriLevelViTForImageClassification:
    # Peaked attention, so that which tokens and connections survive depends on the weights (and would expose a
    # slimmed model that selected differently).
    return zero_units(sharpen_attention(tiny_model(seed, **overrides)))


def test_unit_masks_mark_exactly_the_zeroed_heads_and_neurons():
    heads, neurons = structured_unit_masks(pruned_model())
    for index in range(4):
        assert heads[index].dtype == torch.bool and heads[index].shape == (HEADS,)
        assert neurons[index].dtype == torch.bool and neurons[index].shape == (MLP,)
        assert torch.nonzero(~heads[index]).flatten().tolist() == PRUNED_HEADS.get(index, [])
        assert torch.nonzero(~neurons[index]).flatten().tolist() == PRUNED_NEURONS.get(index, [])


@pytest.mark.parametrize("zeroed", [("q_proj", "k_proj"), ("v_proj",), ("q_proj", "k_proj", "v_proj")])
def test_a_head_is_pruned_only_when_its_q_k_and_v_rows_and_biases_are_all_zero(zeroed):
    model = tiny_model()
    attention = model.vit.layers[0].attention
    with torch.no_grad():
        for name in zeroed:
            getattr(attention, name).weight[:HEAD_DIM] = 0
        attention.q_proj.bias[:HEAD_DIM] = attention.k_proj.bias[:HEAD_DIM] = attention.v_proj.bias[:HEAD_DIM] = 0
    heads, _ = structured_unit_masks(model)
    assert heads[0].tolist() == [len(zeroed) < 3, True]


def test_a_neuron_whose_fc1_bias_is_not_zero_is_kept():
    model = tiny_model()
    with torch.no_grad():
        model.vit.layers[0].mlp.fc1.bias.fill_(0.1)  # a fresh model's biases are zero
        model.vit.layers[0].mlp.fc1.weight[3] = 0  # the bias still feeds act(bias) into fc2
    assert structured_unit_masks(model)[1][0].all()
    with torch.no_grad():
        model.vit.layers[0].mlp.fc1.bias[3] = 0
    assert torch.nonzero(~structured_unit_masks(model)[1][0]).flatten().tolist() == [3]


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_slimmed_logits_equal_the_masked_logits_with_token_dropping_and_sparse_attention(attn_implementation):
    masked = pruned_model(attn_implementation=attn_implementation, **SPARSE)
    slimmed = slim(masked)
    assert slimmed.config._attn_implementation == attn_implementation
    assert [layer.attention.num_attention_heads for layer in slimmed.vit.layers] == KEPT_HEADS
    assert [layer.mlp.fc1.out_features for layer in slimmed.vit.layers] == KEPT_NEURONS
    with torch.no_grad():
        expected = masked(images(4), output_kept_token_indices=True)
        actual = slimmed(images(4), output_kept_token_indices=True)
    for kept, kept_by_masked in zip(actual.kept_token_indices, expected.kept_token_indices, strict=True):
        assert torch.equal(kept, kept_by_masked)
    assert actual.kept_token_indices[-1].shape[1] < 64 // 4  # tokens really were dropped
    torch.testing.assert_close(actual.logits, expected.logits, rtol=1e-5, atol=1e-5)


def learned_scorers(model):
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".scorer." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model


def test_a_slimmed_learned_selector_keeps_its_trained_scorer():
    masked = learned_scorers(pruned_model(token_selector="learned", **SPARSE))
    slimmed = slim(masked)
    scorers = {name: tensor for name, tensor in masked.state_dict().items() if ".token_selector." in name}
    assert scorers and all(torch.equal(slimmed.state_dict()[name], tensor) for name, tensor in scorers.items())


# A pruned head's zero queries and keys give it uniform attention, which the masked model's head-averaged class
# attention includes; the slimmed model counts each removed head as that uniform attention (`class_token_attention`'s
# `num_heads`), so fusion weights, the adaptive importance mass and the learned corrections read the same values.
@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"token_fusion": True}, id="fusion"),
        pytest.param({"token_selector": "learned"}, id="learned"),
        pytest.param(
            {"token_selector": "adaptive", "token_keep_rate": 0.9, "token_keep_mass": 0.6},
            id="adaptive",
        ),
    ],
)
def test_slimmed_logits_equal_the_masked_logits_with_score_reading_selection(settings):
    masked = learned_scorers(pruned_model(**{**SPARSE, **settings}))
    slimmed = slim(masked)
    with torch.no_grad():
        torch.testing.assert_close(slimmed(images(4)).logits, masked(images(4)).logits, rtol=1e-5, atol=1e-5)


def test_an_activation_with_nonzero_act0_needs_the_fc2_column_zero_too():
    # sigmoid(0) = 0.5: a zero fc1 row still sends 0.5 * fc2[:, j] onward, so the neuron is not pruned by it alone.
    model = zero_units(tiny_model(hidden_act="sigmoid"), heads={}, neurons={1: [2, 9]})
    assert structured_unit_masks(model)[1][1].all()
    with torch.no_grad():
        model.vit.layers[1].mlp.fc2.weight[:, 2] = 0
    assert torch.nonzero(~structured_unit_masks(model)[1][1]).flatten().tolist() == [2]
    slimmed = slim(model)
    assert slimmed.config.intermediate_size_per_layer == [64, 63, 64, 64]
    with torch.no_grad():
        torch.testing.assert_close(slimmed(images(2)).logits, model(images(2)).logits, rtol=1e-5, atol=1e-5)


def test_the_config_gets_per_layer_lists_and_keeps_every_other_field():
    masked = pruned_model(token_fusion=False, token_prune_layers=[1, 2], dense_sparse_keep_rates=[1.0, 0.5], **SPARSE)
    masked.config.id2label = {i: f"digit-{i}" for i in range(5)}
    masked.config.label2id = {label: i for i, label in masked.config.id2label.items()}
    slimmed = slim(masked)
    assert slimmed.config is not masked.config
    assert slimmed.config.num_attention_heads_per_layer == KEPT_HEADS
    assert slimmed.config.intermediate_size_per_layer == KEPT_NEURONS
    assert masked.config.num_attention_heads_per_layer is None  # the original config is untouched
    changed = {"num_attention_heads_per_layer", "intermediate_size_per_layer"}
    original = {key: value for key, value in masked.config.to_dict().items() if key not in changed}
    assert {key: value for key, value in slimmed.config.to_dict().items() if key not in changed} == original


def test_uniform_sizes_after_slimming_are_still_written_as_lists():
    model = zero_units(tiny_model(), heads={i: [1] for i in range(4)}, neurons={i: [0] for i in range(4)})
    config = slim(model).config
    assert config.num_attention_heads_per_layer == [1] * 4 and config.intermediate_size_per_layer == [63] * 4


def test_slimming_keeps_dtype_train_mode_and_frozen_parameters():
    model = pruned_model().to(torch.bfloat16).train()
    model.vit.embeddings.patch_embeddings.projection.weight.requires_grad_(False)
    slimmed = slim(model)
    assert slimmed.training and all(module.training for module in slimmed.modules())
    assert {parameter.dtype for parameter in slimmed.parameters()} == {torch.bfloat16}
    frozen = [name for name, parameter in slimmed.named_parameters() if not parameter.requires_grad]
    assert frozen == ["vit.embeddings.patch_embeddings.projection.weight"]
    assert not slim(pruned_model()).training


def test_the_original_model_is_untouched_and_shares_no_storage():
    model = pruned_model(**SPARSE)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    slimmed = slim(model)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    with torch.no_grad():
        for parameter in slimmed.parameters():
            parameter.fill_(7.0)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_the_kept_units_keep_their_weights_rows_and_columns():
    model = pruned_model()
    slimmed = slim(model)
    attention, slim_attention = model.vit.layers[0].attention, slimmed.vit.layers[0].attention  # head 1 pruned
    torch.testing.assert_close(slim_attention.q_proj.weight, attention.q_proj.weight[:HEAD_DIM], rtol=0, atol=0)
    torch.testing.assert_close(slim_attention.v_proj.bias, attention.v_proj.bias[:HEAD_DIM], rtol=0, atol=0)
    torch.testing.assert_close(slim_attention.o_proj.weight, attention.o_proj.weight[:, :HEAD_DIM], rtol=0, atol=0)
    torch.testing.assert_close(slim_attention.o_proj.bias, attention.o_proj.bias, rtol=0, atol=0)
    mlp, slim_mlp = model.vit.layers[0].mlp, slimmed.vit.layers[0].mlp  # even neurons pruned
    torch.testing.assert_close(slim_mlp.fc1.weight, mlp.fc1.weight[1::2], rtol=0, atol=0)
    torch.testing.assert_close(slim_mlp.fc2.weight, mlp.fc2.weight[:, 1::2], rtol=0, atol=0)
    torch.testing.assert_close(slimmed.classifier.weight, model.classifier.weight, rtol=0, atol=0)


def test_a_base_model_slims_to_a_base_model_with_its_pooler():
    torch.manual_seed(0)
    masked = zero_units(TriLevelViTModel(tiny_config(**SPARSE)).eval())
    slimmed = slim(masked)
    assert type(slimmed) is TriLevelViTModel and slimmed.pooler is not None
    with torch.no_grad():
        expected, actual = masked(images(2)), slimmed(images(2))
    torch.testing.assert_close(actual.last_hidden_state, expected.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(actual.pooler_output, expected.pooler_output, rtol=1e-5, atol=1e-5)


def test_parameter_count_shrinks_by_exactly_the_removed_rows_and_columns():
    model = pruned_model()
    # A head: q, k, v rows with biases, and its o_proj columns. A neuron: its fc1 row and bias, its fc2 column.
    per_head = 3 * (HEAD_DIM * HIDDEN + HEAD_DIM) + HIDDEN * HEAD_DIM
    per_neuron = HIDDEN + 1 + HIDDEN
    removed = per_head * sum(map(len, PRUNED_HEADS.values())) + per_neuron * sum(map(len, PRUNED_NEURONS.values()))
    assert model.num_parameters() - slim(model).num_parameters() == removed


def test_slimmed_flops_are_lower_and_equal_those_of_a_config_with_the_kept_sizes():
    masked = pruned_model(attn_implementation="eager", **SPARSE)
    slimmed = slim(masked)
    sizes = {"num_attention_heads_per_layer": KEPT_HEADS, "intermediate_size_per_layer": KEPT_NEURONS}
    assert forward_flops(slimmed.config) == forward_flops(tiny_config(**SPARSE, **sizes))
    assert forward_flops(slimmed.config) < forward_flops(masked.config)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        slimmed(images(2))
    assert counter.get_total_flops() == forward_flops(slimmed.config, batch_size=2)  # the model runs what it says


def test_per_layer_sizes_round_trip_through_save_and_load(tmp_path):
    slimmed = slim(pruned_model(**SPARSE))
    slimmed.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["num_attention_heads_per_layer"] == KEPT_HEADS and saved["intermediate_size_per_layer"] == KEPT_NEURONS
    assert AutoConfig.from_pretrained(tmp_path).num_attention_heads_per_layer == KEPT_HEADS
    loaded = TriLevelViTForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(images(2)).logits, slimmed(images(2)).logits)


# Run after `helpers.WITHOUT_HF_TRILEVEL`: loads a slimmed folder with remote code alone.
LOAD_SLIMMED_SCRIPT = """
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageClassification

folder, work = sys.argv[1], sys.argv[2]
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(load_file(f"{work}/inputs.safetensors")["pixel_values"]).logits
save_file({"logits": logits}, f"{work}/outputs.safetensors")
print(json.dumps({
    "module": type(model).__module__,
    "heads": [layer.attention.num_attention_heads for layer in model.vit.layers],
    "mlp": [layer.mlp.fc1.out_features for layer in model.vit.layers],
    "loaded_modules": sorted(m for m in sys.modules if m.startswith("hf_trilevel")),
}))
"""


def test_a_slimmed_folder_loads_with_remote_code_where_hf_trilevel_cannot_be_imported(tmp_path):
    masked = pruned_model(**SPARSE)
    folder, work = tmp_path / "slimmed", tmp_path / "elsewhere"
    slim(masked).save_pretrained(folder)
    work.mkdir()
    pixel_values = images(2)
    save_file({"pixel_values": pixel_values}, work / "inputs.safetensors")

    report = run_without_hf_trilevel(LOAD_SLIMMED_SCRIPT, folder, work, tmp_path)
    assert report["module"].startswith("transformers_modules.")
    assert report["loaded_modules"] == []
    assert report["heads"] == KEPT_HEADS and report["mlp"] == KEPT_NEURONS
    with torch.no_grad():
        expected = masked(pixel_values).logits
    torch.testing.assert_close(load_file(work / "outputs.safetensors")["logits"], expected, rtol=1e-5, atol=1e-5)


def test_auto_class_loads_the_slimmed_folder_in_this_process_too(tmp_path):
    slim(pruned_model()).save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert isinstance(loaded, TriLevelViTForImageClassification)
    assert [layer.attention.num_attention_heads for layer in loaded.vit.layers] == KEPT_HEADS


def test_a_dense_model_has_no_structured_masks():
    with pytest.raises(ValueError, match="has no structured masks") as raised:
        slim(tiny_model())
    assert "unstructured" not in str(raised.value)


def test_scattered_zeros_are_refused_as_unstructured_only():
    model = tiny_model()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.vit.layers.named_parameters():
            if name.endswith("weight") and parameter.dim() == 2:
                parameter.masked_fill_(torch.rand(parameter.shape, generator=generator) < 0.5, 0.0)
    with pytest.raises(ValueError, match=r"has no structured masks.*looks unstructured-only") as raised:
        slim(model)
    assert "unstructured zeros cannot be removed" in str(raised.value)


def test_a_layer_with_every_head_pruned_is_refused():
    model = zero_units(tiny_model(), heads={2: [0, 1]}, neurons={})
    with pytest.raises(ValueError, match=r"Layer 2 .* every one of its 2 heads pruned.*at least one head"):
        slim(model)


def test_a_layer_with_every_neuron_pruned_is_refused():
    model = zero_units(tiny_model(), heads={0: [0]}, neurons={3: list(range(MLP))})
    with pytest.raises(ValueError, match=r"Layer 3 .* every one of its 64 neurons pruned"):
        slim(model)


@pytest.mark.parametrize("function", [slim, structured_unit_masks])
def test_a_model_that_is_not_trilevel_is_refused(function):
    with pytest.raises(ValueError, match="must be a TriLevelViTForImageClassification or TriLevelViTModel, got Vi"):
        function(tiny_vit())
