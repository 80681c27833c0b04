"""Token level: which tokens survive, how many, and that each image's choice depends only on that image."""

import math

import pytest
import torch

from hf_trilevel.modeling.token_reduction import (
    class_token_attention,
    fuse_dropped_tokens,
    keep_tokens,
    num_kept_tokens,
    select_top_tokens,
    token_schedule,
)

from .helpers import images, tiny_model


@pytest.mark.parametrize(("tokens", "rate", "expected"), [(196, 0.7, 138), (100, 0.7, 70), (64, 0.5, 32), (3, 0.1, 1)])
def test_kept_count_is_ceil_of_rate_times_tokens(tokens, rate, expected):
    assert num_kept_tokens(tokens, rate) == expected


def test_schedule_compounds_like_the_paper():
    # DeiT at 224 px: 196 patches, keep 0.7 at three layers -> 138, 97, 68 (about 0.7, 0.49, 0.343 of the patches).
    assert token_schedule(196, 0.7, 3) == [138, 97, 68]


@pytest.mark.parametrize("rate", [0.25, 0.5, 0.7, 0.9])
@pytest.mark.parametrize(("depth", "prune_layers"), [(4, [1, 2, 3]), (6, [1, 3, 4]), (6, [0, 5]), (2, [1])])
def test_model_keeps_the_scheduled_number_of_tokens_per_layer(rate, depth, prune_layers):
    model = tiny_model(num_hidden_layers=depth, token_prune_layers=prune_layers, token_keep_rate=rate)
    with torch.no_grad():
        outputs = model(images(2), output_hidden_states=True, output_kept_token_indices=True)
    expected_counts = token_schedule(64, rate, len(prune_layers))
    assert [kept.shape for kept in outputs.kept_token_indices] == [(2, count) for count in expected_counts]
    # hidden_states[0] is the embedding output; hidden_states[i + 1] is the output of layer i.
    patches = 64
    for layer, state in enumerate(outputs.hidden_states[1:]):
        if layer in prune_layers:
            patches = num_kept_tokens(patches, rate)
        assert state.shape[1] == 1 + patches


def test_kept_positions_are_nested_ascending_and_valid():
    model = tiny_model(token_keep_rate=0.6)
    with torch.no_grad():
        kept = model(images(3), output_kept_token_indices=True).kept_token_indices
    previous = torch.arange(64).expand(3, -1)
    for positions in kept:
        assert torch.all(positions[:, 1:] > positions[:, :-1])
        for row, earlier in zip(positions, previous, strict=True):
            assert set(row.tolist()) <= set(earlier.tolist())
        previous = positions


def test_selection_takes_the_highest_scores_in_position_order():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.2], [0.5, 0.1, 0.7, 0.0, 0.6]])
    assert select_top_tokens(scores, 2).tolist() == [[1, 3], [2, 4]]


def test_class_token_attention_is_the_class_row_of_the_full_attention():
    generator = torch.Generator().manual_seed(0)
    query, key = torch.randn(2, 3, 7, 8, generator=generator), torch.randn(2, 3, 7, 8, generator=generator)
    full = (query @ key.transpose(-1, -2) * 8**-0.5).softmax(-1)
    torch.testing.assert_close(class_token_attention(query, key, 8**-0.5), full[:, :, 0].mean(1))


def test_class_token_is_always_kept_first():
    hidden_states = torch.randn(2, 6, 4)
    kept, positions, sequence_index = keep_tokens(
        hidden_states, torch.arange(5).expand(2, -1), torch.tensor([[0, 3], [2, 4]]), None
    )
    torch.testing.assert_close(kept[:, 0], hidden_states[:, 0])
    torch.testing.assert_close(kept[:, 1:], torch.stack([hidden_states[0, [1, 4]], hidden_states[1, [3, 5]]]))
    assert positions.tolist() == [[0, 3], [2, 4]]
    assert sequence_index.tolist() == [[0, 1, 4], [0, 3, 5]]


def test_model_keeps_the_class_token_at_index_zero_through_pruning():
    # Pruning happens after attention and the MLP is per token, so at the first pruning layer the class token's
    # output must equal the dense model's exactly; it could not if the class token had been dropped or moved.
    model = tiny_model(token_prune_layers=[1, 2])
    pixel_values = images(2)
    with torch.no_grad():
        dense = model(pixel_values, output_hidden_states=True).hidden_states
        model.set_keep_rates(token_keep_rate=0.3)
        pruned = model(pixel_values, output_hidden_states=True).hidden_states
    assert pruned[2].shape[1] < dense[2].shape[1]
    torch.testing.assert_close(pruned[2][:, 0], dense[2][:, 0])


def test_fused_token_is_the_attention_weighted_mean_of_dropped_tokens():
    hidden_states = torch.randn(1, 5, 3)
    class_attention = torch.tensor([[0.2, 0.1, 0.4, 0.2, 0.1]])
    fused = fuse_dropped_tokens(hidden_states, class_attention, torch.tensor([[1]]))  # keeps patch 1 (token 2)
    weights = torch.tensor([0.1, 0.0, 0.2, 0.1]) / 0.4
    torch.testing.assert_close(fused[0, 0], (weights[:, None] * hidden_states[0, 1:]).sum(0))


def test_fusion_adds_exactly_one_token_and_changes_the_output():
    pixel_values = images(2)
    plain, fused = tiny_model(token_keep_rate=0.5), tiny_model(token_keep_rate=0.5, token_fusion=True)
    with torch.no_grad():
        plain_out = plain(pixel_values, output_hidden_states=True, output_kept_token_indices=True)
        fused_out = fused(pixel_values, output_hidden_states=True, output_kept_token_indices=True)
    assert [s.shape[1] for s in fused_out.hidden_states] == [
        s.shape[1] + (1 if i > 1 else 0) for i, s in enumerate(plain_out.hidden_states)
    ]
    # Same weights, same first selection; the summary token then changes what the class token sees.
    assert torch.equal(plain_out.kept_token_indices[0], fused_out.kept_token_indices[0])
    assert not torch.allclose(plain_out.logits, fused_out.logits)


@pytest.mark.parametrize("fusion", [False, True])
@pytest.mark.parametrize("attention_keep_rate", [1.0, 0.4])
def test_each_images_result_does_not_depend_on_its_batch(fusion, attention_keep_rate):
    model = tiny_model(token_keep_rate=0.5, token_fusion=fusion, attention_keep_rate=attention_keep_rate)
    batch = images(6)
    with torch.no_grad():
        together = model(batch, output_kept_token_indices=True)
        for index in range(6):
            alone = model(batch[index : index + 1], output_kept_token_indices=True)
            for kept_together, kept_alone in zip(together.kept_token_indices, alone.kept_token_indices, strict=True):
                assert torch.equal(kept_together[index], kept_alone[0])
            torch.testing.assert_close(alone.logits[0], together.logits[index], rtol=1e-4, atol=1e-5)


def test_tokens_are_dropped_in_training_mode_too():
    model = tiny_model(token_keep_rate=0.5).train()
    outputs = model(images(2), labels=torch.tensor([0, 1]), output_hidden_states=True)
    assert outputs.hidden_states[-1].shape[1] == 1 + token_schedule(64, 0.5, 3)[-1]
    outputs.loss.backward()


def test_keep_rate_change_takes_effect_on_the_next_forward():
    model = tiny_model()
    with torch.no_grad():
        dense = model(images(2), output_hidden_states=True)
        model.set_keep_rates(token_keep_rate=0.5)
        sparse = model(images(2), output_hidden_states=True)
    assert dense.hidden_states[-1].shape[1] == 65
    assert sparse.hidden_states[-1].shape[1] == 1 + 8
    assert model.config.token_keep_rate == 0.5


def test_keep_rates_context_restores_the_previous_rates():
    model = tiny_model(token_keep_rate=0.7)
    with model.keep_rates(token_keep_rate=0.5, attention_keep_rate=0.3):
        assert (model.config.token_keep_rate, model.config.attention_keep_rate) == (0.5, 0.3)
    assert (model.config.token_keep_rate, model.config.attention_keep_rate) == (0.7, 1.0)


@pytest.mark.parametrize("rate", [0.0, 1.01, "0.5"])
def test_invalid_keep_rate_change_is_rejected_and_changes_nothing(rate):
    model = tiny_model(token_keep_rate=0.7)
    with pytest.raises(ValueError, match="token_keep_rate"):
        model.set_keep_rates(token_keep_rate=rate, attention_keep_rate=0.5)
    assert (model.config.token_keep_rate, model.config.attention_keep_rate) == (0.7, 1.0)


def test_tiny_rates_still_keep_one_patch_per_layer():
    model = tiny_model(token_keep_rate=1e-6)
    with torch.no_grad():
        kept = model(images(1), output_kept_token_indices=True).kept_token_indices
    assert [k.shape[1] for k in kept] == [1, 1, 1]
    assert math.isfinite(model(images(1)).logits.sum().item())
