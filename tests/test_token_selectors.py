"""Token-selection seam: a registry of selectors, today's selector bit for bit, per-image counts, auxiliary losses."""

import pytest
import torch
from torch import nn

from hf_trilevel import TriLevelViTConfig
from hf_trilevel.modeling.sparse_attention import sparse_attention_mask
from hf_trilevel.modeling.token_reduction import (
    class_token_attention,
    fuse_dropped_tokens,
    keep_tokens,
    num_kept_tokens,
    select_top_tokens,
    select_top_tokens_per_image,
)
from hf_trilevel.modeling.token_selectors import (
    ClassAttentionSelector,
    TokenSelection,
    TokenSelector,
    register_token_selector,
    registered_token_selectors,
    unregister_token_selector,
)

from .helpers import images, tiny_model


def reference_logits(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The forward as it was before the seam: class-token attention scored and applied inline in each layer."""
    config, vit = model.config, model.vit
    hidden_states = vit.embeddings(pixel_values)
    batch_size, num_tokens = hidden_states.shape[:2]
    positions = torch.arange(num_tokens - 1).expand(batch_size, -1)
    mask = None
    for layer in vit.layers:
        residual = hidden_states
        hidden_states, _, (query, key) = layer.attention(layer.layernorm_before(hidden_states), mask)
        hidden_states = hidden_states + residual
        if layer.layer_idx in config.token_prune_layers:
            num_patches = positions.shape[1]
            num_keep = num_kept_tokens(num_patches, config.token_keep_rate)
            sequence_index = None
            if num_keep < num_patches:
                with torch.set_grad_enabled(torch.is_grad_enabled() and config.token_fusion):
                    scores = class_token_attention(query, key, layer.attention.scaling)
                patch_index = select_top_tokens(scores[:, 1 : 1 + num_patches], num_keep)
                fused = fuse_dropped_tokens(hidden_states, scores, patch_index) if config.token_fusion else None
                hidden_states, positions, sequence_index = keep_tokens(hidden_states, positions, patch_index, fused)
            if config.attention_keep_rate < 1.0:
                if sequence_index is None:
                    sequence_index = torch.arange(1 + num_patches).expand(batch_size, -1)
                mask = sparse_attention_mask(
                    query,
                    key,
                    layer.attention.scaling,
                    config.attention_keep_rate,
                    sequence_index,
                    mask,
                    has_trailing_summary_token=hidden_states.shape[1] > 1 + positions.shape[1],
                    dtype=query.dtype,
                )
            else:
                mask = None
        hidden_states = hidden_states + layer.mlp(layer.layernorm_after(hidden_states))
    return model.classifier(vit.layernorm(hidden_states)[:, 0])


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("token_fusion", [False, True])
@pytest.mark.parametrize("attention_keep_rate", [1.0, 0.4])
def test_class_attention_selector_is_bit_identical_to_the_inline_scorer(
    attn_implementation, token_fusion, attention_keep_rate
):
    model = tiny_model(
        attn_implementation=attn_implementation,
        token_keep_rate=0.5,
        token_fusion=token_fusion,
        attention_keep_rate=attention_keep_rate,
    )
    assert all(isinstance(layer.token_selector, ClassAttentionSelector) for layer in model.vit.layers[1:])
    with torch.no_grad():
        assert torch.equal(model(images(3)).logits, reference_logits(model, images(3)))


def test_gradients_through_the_selector_equal_the_inline_scorer():
    model = tiny_model(token_keep_rate=0.5, token_fusion=True, attention_keep_rate=0.4).train()
    labels = torch.tensor([0, 1, 2])
    gradients = []
    for logits_of in (lambda: model(images(3)).logits, lambda: reference_logits(model, images(3))):
        model.zero_grad()
        nn.functional.cross_entropy(logits_of(), labels).backward()
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters()})
    for name, gradient in gradients[0].items():
        assert torch.equal(gradient, gradients[1][name]), name


def test_selectors_exist_only_at_pruning_layers_and_have_no_weights():
    model = tiny_model(token_prune_layers=[0, 2])
    assert [layer.token_selector is not None for layer in model.vit.layers] == [True, False, True, False]
    assert not any("token_selector" in name for name in model.state_dict())


def test_unknown_selector_is_a_config_error_listing_the_registered_ones():
    with pytest.raises(
        ValueError, match=r"`token_selector` must be one of \['adaptive', 'class_attention', 'learned'\].*got 'magic'"
    ):
        TriLevelViTConfig(token_selector="magic")


def test_registering_refuses_non_selectors_and_silent_replacement():
    with pytest.raises(ValueError, match="TokenSelector subclass"):
        register_token_selector("linear", nn.Linear)
    with pytest.raises(ValueError, match="built-in token selector and cannot be replaced"):
        register_token_selector("class_attention", PerImageCountSelector)
    with pytest.raises(ValueError, match="cannot be unregistered"):
        unregister_token_selector("class_attention")


class PerImageCountSelector(TokenSelector):
    """At layer 1, image i keeps COUNTS[i] patches (by class-token attention); later pruning layers keep all."""

    COUNTS = (16, 40, 64)
    pads_tokens = True

    def forward(
        self, hidden_states, query, key, patch_positions, attention_mask, *, keep_rate, fusion, scaling, **settings
    ):
        if self.layer_idx != 1:
            return None
        scores = class_token_attention(query, key, scaling, attention_mask)
        counts = torch.tensor(self.COUNTS[: len(hidden_states)])
        patch_index, valid_mask = select_top_tokens_per_image(scores[:, 1 : 1 + patch_positions.shape[1]], counts)
        return TokenSelection(patch_index=patch_index, scores=scores, kept_counts=counts, valid_mask=valid_mask)


class FirstLayerClassAttention(ClassAttentionSelector):
    """The built-in selector at layer 1 only: the per-image selector's reference for one image."""

    def forward(self, *args, **kwargs):
        return super().forward(*args, **kwargs) if self.layer_idx == 1 else None


class PerImageEveryLayer(TokenSelector):
    """Image i keeps COUNTS[i] patches at layer 1 and half of its valid patches at each later pruning layer."""

    pads_tokens = True

    def forward(
        self, hidden_states, query, key, patch_positions, attention_mask, *, keep_rate, fusion, scaling, **settings
    ):
        scores = class_token_attention(query, key, scaling, attention_mask)
        valid = (patch_positions >= 0).sum(1)
        counts = torch.tensor(PerImageCountSelector.COUNTS) if self.layer_idx == 1 else (valid + 1) // 2
        patch_index, valid_mask = select_top_tokens_per_image(scores[:, 1 : 1 + patch_positions.shape[1]], counts)
        return TokenSelection(patch_index=patch_index, scores=scores, kept_counts=counts, valid_mask=valid_mask)


class LinearScoreSelector(TokenSelector):
    """Scores tokens with a linear layer and returns a budget-style auxiliary loss: it must receive gradients."""

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.score = nn.Linear(config.hidden_size, 1)

    def forward(
        self, hidden_states, query, key, patch_positions, attention_mask, *, keep_rate, fusion, scaling, **settings
    ):
        scores = self.score(hidden_states).squeeze(-1).softmax(dim=-1)
        num_keep = num_kept_tokens(patch_positions.shape[1], keep_rate)
        patch_index = select_top_tokens(scores[:, 1 : 1 + patch_positions.shape[1]].detach(), num_keep)
        return TokenSelection(patch_index=patch_index, scores=scores, auxiliary_loss=scores[:, 1:].mean() * 0 + 0.25)


@pytest.fixture
def test_selectors():
    register_token_selector("per_image_count", PerImageCountSelector)
    register_token_selector("linear_score", LinearScoreSelector)
    register_token_selector("first_layer_class_attention", FirstLayerClassAttention)
    register_token_selector("per_image_every_layer", PerImageEveryLayer)
    yield
    for name in ("per_image_count", "linear_score", "first_layer_class_attention", "per_image_every_layer"):
        unregister_token_selector(name)
    assert registered_token_selectors() == ["adaptive", "class_attention", "learned"]


def test_per_image_selection_pads_after_the_kept_patches_in_ascending_order():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.2], [0.5, 0.1, 0.7, 0.0, 0.6]])
    patch_index, valid_mask = select_top_tokens_per_image(scores, torch.tensor([1, 3]))
    assert valid_mask.tolist() == [[True, False, False], [True, True, True]]
    assert patch_index[0, 0].item() == 1 and patch_index[1].tolist() == [0, 2, 4]
    assert set(patch_index[0, 1:].tolist()) <= {0, 2, 3, 4}  # padded slots point at dropped patches


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("token_fusion", [False, True])
@pytest.mark.parametrize("attention_keep_rate", [1.0, 0.5])
def test_per_image_counts_give_each_image_what_it_gets_alone(
    test_selectors, attn_implementation, token_fusion, attention_keep_rate
):
    # Image i keeps COUNTS[i] patches at layer 1 in a padded batch; alone, the class-attention selector at keep rate
    # COUNTS[i] / 64 keeps the same patches without padding. Masked padding (and the empty fused token of the image
    # that keeps everything) must change nothing else, through later layers that rebuild the attention mask. With
    # attention sparsity each image's connection budget follows its own count, so every image matches there too.
    shape = {
        "token_prune_layers": [1, 2, 3],
        "token_fusion": token_fusion,
        "attention_keep_rate": attention_keep_rate,
        "attn_implementation": attn_implementation,
    }
    padded_model = tiny_model(token_selector="per_image_count", **shape)
    pixel_values, counts = images(3), PerImageCountSelector.COUNTS
    with torch.no_grad():
        padded = padded_model(pixel_values, output_kept_token_indices=True)
        kept = padded.kept_token_indices[0]
        assert kept.shape == (3, max(counts)) and (kept >= 0).sum(1).tolist() == list(counts)
        for index, count in enumerate(counts):
            alone_model = tiny_model(token_selector="first_layer_class_attention", token_keep_rate=count / 64, **shape)
            alone = alone_model(pixel_values[index : index + 1], output_kept_token_indices=True)
            assert torch.equal(kept[index, :count], alone.kept_token_indices[0][0, :count])
            assert torch.all(kept[index, count:] == -1)
            torch.testing.assert_close(padded.logits[index], alone.logits[0], rtol=1e-5, atol=1e-5)


def test_per_image_padding_stays_behind_the_real_patches_through_later_pruning_layers(test_selectors):
    model = tiny_model(token_selector="per_image_every_layer", token_fusion=True, attention_keep_rate=0.5)
    with torch.no_grad():
        outputs = model(images(3), output_kept_token_indices=True)
    assert torch.isfinite(outputs.logits).all()
    counts = [(kept >= 0).sum(1).tolist() for kept in outputs.kept_token_indices]
    assert counts == [[16, 40, 64], [8, 20, 32], [4, 10, 16]]
    for kept in outputs.kept_token_indices:
        valid = kept >= 0
        assert torch.equal(valid, valid.sort(dim=1, descending=True).values)


def test_auxiliary_losses_are_summed_over_pruning_layers_and_added_to_the_loss(test_selectors):
    model = tiny_model(token_selector="linear_score", token_keep_rate=0.5, token_fusion=True).train()
    labels = torch.tensor([0, 1])
    outputs = model(images(2), labels=labels)
    assert outputs.auxiliary_loss.item() == pytest.approx(0.25 * 3)  # three pruning layers
    cross_entropy = nn.functional.cross_entropy(outputs.logits, labels)
    torch.testing.assert_close(outputs.loss, cross_entropy + outputs.auxiliary_loss)
    assert model(images(2)).loss is None and tiny_model()(images(2)).auxiliary_loss is None


def test_a_learned_selector_gets_gradients_and_its_weights_are_checkpointed(test_selectors, tmp_path):
    model = tiny_model(token_selector="linear_score", token_keep_rate=0.5, token_fusion=True).train()
    model(images(2), labels=torch.tensor([0, 1])).loss.backward()
    selector_weight = model.vit.layers[1].token_selector.score.weight
    assert selector_weight.grad is not None and selector_weight.grad.abs().sum() > 0
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert torch.equal(loaded.vit.layers[1].token_selector.score.weight, selector_weight)


class UndeclaredPadding(PerImageCountSelector):
    pads_tokens = False


def test_a_selector_that_pads_without_saying_so_is_refused():
    register_token_selector("undeclared_padding", UndeclaredPadding)
    try:
        model = tiny_model(token_selector="undeclared_padding", token_prune_layers=[1, 2, 3])
        with pytest.raises(ValueError, match="pads_tokens = True"):
            model(images(3))
    finally:
        unregister_token_selector("undeclared_padding")


class PreSettingsSelector(ClassAttentionSelector):
    """A selector written to the first published signature, without `**settings`: it must keep working."""

    def forward(self, hidden_states, query, key, patch_positions, attention_mask, *, keep_rate, fusion, scaling):
        return super().forward(
            hidden_states,
            query,
            key,
            patch_positions,
            attention_mask,
            keep_rate=keep_rate,
            fusion=fusion,
            scaling=scaling,
        )


def test_a_selector_without_settings_in_its_signature_still_runs():
    register_token_selector("pre_settings", PreSettingsSelector)
    try:
        model = tiny_model(token_selector="pre_settings", token_keep_rate=0.5)
        with torch.no_grad():
            assert torch.equal(model(images(2)).logits, tiny_model(token_keep_rate=0.5)(images(2)).logits)
    finally:
        unregister_token_selector("pre_settings")
