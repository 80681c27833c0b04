"""With every keep rate at 1.0 the TriLevel ViT is transformers' ViT: same weights, same outputs."""

import logging

import pytest
import torch
from transformers import AutoModelForImageClassification, ViTModel

from hf_trilevel import TriLevelViTForImageClassification, TriLevelViTModel

from .helpers import images, tiny_vit


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("depth", [1, 4, 6])
def test_plain_vit_folder_loads_with_identical_logits(tmp_path, attn_implementation, depth):
    reference = tiny_vit(num_hidden_layers=depth, attn_implementation=attn_implementation)
    reference.save_pretrained(tmp_path)

    ours, info = TriLevelViTForImageClassification.from_pretrained(
        tmp_path, attn_implementation=attn_implementation, output_loading_info=True
    )
    assert {key: value for key, value in info.items() if value} == {}
    pixel_values = images(4)
    with torch.no_grad():
        expected = reference(pixel_values).logits
        actual = ours.eval()(pixel_values).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_plain_vit_checkpoint_really_uses_old_key_names(tmp_path):
    # Guards the premise of the test above: transformers 5 writes v4-style names that we must rename on load.
    tiny_vit().save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as checkpoint:
        assert any(".encoder.layer.0.attention.attention.query." in key for key in checkpoint.keys())  # noqa: SIM118 (safe_open is not iterable)


def test_base_model_matches_vit_model_including_pooler(tmp_path):
    torch.manual_seed(0)
    reference = ViTModel(tiny_vit().config).eval()
    reference.save_pretrained(tmp_path)
    ours, info = TriLevelViTModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    pixel_values = images(2)
    with torch.no_grad():
        expected, actual = reference(pixel_values), ours.eval()(pixel_values)
    torch.testing.assert_close(actual.last_hidden_state, expected.last_hidden_state, rtol=0, atol=1e-5)
    torch.testing.assert_close(actual.pooler_output, expected.pooler_output, rtol=0, atol=1e-5)


def test_hidden_states_and_attentions_match_vit_when_dense(tmp_path):
    reference = tiny_vit(attn_implementation="eager")
    reference.save_pretrained(tmp_path)
    ours = TriLevelViTForImageClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    pixel_values = images(2)
    with torch.no_grad():
        expected = reference(pixel_values, output_hidden_states=True, output_attentions=True)
        actual = ours(pixel_values, output_hidden_states=True, output_attentions=True)
    assert len(actual.hidden_states) == len(expected.hidden_states) == 5
    for ours_state, reference_state in zip(actual.hidden_states, expected.hidden_states, strict=True):
        torch.testing.assert_close(ours_state, reference_state, rtol=0, atol=1e-5)
    for ours_weights, reference_weights in zip(actual.attentions, expected.attentions, strict=True):
        torch.testing.assert_close(ours_weights, reference_weights, rtol=0, atol=1e-6)


def test_loss_is_cross_entropy_like_vit(tmp_path):
    reference = tiny_vit()
    reference.save_pretrained(tmp_path)
    ours = TriLevelViTForImageClassification.from_pretrained(tmp_path).eval()
    pixel_values, labels = images(3), torch.tensor([0, 4, 2])
    with torch.no_grad():
        torch.testing.assert_close(ours(pixel_values, labels=labels).loss, reference(pixel_values, labels=labels).loss)


def test_loading_a_vit_folder_is_silent_about_model_types_and_weights(tmp_path, caplog):
    tiny_vit().save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        TriLevelViTForImageClassification.from_pretrained(tmp_path)
        AutoModelForImageClassification.from_pretrained(tmp_path)  # a plain ViT folder still loads as plain ViT
    assert "model of type" not in caplog.text
    assert "MISSING" not in caplog.text and "missing" not in caplog.text.lower()


def test_keep_rates_passed_to_from_pretrained_are_applied_and_validated(tmp_path):
    tiny_vit().save_pretrained(tmp_path)
    model = TriLevelViTForImageClassification.from_pretrained(tmp_path, token_keep_rate=0.7)
    assert model.config.token_keep_rate == 0.7
    with pytest.raises(ValueError, match=r"`token_keep_rate` must be in \(0, 1\]"):
        TriLevelViTForImageClassification.from_pretrained(tmp_path, token_keep_rate=5.0)
