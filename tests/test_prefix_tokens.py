"""Prefix tokens other than one class token (`num_prefix_tokens`): DeiT's class and distillation tokens (2), or none
(SigLIP, 0). ViT's single class token is what every other test covers; here each shared step is checked for 0 and 2
against a reference written out in the test, and a layer with two prefix tokens against its own invariants."""

import pytest
import torch

from hf_trilevel import TriLevelViTConfig
from hf_trilevel.modeling.configuration_trilevel_vit import SparsitySettings
from hf_trilevel.modeling.sparse_attention import key_padding_mask, select_connections
from hf_trilevel.modeling.token_groups import EncodedTokens, merge_groups, trim_group
from hf_trilevel.modeling.token_merging import match_tokens
from hf_trilevel.modeling.token_reduction import (
    class_token_attention,
    dropped_token_weights,
    fuse_weighted_tokens,
    keep_tokens,
)
from hf_trilevel.modeling.vit_layer import TriLevelViTLayer, gate_kept_patches

from .helpers import TINY_SHAPE


def random(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def full_attention(query, key, scaling, mask=None):
    logits = query @ key.transpose(-1, -2) * scaling
    if mask is not None:
        logits = logits + mask
    return logits.softmax(dim=-1)  # [batch, heads, rows, keys]


@pytest.mark.parametrize("prefix", [1, 2, 3])
def test_prefix_attention_averages_every_prefix_row_and_head(prefix):
    query, key = random(2, 3, 9, 4, seed=1), random(2, 3, 9, 4, seed=2)
    expected = full_attention(query, key, 0.5)[:, :, :prefix].mean(dim=(1, 2))
    torch.testing.assert_close(class_token_attention(query, key, 0.5, num_prefix_tokens=prefix), expected)


def test_without_prefix_tokens_the_row_is_the_mean_query_over_real_tokens():
    query, key = random(2, 2, 6, 4, seed=3), random(2, 2, 6, 4, seed=4)
    mask = torch.zeros(2, 1, 1, 6)
    mask[1, ..., 4:] = torch.finfo(torch.float32).min  # image 1: its last two tokens are padding
    scores = class_token_attention(query, key, 0.5, mask, num_prefix_tokens=0)
    for image, real in ((0, 6), (1, 4)):
        mean_query = query[image, :, :real].mean(dim=1, keepdim=True)  # [heads, 1, head_dim]
        logits = (mean_query @ key[image, :, :real].transpose(-1, -2) * 0.5).softmax(dim=-1)
        torch.testing.assert_close(scores[image, :real], logits.mean(dim=(0, 1)))
        assert (scores[image, real:] == 0).all()


def test_keep_tokens_keeps_every_prefix_token_first():
    hidden = random(2, 2 + 5, 3)
    positions = torch.arange(5).expand(2, -1)
    patch_index = torch.tensor([[0, 3], [1, 4]])
    kept, kept_positions, sequence_index = keep_tokens(hidden, positions, patch_index, None, num_prefix_tokens=2)
    assert sequence_index.tolist() == [[0, 1, 2, 5], [0, 1, 3, 6]]
    torch.testing.assert_close(kept, torch.stack([hidden[0, [0, 1, 2, 5]], hidden[1, [0, 1, 3, 6]]]))
    assert kept_positions.tolist() == [[0, 3], [1, 4]]
    _, _, no_prefix = keep_tokens(hidden[:, 2:], positions, patch_index, None, num_prefix_tokens=0)
    assert no_prefix.tolist() == patch_index.tolist()


@pytest.mark.parametrize("prefix", [0, 2])
def test_fusion_weighs_only_the_dropped_patches(prefix):
    hidden, scores = random(1, prefix + 4, 3), random(1, prefix + 4).abs()
    weights = dropped_token_weights(scores, torch.tensor([[1, 2]]), num_prefix_tokens=prefix)
    assert weights.tolist() == [[scores[0, prefix].item(), 0.0, 0.0, scores[0, prefix + 3].item()]]
    fused = fuse_weighted_tokens(hidden, weights, num_prefix_tokens=prefix)
    patches = hidden[0, prefix:]
    expected = (weights[0, 0] * patches[0] + weights[0, 3] * patches[3]) / (weights[0, 0] + weights[0, 3])
    torch.testing.assert_close(fused[0, 0], expected)


@pytest.mark.parametrize("prefix", [0, 2])
def test_merging_matches_the_same_patches_after_any_prefix(prefix):
    patches = random(2, 8, 4, seed=5)
    reference_source, reference_destination = match_tokens(torch.cat([patches[:, :1], patches], 1), 3, 8)
    metric = torch.cat([random(2, prefix, 4, seed=6), patches], dim=1)
    source, destination = match_tokens(metric, 3, 8, num_prefix_tokens=prefix)
    assert (source - prefix).tolist() == (reference_source - 1).tolist()
    assert (destination - prefix).tolist() == (reference_destination - 1).tolist()
    assert (source >= prefix).all() and (destination >= prefix).all()


def test_connection_masks_keep_every_prefix_row_and_column_and_rank_patches_alike():
    scores = random(2, 7, 7, seed=7).softmax(dim=-1)
    two = select_connections(scores, 0.4, False, num_prefix_tokens=2)
    one = select_connections(scores[:, 1:, 1:], 0.4, False, num_prefix_tokens=1)
    assert two[:, :2].all() and two[:, :, :2].all()
    assert torch.equal(two[:, 1:, 1:], one)
    none = select_connections(scores[:, 2:, 2:], 0.4, False, num_prefix_tokens=0)
    assert torch.equal(none, one[:, 1:, 1:])  # a patch row ranks its patch columns the same way
    assert (none.sum(dim=-1) == 2).all()  # ceil(5 * 0.4) per row: no summary column


def test_padding_masks_never_cover_prefix_tokens():
    positions = torch.tensor([[0, 1, -1], [2, -1, -1]])
    mask = key_padding_mask(positions, 5, None, torch.float32, num_prefix_tokens=2)
    blocked = mask[:, 0, 0] < 0
    assert blocked.tolist() == [[False, False, False, False, True], [False, False, False, True, True]]


def test_gates_scale_only_patches_after_the_prefix():
    hidden = random(1, 2 + 3 + 1, 2)
    gated = gate_kept_patches(hidden, torch.tensor([[2.0, 3.0, 4.0]]), num_prefix_tokens=2)
    torch.testing.assert_close(gated[:, :2], hidden[:, :2])
    torch.testing.assert_close(gated[:, 2:5], hidden[:, 2:5] * torch.tensor([2.0, 3.0, 4.0])[:, None])
    torch.testing.assert_close(gated[:, 5:], hidden[:, 5:])


def test_count_groups_trim_and_restore_with_two_prefix_tokens():
    hidden = random(3, 2 + 4 + 1, 2)  # two prefix tokens, four patch slots, a fused token
    positions = torch.tensor([[0, 1, 2, 3], [4, 5, -1, -1], [6, -1, -1, -1]])
    mask = torch.zeros(3, 1, 1, 7)
    rows = torch.tensor([1, 2])
    states, kept_positions, kept_mask = trim_group(hidden, positions, mask, rows, 2, num_prefix_tokens=2)
    torch.testing.assert_close(states, hidden[1:][:, [0, 1, 2, 3, 6]])
    assert kept_positions.tolist() == [[4, 5], [6, -1]] and kept_mask.shape[-1] == 5
    groups = [
        EncodedTokens(hidden[:1], positions[:1], [positions[:1]], [torch.tensor([4])], None),
        EncodedTokens(states, kept_positions, [kept_positions], [torch.tensor([2, 1])], None),
    ]
    merged = merge_groups(groups, [torch.tensor([0]), rows], num_prefix_tokens=2)
    assert merged.hidden_states.shape == hidden.shape
    torch.testing.assert_close(merged.hidden_states[1:, :4], hidden[1:, :4])
    torch.testing.assert_close(merged.hidden_states[1:, -1], hidden[1:, -1])
    assert (merged.hidden_states[1:, 4:6] == 0).all()  # padding slots of the narrower group


class TwoPrefixConfig(TriLevelViTConfig):
    """A ViT config whose sequences lead with two prefix tokens, as DeiT's class and distillation tokens."""

    @property
    def num_prefix_tokens(self) -> int:
        return 2


def test_a_pruning_layer_keeps_both_prefix_tokens_and_ranks_by_their_attention():
    config = TwoPrefixConfig(**TINY_SHAPE, token_keep_rate=0.5, token_prune_layers=[0], token_fusion=True)
    torch.manual_seed(0)
    layer = TriLevelViTLayer(config, 0).eval()
    hidden = random(2, 2 + 8, config.hidden_size, seed=8)
    positions = torch.arange(8).expand(2, -1)
    with torch.no_grad():
        output = layer(hidden, positions, sparsity=SparsitySettings.from_config(config))
        normed = layer.layernorm_before(hidden)
        _, _, (query, key) = layer.attention(normed)
    new_hidden, new_positions = output[0], output[1]
    assert new_hidden.shape[1] == 2 + 4 + 1  # both prefix tokens, ceil(8 * 0.5) patches, the fused token
    attention = full_attention(query, key, layer.attention.scaling)[:, :, :2].mean(dim=(1, 2))
    expected = attention[:, 2:].topk(4, dim=-1).indices.sort(dim=-1).values
    assert new_positions.tolist() == expected.tolist()
