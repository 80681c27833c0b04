"""Weight masks and structured units on crafted tensors: what is masked, ERK, prune-and-grow, 2:4, unit scores."""

import math

import pytest
import torch

from hf_trilevel.weight_sparsity.masks import (
    check_pattern,
    cosine_death_rate,
    erk_densities,
    initial_mask,
    is_two_four,
    masked_weights,
    prune_and_grow,
    prune_count,
    two_four_mask,
)
from hf_trilevel.weight_sparsity.structured_units import (
    apply_unit_masks,
    head_taylor_scores,
    unit_count,
    unit_layers,
    unit_prune_and_grow,
    unit_prune_count,
)

from .helpers import images, tiny_model


def test_the_masked_weights_are_the_2d_weights_and_nothing_else():
    names = list(masked_weights(tiny_model()))
    assert names[0] == "vit.embeddings.patch_embeddings.projection.weight"
    assert names[-1] == "classifier.weight"
    per_layer = [n for n in names if n.startswith("vit.layers.0.")]
    assert per_layer == [f"vit.layers.0.attention.{p}_proj.weight" for p in "qkvo"] + [
        "vit.layers.0.mlp.fc1.weight", "vit.layers.0.mlp.fc2.weight",
    ]  # fmt: skip
    assert len(names) == 2 + 6 * 4  # no bias, norm, class token, position embedding or selector


def test_erk_densities_meet_the_budget_and_favour_small_layers():
    shapes = {"wide": (256, 128), "square": (128, 128), "small": (10, 128)}
    densities = erk_densities(shapes, 0.3)
    kept = sum(densities[n] * math.prod(s) for n, s in shapes.items())
    assert kept == pytest.approx(0.3 * sum(math.prod(s) for s in shapes.values()))
    assert densities["small"] > densities["square"] > densities["wide"]
    assert densities["small"] == 1.0  # the rule would exceed 1: kept dense, the rest re-solved
    assert erk_densities(shapes, 1.0) == dict.fromkeys(shapes, 1.0)


def test_prune_drops_the_smallest_magnitudes_and_grow_takes_the_largest_gradients():
    mask = torch.tensor([True, True, True, False, False, False])
    weight = torch.tensor([0.1, -5.0, 3.0, 0.0, 0.0, 0.0])
    gradient = torch.tensor([0.2, 0.0, 0.0, 0.5, -4.0, 1.0])
    new = prune_and_grow(mask, weight, gradient, count=1)
    assert new.tolist() == [False, True, True, False, True, False]  # 0.1 dropped, |-4| grown
    gradient[0] = 9.0
    new = prune_and_grow(mask, weight, gradient, count=2)
    assert new.tolist() == [True, True, False, False, True, False]  # 0.1 and 3.0 dropped; 9 (just dropped) and 4
    assert int(new.sum()) == int(mask.sum())


def test_2_4_masks_keep_two_of_every_four_through_prune_and_grow():
    torch.manual_seed(0)
    weight = torch.randn(8, 16)
    mask = two_four_mask(weight.abs())
    assert is_two_four(mask)
    assert torch.equal(weight.abs()[mask].sort().values[-4:], weight.abs().flatten().sort().values[-4:])
    new = prune_and_grow(
        mask, weight * mask, torch.randn(8, 16), count=prune_count(0.5, int(mask.sum())), pattern="2:4"
    )
    assert is_two_four(new) and not torch.equal(new, mask)
    with pytest.raises(ValueError, match=r"`pattern` '2:4' .* has 6 inputs, not a multiple of 4"):
        check_pattern("2:4", {"odd": (4, 6)})


def test_initial_masks_hold_the_exact_count_and_magnitude_keeps_the_largest():
    generator = torch.Generator().manual_seed(0)
    weight = torch.arange(1.0, 21.0).reshape(4, 5)
    random = initial_mask(weight, 0.25, "unstructured", "random", generator)
    assert int(random.sum()) == 5
    largest = initial_mask(weight, 0.25, "unstructured", "magnitude", generator)
    assert largest.flatten().tolist() == [False] * 15 + [True] * 5


def test_the_death_rate_decays_by_cosine_from_start_to_end():
    assert cosine_death_rate(0, 100, 0.5, 0.005) == pytest.approx(0.5)
    assert cosine_death_rate(50, 100, 0.5, 0.005) == pytest.approx(0.2525)
    assert cosine_death_rate(100, 100, 0.5, 0.005) == pytest.approx(0.005)
    assert prune_count(0.005, 1000) == 5 and prune_count(0.001, 10) == 1  # ceil, as SViTE


def test_head_taylor_importance_from_weights_equals_the_head_output_form():
    # |sum(dL/dA_h * A_h)| over the head's output A_h, computed with activation hooks, against the weight form.
    model = tiny_model(token_keep_rate=1.0).train()
    layer = unit_layers(model)[0]
    captured = {}
    layer.attention.o_proj.register_forward_pre_hook(lambda module, args: captured.update(a=args[0]))
    output = model(images(4))
    captured["a"].retain_grad()
    output.logits.square().sum().backward()
    a, grad = captured["a"], captured["a"].grad
    per_head = (a * grad).reshape(*a.shape[:-1], layer.num_heads, layer.head_dim).sum(dim=(0, 1, 3)).abs()
    assert torch.allclose(head_taylor_scores(layer), per_head, rtol=1e-4, atol=1e-7)


def test_unit_prune_and_grow_swaps_the_weakest_active_for_the_strongest_inactive():
    mask = torch.tensor([True, True, False, False, True, False])
    prune = torch.tensor([5.0, 0.1, 99.0, 99.0, 2.0, 99.0])
    grow = torch.tensor([0.0, 9.0, 1.0, 3.0, 0.0, 2.0])  # unit 1's gradient is high but it was just dropped
    new = unit_prune_and_grow(mask, prune, grow, count=1)
    assert new.tolist() == [True, False, False, True, True, False]
    assert unit_prune_count(0.5, 2, 2) == 1 and unit_prune_count(0.2, 2, 2) == 0 and unit_prune_count(0.5, 4, 1) == 1


def test_masked_heads_and_neurons_output_nothing():
    model = tiny_model(token_keep_rate=1.0)
    layer = unit_layers(model)[0]
    hidden = torch.randn(2, 5, 32)
    apply_unit_masks(layer, torch.tensor([True, False]), torch.ones(64, dtype=torch.bool))
    attention = layer.attention(hidden)[0]
    with torch.no_grad():
        layer.attention.o_proj.weight[:, 16:] = 7.0  # the output side of a masked head does not matter
    assert torch.allclose(layer.attention(hidden)[0], attention)
    neurons = torch.ones(64, dtype=torch.bool)
    neurons[::2] = False
    apply_unit_masks(layer, torch.ones(2, dtype=torch.bool), neurons)
    mlp = layer.mlp(hidden)
    with torch.no_grad():
        layer.mlp.fc2.weight[:, ::2] = 3.0
    assert torch.allclose(layer.mlp(hidden), mlp)


def test_a_density_that_leaves_no_unit_is_refused_naming_the_argument():
    assert unit_count("head_density", 0.5, 3, 0) == 2 and unit_count("neuron_density", 0.5, 768, 0) == 384
    with pytest.raises(ValueError, match=r"`head_density` 0.1 leaves no unit of the 4 in layer 2"):
        unit_count("head_density", 0.1, 4, 2)
    with pytest.raises(ValueError, match=r"`neuron_density` must be in \(0, 1\]"):
        unit_count("neuron_density", 1.5, 64, 0)


def test_erk_reads_the_patch_convolution_as_a_matrix():
    from hf_trilevel.weight_sparsity.mask_sets import UnstructuredMasks

    model = tiny_model()
    masks = UnstructuredMasks(model, 0.5, "unstructured", "random")
    shapes = {name: (w.shape[0], w[0].numel()) for name, w in masked_weights(model).items()}
    assert masks.densities == erk_densities(shapes, 0.5)
    projection = "vit.embeddings.patch_embeddings.projection.weight"
    assert shapes[projection] == (32, 48)
