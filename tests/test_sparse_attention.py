"""Attention level: top-k connections per query row, summary tokens kept whole, one mask per pruning interval."""

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from hf_trilevel.modeling_trilevel_vit import TriLevelViTAttention
from hf_trilevel.sparse_attention import select_connections, sparse_attention_mask

from .helpers import images, tiny_model


def random_scores(batch: int, tokens: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, tokens, tokens, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("tokens", "rate", "budget"), [(10, 0.3, 3), (33, 0.5, 17), (9, 0.1, 1)])
def test_every_row_keeps_its_budget_with_the_class_column_included(tokens, rate, budget):
    mask = select_connections(random_scores(2, tokens), rate, has_trailing_summary_token=False)
    assert torch.all(mask[:, 0, :])  # class row whole
    assert torch.all(mask[:, :, 0])  # class column in every row
    assert torch.all(mask[:, 1:].sum(-1) == max(budget, 1))


def test_kept_connections_are_the_highest_scoring_ones():
    scores = random_scores(1, 8)
    mask = select_connections(scores, 0.5, has_trailing_summary_token=False)
    for row in range(1, 8):
        patch_scores = scores[0, row, 1:]
        expected = set((patch_scores.topk(3).indices + 1).tolist()) | {0}
        assert set(mask[0, row].nonzero().flatten().tolist()) == expected


def test_fused_summary_token_keeps_its_row_and_column():
    generator = torch.Generator().manual_seed(0)
    query, key = torch.randn(2, 2, 9, 4, generator=generator), torch.randn(2, 2, 9, 4, generator=generator)
    mask = sparse_attention_mask(query, key, 0.5, 0.3, has_trailing_summary_token=True)
    assert mask.shape == (2, 1, 10, 10) and mask.dtype == torch.bool
    assert torch.all(mask[:, 0, -1, :]) and torch.all(mask[:, 0, :, -1])
    assert torch.all(mask[:, 0, 0, :]) and torch.all(mask[:, 0, :, 0])
    assert torch.all(mask[:, 0, 1:-1].sum(-1) == 3)  # ceil(10 * 0.3) with both summary columns in the budget


def record_attention_masks(model) -> list:
    recorded = []
    for module in model.modules():
        if isinstance(module, TriLevelViTAttention):
            module.register_forward_pre_hook(lambda _m, args: recorded.append(args[1]))
    return recorded


@pytest.mark.parametrize("token_keep_rate", [1.0, 0.6])
def test_one_mask_is_built_per_pruning_layer_and_reused_until_the_next(token_keep_rate):
    model = tiny_model(num_hidden_layers=6, token_prune_layers=[1, 3], token_keep_rate=token_keep_rate)
    model.set_keep_rates(attention_keep_rate=0.4)
    masks = record_attention_masks(model)
    with torch.no_grad():
        model(images(2))
    assert masks[0] is None and masks[1] is None  # dense up to and including the first pruning layer's attention
    assert masks[2] is masks[3]  # built at layer 1, used by layers 2 and 3
    assert masks[4] is masks[5] and masks[4] is not masks[3]  # rebuilt at layer 3
    tokens_after = [1 + n for n in ([64, 64] if token_keep_rate == 1.0 else [39, 24])]
    assert masks[2].shape == (2, 1, tokens_after[0], tokens_after[0])
    assert masks[4].shape == (2, 1, tokens_after[1], tokens_after[1])


def test_masked_attention_weights_are_renormalised_over_kept_connections():
    model = tiny_model(token_keep_rate=0.5, attention_keep_rate=0.3, attn_implementation="eager")
    with torch.no_grad():
        attentions = model(images(2), output_attentions=True).attentions
    dense_layers, sparse_layers = attentions[:2], attentions[2:]  # first pruning layer is 1
    assert all(torch.all(weights > 0) for weights in dense_layers)
    for weights in sparse_layers:
        tokens = weights.shape[-1]
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
        nonzero = (weights > 0).sum(-1)
        assert torch.all(nonzero[:, :, 0] == tokens)  # class row whole
        assert torch.all(nonzero[:, :, 1:] == -(-tokens * 3 // 10))  # ceil(tokens * 0.3)


@pytest.mark.parametrize("token_fusion", [False, True])
def test_sdpa_and_eager_compute_the_same_sparse_model(token_fusion):
    pixel_values = images(3)
    outputs = []
    for implementation in ("eager", "sdpa"):
        model = tiny_model(
            token_keep_rate=0.6, attention_keep_rate=0.3, token_fusion=token_fusion, attn_implementation=implementation
        )
        with torch.no_grad():
            outputs.append(model(pixel_values).logits)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)


def test_attention_sparsity_changes_the_output_and_dense_rate_restores_it():
    model = tiny_model(token_keep_rate=0.6)
    with torch.no_grad():
        reference = model(images(2)).logits
        with model.keep_rates(attention_keep_rate=0.2):
            sparse = model(images(2)).logits
        restored = model(images(2)).logits
    assert not torch.allclose(sparse, reference)
    torch.testing.assert_close(restored, reference, rtol=0, atol=0)


@pytest.fixture
def attention_without_masks():
    def forward_without_mask(module, query, key, value, attention_mask, **kwargs):
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)

    AttentionInterface.register("test_no_mask", forward_without_mask)
    return "test_no_mask"


def test_attention_sparsity_on_a_backend_that_cannot_mask_is_rejected_early(attention_without_masks):
    with pytest.raises(ValueError, match=r"`attention_keep_rate` < 1 needs .*\['eager', 'sdpa'\].*test_no_mask"):
        tiny_model(attention_keep_rate=0.5, attn_implementation=attention_without_masks)
    model = tiny_model(token_keep_rate=0.5, attn_implementation=attention_without_masks)
    with torch.no_grad():
        assert model(images(1)).logits.shape == (1, 5)  # token dropping alone works on any backend
    with pytest.raises(ValueError, match="attention_keep_rate"):
        model.set_keep_rates(attention_keep_rate=0.5)
    assert model.config.attention_keep_rate == 1.0
