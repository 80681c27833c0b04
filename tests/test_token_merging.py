"""Token merging (ToMe): bipartite matching of patch tokens, size-weighted merges, proportional attention.

The reference below is written with plain loops, independently of `token_merging.py`: set A is every other patch
token starting with the first (sequence indices 1, 3, ...), set B the rest (2, 4, ...); each A token picks its most
cosine-similar B token by the head-averaged keys, the `r` best-matched A tokens merge into their partners as
size-weighted means, and survivors keep their order.
"""

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_trilevel import TriLevelViTConfig, TriLevelViTForImageClassification
from hf_trilevel.modeling import REMOTE_CODE_FILES
from hf_trilevel.modeling.configuration_trilevel_vit import SparsitySettings
from hf_trilevel.modeling.token_merging import layer_token_counts, match_tokens, merge_tokens
from hf_trilevel.modeling.vit_layer import TriLevelViTLayer

from .helpers import TINY_SHAPE, images, run_without_hf_trilevel, tiny_config, tiny_model, tiny_vit

NUM_PATCHES = 64  # TINY_SHAPE: 32x32 images in 4x4 patches


# ---------------------------------------------------------------------------------------------------------------
# The reference


def reference_matches(keys: torch.Tensor, r: int, num_patches: int) -> list[tuple[int, int]]:
    """One image's `(source, destination)` sequence indices, best match first; `keys` is `[tokens, channels]`."""
    set_a = list(range(1, 1 + num_patches, 2))
    set_b = list(range(2, 1 + num_patches, 2))
    keys = keys.double()
    unit = [keys[token] / keys[token].norm() for token in range(len(keys))]
    matches = []
    for a_token in set_a:
        similarities = [float(unit[a_token] @ unit[b_token]) for b_token in set_b]
        best = max(range(len(set_b)), key=lambda index: similarities[index])  # the first of equal maxima
        matches.append((similarities[best], a_token, set_b[best]))
    matches.sort(key=lambda match: (-match[0], match[1]))
    return [(a_token, b_token) for _, a_token, b_token in matches[:r]]


def reference_merge(
    hidden_states: torch.Tensor, sizes: list[float], matches: list[tuple[int, int]]
) -> tuple[torch.Tensor, list[float], list[int]]:
    """One image merged: `(hidden_states [survivors, width], sizes, survivors' old indices)`."""
    into = dict(matches)
    totals = [hidden_states[token].double() * sizes[token] for token in range(len(hidden_states))]
    new_sizes = list(sizes)
    for source, destination in into.items():
        totals[destination] = totals[destination] + hidden_states[source].double() * sizes[source]
        new_sizes[destination] += sizes[source]
    survivors = [token for token in range(len(hidden_states)) if token not in into]
    merged = torch.stack([totals[token] / new_sizes[token] for token in survivors])
    return merged.to(hidden_states.dtype), [new_sizes[token] for token in survivors], survivors


def reference_layer(layer: TriLevelViTLayer, hidden_states: torch.Tensor, r: int, log_sizes=None):
    """A non-pruning layer written out: eager attention (plus `log_sizes` on the logits), residual, merge, MLP."""
    attention = layer.attention
    heads, head_dim = attention.num_attention_heads, attention.head_dim
    batch, tokens, _ = hidden_states.shape
    normed = layer.layernorm_before(hidden_states)

    def split(projection):
        return projection(normed).view(batch, tokens, heads, head_dim).transpose(1, 2)

    query, key, value = split(attention.q_proj), split(attention.k_proj), split(attention.v_proj)
    logits = query @ key.transpose(-1, -2) * head_dim**-0.5
    if log_sizes is not None:
        logits = logits + log_sizes[:, None, None, :]
    mixed = (logits.softmax(dim=-1) @ value).transpose(1, 2).reshape(batch, tokens, -1)
    hidden_states = hidden_states + attention.o_proj(mixed)
    keys = key.mean(dim=1)
    merged = []
    for image in range(batch):
        matches = reference_matches(keys[image], r, tokens - 1)
        merged.append(reference_merge(hidden_states[image], [1.0] * tokens, matches)[0])
    hidden_states = torch.stack(merged)
    return hidden_states + layer.mlp(layer.layernorm_after(hidden_states))


def crafted_keys(channels: int = 16) -> torch.Tensor:
    """`[1, 10, channels]` keys: class token, patches at 1..8, a fused token at 9. Distinct patches are orthogonal
    except A 3 = B 6 (similarity 1) and A 7 close to B 2; the class token equals A 1 and the fused token equals A 5,
    so if either were a candidate it would take one of the two best matches."""
    keys = torch.zeros(10, channels)
    for token in range(1, 9):
        keys[token, token] = 1.0
    keys[6] = keys[3]
    keys[7] = keys[2] + 0.1 * keys[7]
    keys[0] = keys[1]
    keys[9] = keys[5]
    return keys.unsqueeze(0)


def run_layers(model, pixel_values, **kwargs):
    """The model's output and every layer's output tuple
    `(hidden_states, patch_positions, attention_mask, token_sizes, token_sources, auxiliary_loss, ...)`."""
    captured = {}
    hooks = [
        layer.register_forward_hook(lambda module, args, output, index=index: captured.__setitem__(index, output))
        for index, layer in enumerate(model.vit.layers)
    ]
    try:
        output = model(pixel_values, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return output, [captured[index] for index in range(len(model.vit.layers))]


def token_sizes_of(layer_output) -> torch.Tensor:
    return layer_output[3]


# ---------------------------------------------------------------------------------------------------------------
# 1. r = 0 is transformers' ViT, bit for bit


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("merge_r", [0, [0, 0, 0, 0]])
def test_no_merging_gives_exactly_the_logits_of_transformers_vit(tmp_path, attn_implementation, merge_r):
    reference = tiny_vit(attn_implementation=attn_implementation)
    reference.save_pretrained(tmp_path)
    ours = TriLevelViTForImageClassification.from_pretrained(
        tmp_path, attn_implementation=attn_implementation, token_merge_r=merge_r
    ).eval()
    pixel_values = images(4)
    with torch.no_grad():
        assert torch.equal(ours(pixel_values).logits, reference(pixel_values).logits)


def test_a_merging_model_set_to_r_0_is_transformers_vit_again(tmp_path):
    reference = tiny_vit()
    reference.save_pretrained(tmp_path)
    ours = TriLevelViTForImageClassification.from_pretrained(tmp_path, token_merge_r=8).eval()
    pixel_values = images(3)
    with torch.no_grad():
        expected = reference(pixel_values).logits
        assert not torch.allclose(ours(pixel_values).logits, expected, atol=1e-4)
        with ours.keep_rates(token_merge_r=0):
            assert torch.equal(ours(pixel_values).logits, expected)


# ---------------------------------------------------------------------------------------------------------------
# 2. Matching and merging against the reference


def test_crafted_keys_merge_the_known_pairs_and_never_the_class_or_fused_token():
    source, destination = match_tokens(crafted_keys(), r=2, num_patches=8)
    assert source.tolist() == [[3, 7]]
    assert destination.tolist() == [[6, 2]]
    assert reference_matches(crafted_keys()[0], 2, 8) == [(3, 6), (7, 2)]


def test_crafted_keys_at_the_most_r_never_touch_the_class_or_fused_token():
    source, destination = match_tokens(crafted_keys(), r=4, num_patches=8)
    touched = set(source.flatten().tolist()) | set(destination.flatten().tolist())
    assert touched <= set(range(1, 9))
    assert set(source.flatten().tolist()) == {1, 3, 5, 7}  # every A token, and only A tokens


def test_merging_crafted_tokens_averages_the_pairs_by_size_and_leaves_class_and_fused_tokens_alone():
    hidden_states = torch.randn(1, 10, 4, generator=torch.Generator().manual_seed(0))
    sizes = torch.tensor([[1.0, 2.0, 1.0, 3.0, 1.0, 1.0, 1.0, 1.0, 4.0, 1.0]])
    source, destination = torch.tensor([[3, 7]]), torch.tensor([[6, 2]])
    merged, new_sizes, sequence_index, slot_of = merge_tokens(hidden_states, sizes, source, destination)

    survivors = [0, 1, 2, 4, 5, 6, 8, 9]
    assert sequence_index.tolist() == [survivors]
    assert new_sizes.tolist() == [[1.0, 2.0, 2.0, 1.0, 1.0, 4.0, 4.0, 1.0]]
    state = hidden_states[0]
    torch.testing.assert_close(merged[0, 5], (state[6] * 1 + state[3] * 3) / 4)  # B 6 now holds A 3
    torch.testing.assert_close(merged[0, 2], (state[2] + state[7]) / 2)
    torch.testing.assert_close(merged[0, 0], state[0], rtol=0, atol=0)  # class token
    torch.testing.assert_close(merged[0, -1], state[9], rtol=0, atol=0)  # fused token, still last
    assert slot_of.tolist() == [[0, 1, 2, 5, 3, 4, 5, 2, 6, 7]]  # merged sources point at their destinations


def test_match_and_merge_equal_the_reference_on_random_tokens_with_uneven_sizes():
    generator = torch.Generator().manual_seed(3)
    batch, num_patches, r = 3, 13, 5  # odd: A has one more token than B
    keys = torch.randn(batch, 1 + num_patches + 1, 8, generator=generator)  # a trailing fused token too
    hidden_states = torch.randn(batch, 1 + num_patches + 1, 6, generator=generator)
    sizes = torch.randint(1, 5, (batch, 1 + num_patches + 1), generator=generator).float()
    sizes[:, 0] = sizes[:, -1] = 1.0

    source, destination = match_tokens(keys, r, num_patches)
    merged, new_sizes, sequence_index, _ = merge_tokens(hidden_states, sizes, source, destination)
    for image in range(batch):
        matches = reference_matches(keys[image], r, num_patches)
        assert list(zip(source[image].tolist(), destination[image].tolist(), strict=True)) == matches
        expected, expected_sizes, survivors = reference_merge(hidden_states[image], sizes[image].tolist(), matches)
        torch.testing.assert_close(merged[image], expected, rtol=1e-6, atol=1e-6)
        assert new_sizes[image].tolist() == expected_sizes
        assert sequence_index[image].tolist() == survivors


@pytest.mark.parametrize("proportional", [True, False])
def test_a_merging_layer_equals_the_reference_layer(proportional):
    config = tiny_config(token_prune_layers=[], token_merge_r=3, token_merge_proportional_attention=proportional)
    model = tiny_model(token_prune_layers=[], token_merge_r=3, token_merge_proportional_attention=proportional)
    layer = model.vit.layers[0]
    hidden_states = torch.randn(2, 1 + NUM_PATCHES, 32, generator=torch.Generator().manual_seed(4))
    positions = torch.arange(NUM_PATCHES).expand(2, -1)
    with torch.no_grad():
        output = layer(hidden_states, positions, sparsity=SparsitySettings.from_config(config))
        expected = reference_layer(layer, hidden_states, 3)
    torch.testing.assert_close(output[0], expected, rtol=1e-5, atol=1e-5)
    assert output[3].shape == (2, 1 + NUM_PATCHES - 3) and output[3].sum(dim=1).tolist() == [65.0, 65.0]
    assert (output[2] is not None) == proportional  # the log-size mask, for the next layer


# ---------------------------------------------------------------------------------------------------------------
# 3. Sizes and proportional attention


def attention_inputs_and_outputs(model, pixel_values, layer_index):
    """`(normed hidden states, attention mask, attention output)` of one layer's attention block."""
    seen = {}
    attention = model.vit.layers[layer_index].attention
    before = attention.register_forward_pre_hook(lambda module, args: seen.update(inputs=args))
    after = attention.register_forward_hook(lambda module, args, output: seen.update(output=output[0]))
    try:
        _, layers = run_layers(model, pixel_values)
    finally:
        before.remove()
        after.remove()
    normed, mask = seen["inputs"][:2]
    return normed, mask, seen["output"], layers


def explicit_attention(attention, normed, bias):
    batch, tokens, _ = normed.shape
    heads, head_dim = attention.num_attention_heads, attention.head_dim

    def split(projection):
        return projection(normed).view(batch, tokens, heads, head_dim).transpose(1, 2)

    logits = split(attention.q_proj) @ split(attention.k_proj).transpose(-1, -2) * attention.scaling
    if bias is not None:
        logits = logits + bias[:, None, None, :]
    mixed = logits.softmax(dim=-1) @ split(attention.v_proj)
    return attention.o_proj(mixed.transpose(1, 2).reshape(batch, tokens, -1))


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_the_layer_after_a_merge_attends_proportionally_to_token_sizes(attn_implementation):
    model = tiny_model(
        num_hidden_layers=2,
        token_prune_layers=[],
        token_merge_r=[12, 0],
        attn_implementation=attn_implementation,
    )
    with torch.no_grad():
        normed, mask, output, layers = attention_inputs_and_outputs(model, images(2), layer_index=1)
        sizes = token_sizes_of(layers[0])
        expected = explicit_attention(model.vit.layers[1].attention, normed, sizes.log())
        unbiased = explicit_attention(model.vit.layers[1].attention, normed, None)
    assert sizes.shape == (2, 1 + NUM_PATCHES - 12)
    assert sizes.sum(dim=1).tolist() == [1.0 + NUM_PATCHES] * 2
    assert ((sizes - 1).sum(dim=1) == 12).all() and sizes[:, 0].tolist() == [1.0, 1.0]
    assert torch.equal(mask, sizes.log()[:, None, None, :])
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(output, unbiased, atol=1e-4)  # the bias mattered


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_without_proportional_attention_no_bias_reaches_the_next_layer(attn_implementation):
    model = tiny_model(
        num_hidden_layers=2,
        token_prune_layers=[],
        token_merge_r=[12, 0],
        token_merge_proportional_attention=False,
        attn_implementation=attn_implementation,
    )
    with torch.no_grad():
        normed, mask, output, layers = attention_inputs_and_outputs(model, images(2), layer_index=1)
        expected = explicit_attention(model.vit.layers[1].attention, normed, None)
    assert mask is None
    assert ((token_sizes_of(layers[0]) - 1).sum(dim=1) == 12).all()  # sizes are still carried
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fusion", [False, True])
def test_eager_and_sdpa_agree_when_merging(fusion):
    settings = {"token_merge_r": [6, 4, 4, 2], "token_keep_rate": 0.8, "token_fusion": fusion}
    eager = tiny_model(attn_implementation="eager", **settings)
    sdpa = tiny_model(attn_implementation="sdpa", **settings)
    pixel_values = images(3)
    with torch.no_grad():
        expected = eager(pixel_values, output_token_sources=True)
        actual = sdpa(pixel_values, output_token_sources=True)
    assert torch.equal(actual.token_sources, expected.token_sources)
    torch.testing.assert_close(actual.logits, expected.logits, rtol=1e-5, atol=1e-5)


def test_bfloat16_merging_runs_with_a_bfloat16_mask_and_float32_sizes():
    settings = {"token_merge_r": 6, "token_keep_rate": 0.7, "token_fusion": True}
    pixel_values = images(2)
    with torch.no_grad():
        expected = tiny_model(**settings)(pixel_values).logits
        model = tiny_model(**settings).to(torch.bfloat16)
        output, layers = run_layers(model, pixel_values)
    assert output.logits.dtype == torch.bfloat16
    assert all(layer[2].dtype == torch.bfloat16 and layer[3].dtype == torch.float32 for layer in layers)
    assert all((token_sizes_of(layer) == token_sizes_of(layer).round()).all() for layer in layers)
    torch.testing.assert_close(output.logits.float(), expected, rtol=0, atol=0.05)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = tiny_model(**settings)(pixel_values).logits
    torch.testing.assert_close(autocast.float(), expected, rtol=0, atol=0.05)


# ---------------------------------------------------------------------------------------------------------------
# 4. Images are independent of their batch


@pytest.mark.parametrize(
    "settings",
    [
        {"token_merge_r": 8},
        {"token_merge_r": [6, 4, 4, 2], "token_keep_rate": 0.7, "token_fusion": True},
    ],
)
def test_each_image_of_a_batch_gives_what_it_gives_alone(settings):
    model = tiny_model(**settings)
    pixel_values = images(4)
    with torch.no_grad():
        batch = model(pixel_values, output_token_sources=True, output_kept_token_indices=True)
        for image in range(len(pixel_values)):
            alone = model(pixel_values[image : image + 1], output_token_sources=True, output_kept_token_indices=True)
            torch.testing.assert_close(alone.logits[0], batch.logits[image], rtol=1e-5, atol=1e-6)
            assert torch.equal(alone.token_sources[0], batch.token_sources[image])
            for alone_kept, batch_kept in zip(alone.kept_token_indices, batch.kept_token_indices, strict=True):
                assert torch.equal(alone_kept[0], batch_kept[image])


# ---------------------------------------------------------------------------------------------------------------
# 5. token_sources and kept_token_indices


@pytest.mark.parametrize(
    "settings",
    [
        {"token_merge_r": 8},
        {"token_merge_r": [6, 4, 4, 2], "token_keep_rate": 0.7},
        {"token_merge_r": [6, 4, 4, 2], "token_keep_rate": 0.7, "token_fusion": True},
    ],
)
def test_token_sources_account_for_every_patch_and_agree_with_sizes_and_kept_positions(settings):
    model = tiny_model(**settings)
    with torch.no_grad():
        output, layers = run_layers(model, images(3), output_token_sources=True, output_kept_token_indices=True)
    sources = output.token_sources
    num_final = output.kept_token_indices[-1].shape[1]  # layer 3 is the last pruning layer and the last layer
    sizes = token_sizes_of(layers[-1])[:, 1 : 1 + num_final]  # patch tokens only (no class, no fused token)
    assert sources.shape == (3, NUM_PATCHES)
    assert ((sources >= -1) & (sources < num_final)).all()
    dropped = settings.get("token_keep_rate", 1.0) < 1.0
    assert (sources >= 0).all() or dropped
    for image in range(3):
        kept = sources[image][sources[image] >= 0]
        counts = torch.bincount(kept, minlength=num_final)
        assert counts.tolist() == sizes[image].long().tolist()
    for positions in output.kept_token_indices:
        assert (positions[:, 1:] > positions[:, :-1]).all()
    final_positions = output.kept_token_indices[-1]
    for image in range(3):
        for token, position in enumerate(final_positions[image].tolist()):
            assert sources[image, position] == token  # each reported position is one of its token's patches


def test_without_merging_token_sources_are_the_kept_positions_inverted():
    model = tiny_model(token_keep_rate=0.6)
    with torch.no_grad():
        output = model(images(2), output_token_sources=True, output_kept_token_indices=True)
    final = output.kept_token_indices[-1]
    expected = torch.full((2, NUM_PATCHES), -1).scatter(1, final, torch.arange(final.shape[1]).expand(2, -1))
    assert torch.equal(output.token_sources, expected)


# ---------------------------------------------------------------------------------------------------------------
# 6. Composition and refusals


def test_dropping_then_merging_leaves_the_counts_layer_token_counts_predicts():
    config = tiny_config(token_keep_rate=0.7, token_merge_r=[5, 3, 4, 2])
    model = tiny_model(token_keep_rate=0.7, token_merge_r=[5, 3, 4, 2])
    expected = layer_token_counts(NUM_PATCHES, 4, config.token_prune_layers, 0.7, [5, 3, 4, 2])
    attended = []
    hooks = [
        layer.attention.register_forward_pre_hook(lambda m, args: attended.append(args[0].shape[1]))
        for layer in model.vit.layers
    ]
    try:
        with torch.no_grad():
            output, layers = run_layers(model, images(2), output_kept_token_indices=True)
    finally:
        for hook in hooks:
            hook.remove()
    assert attended == [1 + counts.attention for counts in expected]
    assert [layer[0].shape[1] for layer in layers] == [1 + counts.after_merge for counts in expected]
    for index, prune_layer in enumerate(config.token_prune_layers):
        assert output.kept_token_counts[index].tolist() == [expected[prune_layer].after_merge] * 2
    # layer 1 drops 59 -> ceil(59 * 0.7) = 42, then merges 3: the drop came first
    assert (expected[1].attention, expected[1].after_drop, expected[1].after_merge) == (59, 42, 39)


def test_with_fusion_the_fused_token_is_never_merged_stays_last_and_has_size_1(monkeypatch):
    model = tiny_model(token_keep_rate=0.7, token_fusion=True, token_merge_r=[5, 3, 4, 2])
    fused_before_and_after = []
    original_merge = TriLevelViTLayer.merge

    def spying_merge(self, hidden_states, *args):
        merged = original_merge(self, hidden_states, *args)
        fused_before_and_after.append((hidden_states[:, -1], merged[0][:, -1]))
        return merged

    monkeypatch.setattr(TriLevelViTLayer, "merge", spying_merge)
    with torch.no_grad():
        _, layers = run_layers(model, images(2), output_kept_token_indices=True)
    assert len(fused_before_and_after) == 4
    for layer_index, (before, after) in enumerate(fused_before_and_after):
        if layer_index >= 1:  # layers 1..3 prune with fusion: a fused token is last when they merge
            assert torch.equal(before, after)
    for layer in layers[1:]:
        hidden_states, positions = layer[0], layer[1]
        assert hidden_states.shape[1] == 1 + positions.shape[1] + 1
        assert token_sizes_of(layer)[:, -1].tolist() == [1.0, 1.0]


def test_the_learned_selector_composes_with_merging_and_trains():
    model = tiny_model(token_selector="learned", token_keep_rate=0.7, token_merge_r=2).train()
    output = model(images(2), labels=torch.tensor([0, 1]), output_kept_token_indices=True)
    expected = layer_token_counts(NUM_PATCHES, 4, model.config.token_prune_layers, 0.7, [2] * 4)
    assert [counts.tolist() for counts in output.kept_token_counts] == [
        [expected[layer].after_merge] * 2 for layer in model.config.token_prune_layers
    ]
    output.loss.backward()
    for layer_index in model.config.token_prune_layers[:-1]:  # the last layer's patch tokens never reach the logits
        scorer_grads = [p.grad for p in model.vit.layers[layer_index].token_selector.parameters()]
        assert all(grad is not None and torch.isfinite(grad).all() for grad in scorer_grads)
        assert any(grad.abs().sum() > 0 for grad in scorer_grads)


def test_a_per_layer_schedule_merges_each_layers_own_r():
    model = tiny_model(token_merge_r=[4, 0, 2, 6])
    assert [model.config.layer_token_merge_r(index) for index in range(4)] == [4, 0, 2, 6]
    assert model.config.merges_tokens() and not tiny_config().merges_tokens()
    with torch.no_grad():
        output = model(images(2), output_hidden_states=True)
    assert [state.shape[1] for state in output.hidden_states] == [65, 61, 61, 59, 53]


def test_set_keep_rates_changes_r_and_keep_rates_restores_it():
    model = tiny_model()
    pixel_values = images(2)
    with torch.no_grad():
        dense = model(pixel_values).logits
        with model.keep_rates(token_merge_r=[8, 8, 0, 0]):
            assert model.config.token_merge_r == [8, 8, 0, 0]
            merged = model(pixel_values, output_hidden_states=True)
        assert model.config.token_merge_r == 0
        assert torch.equal(model(pixel_values).logits, dense)
        model.set_keep_rates(token_merge_r=(8, 8, 0, 0))
        assert model.config.token_merge_r == [8, 8, 0, 0]  # a list of ints, as the constructor stores it
        again = model(pixel_values).logits
    assert [state.shape[1] for state in merged.hidden_states] == [65, 57, 49, 49, 49]
    assert torch.equal(again, merged.logits) and not torch.allclose(again, dense, atol=1e-4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"token_merge_r": 4, "attention_keep_rate": 0.5},
            r"`token_merge_r=4` cannot be combined with `attention_keep",
        ),
        ({"token_merge_r": 4, "token_selector": "adaptive"}, r"cannot be combined with `token_selector='adaptive'`"),
        ({"token_merge_r": -1}, r"`token_merge_r` must be"),
        ({"token_merge_r": 8.0}, r"`token_merge_r` must be an integer >= 0 .* got 8.0 of type float"),
        ({"token_merge_r": "8"}, r"`token_merge_r` must be an integer >= 0 .* got '8' of type str"),
        ({"token_merge_r": True}, r"`token_merge_r` must be an integer >= 0 .* got True of type bool"),
        ({"token_merge_r": [1, True, 0, 0]}, r"`token_merge_r\[1\]`"),
        ({"token_merge_r": [4, 4]}, r"a list of 4 integers >= 0 .* got a list of 2"),
        ({"token_merge_r": [0, 0, 0, 33]}, r"layer 3, which has 64 patch tokens there \(at most 32"),
        ({"token_merge_r": [30, 0, 18, 0]}, r"merges 18 tokens in layer 2, which has 34 patch tokens there"),
        (
            {"token_merge_r": 8, "token_keep_rate": 0.3},
            r"layer \d, which has \d+ patch tokens there.*token_keep_rate=0.3",
        ),
        ({"token_merge_proportional_attention": "yes"}, r"`token_merge_proportional_attention` must be True or False"),
    ],
)
def test_the_config_refuses_what_merging_cannot_honour_by_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        TriLevelViTConfig(**{**TINY_SHAPE, **overrides})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"token_merge_r": 40}, r"merges 40 tokens in layer 0, which has 64 patch tokens"),
        ({"token_merge_r": [0, 0, 1.5, 0]}, r"`token_merge_r\[2\]`"),
        ({"token_keep_rate": 0.2}, r"layer \d, which has \d+ patch tokens there"),
        ({"attention_keep_rate": 0.5}, r"cannot be combined with `attention_keep_rate=0.5`"),
    ],
)
def test_set_keep_rates_refuses_by_name_and_changes_nothing(settings, message):
    model = tiny_model(token_merge_r=6, attn_implementation="eager")
    before = model.config.to_dict()
    with pytest.raises(ValueError, match=message):
        model.set_keep_rates(**settings)
    assert model.config.to_dict() == before
    with pytest.raises(ValueError, match=message), model.keep_rates(**settings):
        pass
    assert model.config.to_dict() == before


def test_smaller_images_with_too_large_an_r_are_refused_naming_the_layer():
    model = tiny_model(token_merge_r=8)
    with torch.no_grad():
        model(images(1, size=28), interpolate_pos_encoding=True)  # 49 patches: 49 -> 41 -> 33 -> 25 -> 17
        with pytest.raises(ValueError, match=r"merges 8 tokens in layer 0, which has 9 patch tokens .*image size"):
            model(images(1, size=12), interpolate_pos_encoding=True)
        with pytest.raises(ValueError, match=r"merges 8 tokens in layer 2, which has 9 patch tokens"):
            model(images(1, size=20), interpolate_pos_encoding=True)  # 25 -> 17 -> 9: layer 2 can merge 4


# ---------------------------------------------------------------------------------------------------------------
# 7. Gradients and 9. gradient checkpointing


def merging_training_model(seed: int = 0):
    return tiny_model(seed, token_merge_r=[6, 4, 4, 2], token_keep_rate=0.8, token_fusion=True).train()


def test_merged_averages_pass_gradients_to_their_sources_by_size():
    hidden_states = torch.randn(1, 6, 3, generator=torch.Generator().manual_seed(5), requires_grad=True)
    sizes = torch.tensor([[1.0, 3.0, 1.0, 1.0, 2.0, 1.0]])
    merged, _, _, _ = merge_tokens(hidden_states, sizes, torch.tensor([[1]]), torch.tensor([[4]]))
    weights = torch.randn(merged.shape, generator=torch.Generator().manual_seed(6))
    (merged * weights).sum().backward()
    # token 1 (size 3) merged into token 4 (size 2), now slot 3: each gets its share of the mean's gradient
    torch.testing.assert_close(hidden_states.grad[0, 1], weights[0, 3] * 3 / 5)
    torch.testing.assert_close(hidden_states.grad[0, 4], weights[0, 3] * 2 / 5)
    torch.testing.assert_close(hidden_states.grad[0, 2], weights[0, 1])


def test_every_layer_gets_gradients_through_merged_tokens():
    model = merging_training_model()
    model(images(2), labels=torch.tensor([1, 3])).loss.backward()
    for index, layer in enumerate(model.vit.layers):
        for name, parameter in layer.named_parameters():
            if ".token_selector." in f".{name}":
                continue
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, (index, name)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients_when_merging(use_reentrant):
    pixel_values, labels = images(2), torch.tensor([1, 3])
    plain, checkpointed = merging_training_model(), merging_training_model()
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert checkpointed.is_gradient_checkpointing
    plain_loss = plain(pixel_values, labels=labels).loss
    checkpointed_loss = checkpointed(pixel_values, labels=labels).loss
    plain_loss.backward()
    checkpointed_loss.backward()
    torch.testing.assert_close(checkpointed_loss, plain_loss, rtol=0, atol=0)
    for (name, expected), (_, actual) in zip(plain.named_parameters(), checkpointed.named_parameters(), strict=True):
        if expected.grad is None:
            assert actual.grad is None, name
        else:
            torch.testing.assert_close(actual.grad, expected.grad, rtol=1e-5, atol=1e-7, msg=name)


# ---------------------------------------------------------------------------------------------------------------
# 8. Saving and loading


def test_a_merging_model_round_trips_through_save_pretrained(tmp_path):
    model = tiny_model(
        token_merge_r=[5, 3, 4, 2], token_keep_rate=0.7, token_fusion=True, token_merge_proportional_attention=False
    )
    model.save_pretrained(tmp_path)
    assert "token_merging.py" in REMOTE_CODE_FILES
    assert {path.name for path in tmp_path.glob("*.py")} == set(REMOTE_CODE_FILES)
    loaded = TriLevelViTForImageClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.token_merge_r == [5, 3, 4, 2]
    assert loaded.config.token_merge_proportional_attention is False
    pixel_values = images(3)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values).logits, model(pixel_values).logits)


REMOTE_LOAD_SCRIPT = """
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageClassification

folder, work = Path(sys.argv[1]), Path(sys.argv[2])
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    output = model(load_file(folder / "pixel_values.safetensors")["pixel_values"], output_token_sources=True)
save_file({"logits": output.logits, "token_sources": output.token_sources}, work / "output.safetensors")
print(json.dumps({
    "module": type(model).__module__,
    "merging_module": [name for name in sys.modules if name.endswith(".token_merging")],
    "token_merge_r": model.config.token_merge_r,
    "loaded_modules": sorted(m for m in sys.modules if m.startswith("hf_trilevel")),
}))
"""


def test_a_merging_folder_loads_with_remote_code_where_hf_trilevel_cannot_be_imported(tmp_path):
    folder, work = tmp_path / "checkpoint", tmp_path / "elsewhere"
    work.mkdir()
    model = tiny_model(token_merge_r=[5, 3, 4, 2], token_keep_rate=0.7, token_fusion=True)
    model.save_pretrained(folder)
    pixel_values = images(3)
    save_file({"pixel_values": pixel_values}, folder / "pixel_values.safetensors")
    with torch.no_grad():
        expected = model(pixel_values, output_token_sources=True)

    report = run_without_hf_trilevel(REMOTE_LOAD_SCRIPT, folder, work, tmp_path)
    assert report["loaded_modules"] == []
    assert report["module"].startswith("transformers_modules.")
    assert report["merging_module"] and all(
        name.startswith("transformers_modules.") for name in report["merging_module"]
    )
    assert report["token_merge_r"] == [5, 3, 4, 2]
    remote = load_file(work / "output.safetensors")
    torch.testing.assert_close(remote["logits"], expected.logits, rtol=0, atol=1e-6)
    assert torch.equal(remote["token_sources"], expected.token_sources)


def test_an_off_the_shelf_vit_folder_merges_with_from_pretrained_token_merge_r(tmp_path):
    reference = tiny_vit()
    reference.save_pretrained(tmp_path)
    model, loading = TriLevelViTForImageClassification.from_pretrained(
        tmp_path, token_merge_r=8, output_loading_info=True
    )
    assert not any(loading.values()), loading
    assert model.config.token_merge_r == 8
    pixel_values = images(2)
    with torch.no_grad():
        output = model.eval()(pixel_values, output_hidden_states=True)
        dense = reference(pixel_values).logits
    assert [state.shape[1] for state in output.hidden_states] == [65, 57, 49, 41, 33]
    assert not torch.allclose(output.logits, dense, atol=1e-4)  # the checkpoint's weights, now merging
    assert torch.isfinite(output.logits).all()
    with pytest.raises(ValueError, match=r"merges 40 tokens in layer 0, which has 64 patch tokens"):
        TriLevelViTForImageClassification.from_pretrained(tmp_path, token_merge_r=40)


def test_the_reference_helpers_are_not_vacuous():
    # Guards the reference itself: a uniform mean would differ from a size-weighted one here.
    merged, sizes, survivors = reference_merge(torch.tensor([[0.0], [1.0], [4.0]]), [1.0, 3.0, 1.0], [(1, 2)])
    assert survivors == [0, 2] and sizes == [1.0, 4.0]
    assert math.isclose(float(merged[1, 0]), (3 * 1.0 + 4.0) / 4)
