"""Training-time features with sparsity on: gradient checkpointing, bf16 autocast, torch.compile."""

import pytest
import torch

from .helpers import images, sharpen_attention, tiny_model

SPARSE = {"token_keep_rate": 0.5, "attention_keep_rate": 0.4, "token_fusion": True}
SELECTORS = {
    "class_attention": {},
    "learned": {"token_selector": "learned", "token_prune_layers": [0, 1, 2]},
    "adaptive": {"token_selector": "adaptive", "token_keep_rate": 0.8, "token_keep_mass": 0.6},
    "adaptive_learned": {"token_selector": "adaptive", "token_importance": "learned", "token_keep_mass": 0.6},
}


def loss_and_gradients(model, pixel_values, labels):
    model.zero_grad()
    torch.manual_seed(0)  # the same Gumbel noise for learned scores
    loss = model(pixel_values, labels=labels).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("selector", list(SELECTORS))
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(selector):
    model = tiny_model(**{**SPARSE, **SELECTORS[selector]}).train()
    if selector.startswith("adaptive"):
        sharpen_attention(model)
    pixel_values, labels = images(4), torch.tensor([0, 1, 2, 3])
    loss, gradients = loss_and_gradients(model, pixel_values, labels)
    model.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.vit.layers)
    checkpointed_loss, checkpointed_gradients = loss_and_gradients(model, pixel_values, labels)
    torch.testing.assert_close(checkpointed_loss, loss)
    assert gradients.keys() == checkpointed_gradients.keys()
    for name, gradient in gradients.items():
        torch.testing.assert_close(checkpointed_gradients[name], gradient, msg=name)


def test_checkpointed_dense_and_sparse_passes_of_one_batch_backpropagate_together():
    # SaiT-style training: a sparse and a dense pass of the same batch, one backward. The recompute of each
    # checkpointed layer must use the rates of its own forward, not the rates set afterwards.
    model = tiny_model(token_keep_rate=0.5, attention_keep_rate=0.4).train()
    model.activation_checkpointing_enable()
    pixel_values, labels = images(2), torch.tensor([0, 1])
    sparse_loss = model(pixel_values, labels=labels).loss
    with model.keep_rates(token_keep_rate=1.0, attention_keep_rate=1.0):
        dense_loss = model(pixel_values, labels=labels).loss
    (sparse_loss + dense_loss).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_every_trainable_weight_gets_a_gradient_with_sparsity_on():
    model = tiny_model(**SPARSE).train()
    _, gradients = loss_and_gradients(model, images(4), torch.tensor([0, 1, 2, 3]))
    assert set(gradients) == {name for name, _ in model.named_parameters()}


def test_bf16_autocast_forward_and_backward_run_with_finite_gradients():
    model = tiny_model(**SPARSE).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(images(4), labels=torch.tensor([0, 1, 2, 3]))
    assert outputs.logits.dtype == torch.bfloat16
    outputs.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bf16_weights_run_inference():
    model = tiny_model(**SPARSE).to(torch.bfloat16)
    with torch.no_grad():
        logits = model(images(2)).logits  # float32 pixels are cast to the weights' dtype, as in transformers' ViT
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_torch_compile_with_fixed_keep_rates_matches_eager_execution():
    model = tiny_model(**SPARSE)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(images(3)).logits, model(images(3)).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("pixel_values", "message"),
    [
        (images(2).to(torch.uint8), "floating-point tensor"),
        (images(2)[:, :1], "has 1 channels but the config expects num_channels=3"),
        (images(2, size=48), "48x48 pixels but the config expects image_size=32x32"),
        (images(2)[0], "must be a 4-D tensor"),
        (None, "`pixel_values` is required"),
    ],
)
def test_bad_pixel_values_are_rejected_before_any_layer_runs(pixel_values, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(**SPARSE)(pixel_values)


def test_other_resolutions_work_with_interpolated_position_embeddings():
    model = tiny_model(**SPARSE)
    with torch.no_grad():
        outputs = model(images(2, size=48), interpolate_pos_encoding=True, output_kept_token_indices=True)
    assert outputs.kept_token_indices[0].shape == (2, 72)  # ceil(144 patches * 0.5)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("token_keep_rate", 1.5, r"`token_keep_rate` must be in \(0, 1\]"),
        ("token_keep_rate", "0.5", "`token_keep_rate` must be a number"),
        ("attention_keep_rate", 0.0, r"`attention_keep_rate` must be in \(0, 1\]"),
        ("token_prune_layers", [1, 20], "20 is out of range"),
        ("token_fusion", "yes", "`token_fusion` must be True or False"),
    ],
)
def test_values_assigned_to_the_config_directly_are_checked_at_the_next_forward(field, value, message):
    model = tiny_model()
    setattr(model.config, field, value)
    with pytest.raises(ValueError, match=message):
        model(images(1))


def test_masked_patches_are_supported_like_vit_model():
    from hf_trilevel import TriLevelViTModel

    from .helpers import tiny_config

    torch.manual_seed(0)
    model = TriLevelViTModel(tiny_config(token_keep_rate=0.5), use_mask_token=True).eval()
    masked = torch.zeros(2, 64, dtype=torch.bool)
    masked[:, :32] = True
    with torch.no_grad():
        plain = model(images(2)).last_hidden_state
        with_mask = model(images(2), bool_masked_pos=masked).last_hidden_state
    assert not torch.allclose(plain, with_mask)


def test_an_attention_mask_argument_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="`attention_mask` is not supported"):
        tiny_model()(images(1), attention_mask=torch.ones(1, 65))


def test_unknown_attention_implementation_is_rejected():
    with pytest.raises(ValueError, match='attn_implementation="no_such_kernel"'):
        tiny_model(attn_implementation="no_such_kernel")
