"""Attention level: top-k patch connections per query row, summary tokens kept whole, one mask per interval."""

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from hf_trilevel.modeling.modeling_trilevel_vit import TriLevelViTAttention
from hf_trilevel.modeling.sparse_attention import select_connections, sparse_attention_mask
from hf_trilevel.modeling.token_reduction import num_kept_tokens

from .helpers import images, tiny_model


def random_scores(batch: int, tokens: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, tokens, tokens, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("tokens", "rate", "patch_budget"), [(11, 0.3, 3), (33, 0.5, 16), (9, 0.1, 1)])
def test_every_row_keeps_its_patch_budget_plus_the_class_column(tokens, rate, patch_budget):
    mask = select_connections(random_scores(2, tokens), rate, has_trailing_summary_token=False)
    assert torch.all(mask[:, 0, :])  # class row whole
    assert torch.all(mask[:, :, 0])  # class column in every row
    assert torch.all(mask[:, 1:, 1:].sum(-1) == patch_budget)  # ceil(patches * rate) patch columns per row


def test_kept_connections_are_the_highest_scoring_patches():
    scores = random_scores(1, 9)
    mask = select_connections(scores, 0.5, has_trailing_summary_token=False)
    for row in range(1, 9):
        expected = set((scores[0, row, 1:].topk(4).indices + 1).tolist()) | {0}
        assert set(mask[0, row].nonzero().flatten().tolist()) == expected


def test_fused_summary_token_keeps_its_row_and_column():
    generator = torch.Generator().manual_seed(0)
    query, key = torch.randn(2, 2, 12, 4, generator=generator), torch.randn(2, 2, 12, 4, generator=generator)
    kept = torch.tensor([[0, 1, 3, 4, 6, 7, 8, 9, 11]] * 2)  # class + 8 patches survive
    mask = sparse_attention_mask(query, key, 0.5, 0.3, kept, None, has_trailing_summary_token=True, dtype=torch.float32)
    keep = mask[:, 0] == 0
    assert mask.shape == (2, 1, 10, 10) and mask.dtype == torch.float32
    assert torch.all(keep[:, -1, :]) and torch.all(keep[:, :, -1])
    assert torch.all(keep[:, 0, :]) and torch.all(keep[:, :, 0])
    assert torch.all(keep[:, 1:-1, 1:-1].sum(-1) == 3)  # ceil(8 * 0.3)


def test_mask_dtype_follows_the_attention_compute_dtype():
    query = key = torch.randn(1, 2, 5, 4, dtype=torch.bfloat16)
    mask = sparse_attention_mask(query, key, 0.5, 0.5, torch.arange(5)[None], None, False, dtype=torch.bfloat16)
    assert mask.dtype == torch.bfloat16 and mask.max() == 0 and mask.min() == torch.finfo(torch.bfloat16).min


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
    assert masks[2].data_ptr() == masks[3].data_ptr()  # built at layer 1, reused (not copied) by layers 2 and 3
    assert masks[4].data_ptr() == masks[5].data_ptr() and masks[4].data_ptr() != masks[3].data_ptr()  # rebuilt
    if token_keep_rate == 1.0:
        # Same tokens, same budget, and layer 3's attention gives masked pairs ~0: the same connections win again.
        assert torch.equal(masks[4], masks[3])
    tokens_after = [1 + n for n in ([64, 64] if token_keep_rate == 1.0 else [39, 24])]
    assert masks[2].shape == (2, 1, tokens_after[0], tokens_after[0])
    assert masks[4].shape == (2, 1, tokens_after[1], tokens_after[1])


def float64_model(**overrides):
    return tiny_model(attn_implementation="eager", **overrides).double()


def test_model_keeps_the_patches_the_class_token_attends_to_most():
    # Checked against the attention weights the eager kernel itself returns, not against our scoring code.
    model = float64_model(token_keep_rate=0.5, token_prune_layers=[1, 2])
    with torch.no_grad():
        outputs = model(images(3).double(), output_attentions=True, output_kept_token_indices=True)
    first = outputs.attentions[1][:, :, 0, 1:].mean(1).topk(32).indices.sort().values
    assert torch.equal(outputs.kept_token_indices[0], first)
    survivors = outputs.attentions[2][:, :, 0, 1:].mean(1).topk(16).indices
    second = torch.gather(outputs.kept_token_indices[0], 1, survivors).sort().values
    assert torch.equal(outputs.kept_token_indices[1], second)


def expected_keep_mask(attention: torch.Tensor, sequence_index: torch.Tensor, rate: float) -> torch.Tensor:
    """Top patch connections of the given layer's head-averaged attention among the kept tokens, class whole.

    Equal scores (masked pairs all score 0) go to the lowest key index: a stable sort, not top-k's unspecified choice.
    """
    averaged = attention.mean(1)
    rows = torch.stack([averaged[b][sequence_index[b]][:, sequence_index[b]] for b in range(len(averaged))])
    patches = rows.shape[-1] - 1
    ranked = rows[:, :, 1:].sort(dim=-1, descending=True, stable=True).indices
    top = ranked[..., : num_kept_tokens(patches, rate)] + 1
    keep = torch.zeros_like(rows, dtype=torch.bool).scatter_(-1, top, True)
    keep[:, :, 0] = True
    keep[:, 0, :] = True
    return keep


def test_model_masks_follow_the_pruning_layers_own_attention():
    model = float64_model(num_hidden_layers=5, token_keep_rate=0.5, attention_keep_rate=0.3, token_prune_layers=[1, 3])
    masks = record_attention_masks(model)
    with torch.no_grad():
        outputs = model(images(2).double(), output_attentions=True, output_kept_token_indices=True)
    class_token = torch.zeros(2, 1, dtype=torch.long)
    first_kept = torch.cat([class_token, outputs.kept_token_indices[0] + 1], 1)
    assert torch.equal(masks[2][:, 0] == 0, expected_keep_mask(outputs.attentions[1], first_kept, 0.3))
    # Second interval: scores come from layer 3's attention, which ran under the first mask, so masked pairs
    # (probability 0) can only come back if a row had too few unmasked candidates.
    survivors = torch.stack([torch.searchsorted(a, b) for a, b in zip(*outputs.kept_token_indices, strict=True)])
    second_kept = torch.cat([class_token, survivors + 1], 1)
    assert torch.equal(masks[4][:, 0] == 0, expected_keep_mask(outputs.attentions[3], second_kept, 0.3))


def test_masked_attention_weights_are_renormalised_over_kept_connections():
    model = tiny_model(token_keep_rate=0.5, attention_keep_rate=0.3, attn_implementation="eager")
    with torch.no_grad():
        attentions = model(images(2), output_attentions=True).attentions
    dense_layers, sparse_layers = attentions[:2], attentions[2:]  # first pruning layer is 1
    assert all(torch.all(weights > 0) for weights in dense_layers)
    for weights in sparse_layers:
        patches = weights.shape[-1] - 1
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
        nonzero = (weights > 0).sum(-1)
        assert torch.all(nonzero[:, :, 0] == patches + 1)  # class row whole
        assert torch.all(nonzero[:, :, 1:] == num_kept_tokens(patches, 0.3) + 1)  # patch budget + class column


@pytest.mark.parametrize("token_fusion", [False, True])
def test_sdpa_and_eager_compute_the_same_sparse_model(token_fusion):
    pixel_values = images(3).double()
    outputs = []
    for implementation in ("eager", "sdpa"):
        model = tiny_model(
            token_keep_rate=0.6, attention_keep_rate=0.3, token_fusion=token_fusion, attn_implementation=implementation
        ).double()
        with torch.no_grad():
            outputs.append(model(pixel_values).logits)
    # float64 keeps token and connection choices away from ties; eager still runs its softmax in float32.
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-6, atol=1e-7)


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
    yield "test_no_mask"
    AttentionInterface._global_mapping.pop("test_no_mask", None)


def test_attention_sparsity_on_a_backend_that_cannot_mask_is_rejected_early(attention_without_masks):
    with pytest.raises(ValueError, match=r"`attention_keep_rate` < 1 needs .*\['eager', 'sdpa'\].*test_no_mask"):
        tiny_model(attention_keep_rate=0.5, attn_implementation=attention_without_masks)
    model = tiny_model(token_keep_rate=0.5, attn_implementation=attention_without_masks)
    with torch.no_grad():
        assert model(images(1)).logits.shape == (1, 5)  # token dropping alone works on any backend
    with pytest.raises(ValueError, match="attention_keep_rate"):
        model.set_keep_rates(attention_keep_rate=0.5)
    assert model.config.attention_keep_rate == 1.0


def test_key_padding_masks_padded_columns_and_keeps_the_rest_of_the_mask():
    from hf_trilevel.modeling.sparse_attention import key_padding_mask

    positions = torch.tensor([[4, 9, -1], [2, 3, 7]])  # image 0 has one padded slot; a fused token follows
    alone = key_padding_mask(positions, 5, None, torch.float32)
    assert alone.shape == (2, 1, 1, 5)
    assert (alone[:, 0, 0] < 0).tolist() == [[False, False, False, True, False], [False] * 5]
    sparse = torch.zeros(2, 1, 5, 5).index_fill_(-1, torch.tensor([1]), torch.finfo(torch.float32).min)
    combined = key_padding_mask(positions, 5, sparse, torch.float32)
    assert torch.all(combined[0, 0, :, 3] < 0) and torch.all(combined[:, 0, :, 1] < 0)
    assert torch.all(combined[1, 0, :, [0, 2, 3, 4]] == 0)


def test_a_padding_selector_on_a_backend_that_cannot_mask_is_rejected_early(attention_without_masks):
    with pytest.raises(ValueError, match=r"`token_selector='adaptive'` .* needs .*\['eager', 'sdpa'\].*test_no_mask"):
        tiny_model(token_selector="adaptive", token_keep_mass=0.6, attn_implementation=attention_without_masks)
    for selector in ("class_attention", "learned"):  # fixed counts: no padding to mask
        model = tiny_model(token_keep_rate=0.5, token_selector=selector, attn_implementation=attention_without_masks)
        with torch.no_grad():
            assert model(images(1)).logits.shape == (1, 5)
