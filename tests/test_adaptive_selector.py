"""The adaptive selector (SaiT): per-image counts from `token_keep_mass`, bounded, padded, grouped by count."""

import pytest
import torch

from hf_trilevel import TriLevelViTConfig
from hf_trilevel.modeling.token_groups import count_groups
from hf_trilevel.modeling.token_reduction import (
    class_token_attention,
    kept_counts_for_rate,
    mass_kept_counts,
    num_kept_tokens,
)
from hf_trilevel.modeling.token_selectors import AdaptiveSelector, register_token_selector, unregister_token_selector

from .helpers import images, sharpen_attention, tiny_model

ADAPTIVE = {"token_selector": "adaptive", "token_keep_rate": 0.9, "token_keep_mass": 0.6, "token_min_keep_rate": 0.2}


def adaptive_model(**overrides):
    return sharpen_attention(tiny_model(**{**ADAPTIVE, "token_prune_layers": [1, 2, 3], **overrides}))


class ContrastAdaptive(AdaptiveSelector):
    """The adaptive selector with importance sharpened by each image's contrast, as a trained model's would differ.

    A random model attends about equally to every patch of every noise image, so all counts would agree. Sharpening
    by a per-image quantity (the mean magnitude of its patch tokens, which follows the image's contrast and does not
    depend on the other images of the batch) spreads the counts widely while every other step stays the real one.
    """

    def patch_log_scores(self, hidden_states, attention, patch_positions):
        valid = (patch_positions >= 0).float()
        magnitude = hidden_states[:, 1 : 1 + patch_positions.shape[1]].detach().float().abs().mean(dim=-1)
        sharpness = (magnitude * valid).sum(dim=1, keepdim=True) / valid.sum(dim=1, keepdim=True)
        return super().patch_log_scores(hidden_states, attention, patch_positions) * (sharpness * 150)


@pytest.fixture
def contrast_adaptive():
    register_token_selector("contrast_adaptive", ContrastAdaptive)
    yield
    unregister_token_selector("contrast_adaptive")


def spread_model(**overrides):
    return tiny_model(
        **{**ADAPTIVE, "token_selector": "contrast_adaptive", "token_prune_layers": [1, 2, 3], **overrides}
    )


def contrasting_images(batch_size: int = 8, seed: int = 1):
    return images(batch_size, seed) * torch.linspace(0.1, 3.0, batch_size)[:, None, None, None]


def test_rate_counts_per_image_equal_the_fixed_rate_count_for_every_size():
    sizes = torch.arange(1, 200)
    for rate in (0.1, 0.25, 0.3, 1 / 3, 0.5, 0.7, 0.9, 0.94, 1.0):
        expected = [num_kept_tokens(int(size), rate) for size in sizes]
        assert kept_counts_for_rate(sizes, rate).tolist() == expected, rate


def test_mass_counts_take_the_fewest_patches_that_reach_the_mass_within_the_bounds():
    importance = torch.tensor(
        [
            [0.5, 0.3, 0.1, 0.05, 0.05, 0.0, 0.0, 0.0, 0.0, 0.0],  # 2 patches reach 0.8
            [0.1] * 10,  # uniform: 8 reach 0.8
            [0.91, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01],  # 1 reaches, the floor says 3
        ]
    )
    num_valid = torch.tensor([10, 10, 10])
    counts = mass_kept_counts(importance, num_valid, keep_mass=0.8, keep_rate=0.7, min_keep_rate=0.3)
    assert counts.tolist() == [3, 7, 3]  # [2 -> floor 3, 8 -> cap 7, 1 -> floor 3]
    counts = mass_kept_counts(importance, num_valid, keep_mass=0.8, keep_rate=1.0, min_keep_rate=0.1)
    assert counts.tolist() == [2, 8, 1]
    # The floor never exceeds the cap, and mass 1.0 is the cap itself.
    assert mass_kept_counts(importance, num_valid, 0.5, keep_rate=0.2, min_keep_rate=0.5).tolist() == [2, 2, 2]
    assert mass_kept_counts(importance, num_valid, 1.0, keep_rate=0.7, min_keep_rate=0.1).tolist() == [7, 7, 7]


def test_counts_differ_across_a_batch_and_respect_the_mass_and_the_bounds():
    model = adaptive_model(token_count_buckets=1)
    pixel_values = images(8)
    with torch.no_grad():
        outputs = model(pixel_values, output_kept_token_indices=True)
        # Recompute layer 1's class-token attention to check the mass each image kept.
        hidden = model.vit.embeddings(pixel_values)
        layer0 = model.vit.layers[0]
        hidden = layer0(hidden, torch.arange(64).expand(8, -1), None, sparsity=settings(model))[0]
        layer1 = model.vit.layers[1]
        _, _, (query, key) = layer1.attention(layer1.layernorm_before(hidden))
        attention = class_token_attention(query, key, layer1.attention.scaling)[:, 1:]
    importance = attention / attention.sum(dim=1, keepdim=True)
    counts = outputs.kept_token_counts[0]
    assert len(set(counts.tolist())) > 1, counts
    upper, lower = num_kept_tokens(64, 0.9), num_kept_tokens(64, 0.2)
    for image, count in enumerate(counts.tolist()):
        assert lower <= count <= upper
        kept = outputs.kept_token_indices[0][image, :count]
        assert (outputs.kept_token_indices[0][image, count:] == -1).all()
        kept_mass = importance[image, kept].sum().item()
        top = importance[image].sort(descending=True).values
        assert torch.equal(kept.sort().values, importance[image].topk(count).indices.sort().values)
        assert kept_mass >= 0.6 - 1e-6 or count == upper
        assert top[: count - 1].sum().item() < 0.6 or count == lower  # one fewer would not reach the mass
    for layer_counts, kept in zip(outputs.kept_token_counts, outputs.kept_token_indices, strict=True):
        assert torch.equal(layer_counts, (kept >= 0).sum(dim=1))
        assert kept.shape[1] == int(layer_counts.max())


def settings(model):
    from hf_trilevel.modeling.configuration_trilevel_vit import SparsitySettings

    return SparsitySettings.from_config(model.config)


def test_mass_one_is_the_fixed_rate_bit_for_bit():
    fixed = tiny_model(token_keep_rate=0.6, token_fusion=True, attention_keep_rate=0.5)
    adaptive = tiny_model(token_keep_rate=0.6, token_fusion=True, attention_keep_rate=0.5, token_selector="adaptive")
    assert adaptive.config.token_keep_mass == 1.0
    with torch.no_grad():
        ours = adaptive(images(4), output_kept_token_indices=True)
        theirs = fixed(images(4), output_kept_token_indices=True)
    assert torch.equal(ours.logits, theirs.logits)
    assert all(torch.equal(a, b) for a, b in zip(ours.kept_token_indices, theirs.kept_token_indices, strict=True))


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("token_fusion", [False, True])
@pytest.mark.parametrize("attention_keep_rate", [1.0, 0.5])
@pytest.mark.parametrize("buckets", [1, 4])
def test_each_image_of_a_batch_gets_what_it_gets_alone(
    contrast_adaptive, attn_implementation, token_fusion, attention_keep_rate, buckets
):
    model = spread_model(
        attn_implementation=attn_implementation,
        token_fusion=token_fusion,
        attention_keep_rate=attention_keep_rate,
        token_count_buckets=buckets,
    )
    pixel_values = contrasting_images()
    with torch.no_grad():
        batch = model(pixel_values, output_kept_token_indices=True)
        assert len(set(batch.kept_token_counts[0].tolist())) > 4, batch.kept_token_counts[0]
        for image in range(8):
            alone = model(pixel_values[image : image + 1], output_kept_token_indices=True)
            for layer, kept in enumerate(alone.kept_token_indices):
                count = kept.shape[1]
                assert batch.kept_token_counts[layer][image].item() == count
                assert torch.equal(batch.kept_token_indices[layer][image, :count], kept[0])
                assert (batch.kept_token_indices[layer][image, count:] == -1).all()
            torch.testing.assert_close(batch.logits[image], alone.logits[0], rtol=1e-5, atol=1e-5)


def test_count_groups_split_sorted_counts_only_when_it_saves_padding():
    counts = torch.tensor([10, 40, 12, 38, 11, 39, 40, 9])
    groups = count_groups(counts, 4)
    assert sorted(torch.cat([rows for rows, _ in groups]).tolist()) == list(range(8))
    assert [width for _, width in groups] == [10, 12, 39, 40]
    for rows, width in groups:
        assert int(counts[rows].max()) == width
    assert len(count_groups(torch.tensor([20, 20, 20, 21]), 4)) == 1  # saves under 5%: one group
    assert len(count_groups(counts, 1)) == 1 and len(count_groups(counts[:1], 4)) == 1


def test_grouping_by_count_changes_no_output_and_reorders_nothing(contrast_adaptive):
    pixel_values = contrasting_images(16, seed=4)
    outputs = {}
    with torch.no_grad():
        for buckets in (1, 4):
            model = spread_model(token_fusion=True, attention_keep_rate=0.5, token_count_buckets=buckets)
            outputs[buckets] = model.vit(pixel_values, output_kept_token_indices=True)
    torch.testing.assert_close(outputs[4].pooler_output, outputs[1].pooler_output, rtol=1e-5, atol=1e-5)
    for a, b in zip(outputs[4].kept_token_counts, outputs[1].kept_token_counts, strict=True):
        assert torch.equal(a, b)
    for layer, (a, b) in enumerate(zip(outputs[4].kept_token_indices, outputs[1].kept_token_indices, strict=True)):
        width = int(outputs[1].kept_token_counts[layer].max())
        assert torch.equal(a[:, :width], b) and (a[:, width:] == -1).all()
    class_tokens = (outputs[4].last_hidden_state[:, 0], outputs[1].last_hidden_state[:, 0])
    torch.testing.assert_close(*class_tokens, rtol=1e-5, atol=1e-5)


def test_hidden_state_capture_keeps_the_batch_whole(contrast_adaptive):
    model = spread_model(token_count_buckets=4)
    with torch.no_grad():
        counts = model(contrasting_images(), output_kept_token_indices=True).kept_token_counts[0]
        assert len(count_groups(counts, 4)) > 1  # without hidden states the batch would be split
        outputs = model(contrasting_images(), output_hidden_states=True)
    assert len(outputs.hidden_states) == 1 + 4 and all(len(states) == 8 for states in outputs.hidden_states)


def test_learned_importance_trains_the_scorer_through_per_image_counts():
    model = adaptive_model(token_importance="learned", token_prune_layers=[0, 1, 2]).train()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".scorer.output." in name:
                parameter.normal_(std=0.5)
    torch.manual_seed(0)
    outputs = model(images(8), labels=torch.arange(8) % 5, output_kept_token_indices=True)
    assert len(set(outputs.kept_token_counts[0].tolist())) > 1
    outputs.loss.backward()
    scorers = [p.grad for name, p in model.named_parameters() if ".scorer." in name]
    assert scorers and all(grad is not None and grad.abs().sum() > 0 for grad in scorers)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("token_keep_mass", 0.0, r"`token_keep_mass` must be in \(0, 1\]"),
        ("token_keep_mass", 1.5, r"`token_keep_mass` must be in \(0, 1\]"),
        ("token_keep_mass", "0.5", r"`token_keep_mass` must be a number in \(0, 1\]"),
        ("token_min_keep_rate", 0, r"`token_min_keep_rate` must be in \(0, 1\]"),
        ("token_importance", "entropy", r"`token_importance` must be one of \['class_attention', 'learned'\]"),
        ("token_count_buckets", 0, r"`token_count_buckets` must be an integer >= 1"),
        ("token_selector", "dynamic", r"`token_selector` must be one of \['adaptive', 'class_attention', 'learned'\]"),
    ],
)
def test_bad_adaptive_settings_are_config_errors_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        TriLevelViTConfig(**{"token_selector": "adaptive", field: value})


def test_adaptive_works_with_attention_sparsity_and_a_mass_set_on_a_live_model():
    model = adaptive_model(attention_keep_rate=0.3)
    with torch.no_grad():
        wide = model(images(4), output_kept_token_indices=True).kept_token_counts[0]
        model.config.token_keep_mass = 0.3
        narrow = model(images(4), output_kept_token_indices=True).kept_token_counts[0]
        model.config.token_keep_mass = 0.0
        with pytest.raises(ValueError, match="`token_keep_mass`"):
            model(images(4))
    assert (narrow <= wide).all() and (narrow < wide).any()
