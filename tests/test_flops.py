"""The analytic FLOPs model agrees with torch's FLOP counter on real forwards, for every token selector."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hf_trilevel import TriLevelViTConfig
from hf_trilevel.evaluation.flops import dense_config, flops_speedup_limit, forward_flops, layer_costs, measured_flops
from hf_trilevel.modeling.token_reduction import token_schedule
from hf_trilevel.modeling.token_selectors import learned_scorer_flops

from .helpers import images, sharpen_attention, tiny_config, tiny_model


@pytest.mark.parametrize(
    "rates",
    [
        {},
        {"token_keep_rate": 0.5},
        {"token_keep_rate": 0.7, "attention_keep_rate": 0.3, "token_fusion": True},
        {"attention_keep_rate": 0.3},
    ],
)
def test_analytic_flops_match_the_flop_counter(rates):
    # eager: FlopCounterMode does not count the CPU flash-attention kernel that sdpa dispatches to.
    model = tiny_model(attn_implementation="eager", **rates)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images(2))
    assert forward_flops(model.config, batch_size=2) == counter.get_total_flops()


def test_token_counts_per_layer_follow_the_schedule():
    config = TriLevelViTConfig(token_keep_rate=0.7)  # 12 layers, 196 patches, pruning at 3, 6, 9
    costs = layer_costs(config)
    assert [c.attention_tokens for c in costs] == [197] * 4 + [139] * 3 + [98] * 3 + [69] * 2
    assert [c.mlp_tokens for c in costs] == [197] * 3 + [139] * 3 + [98] * 3 + [69] * 3


def test_deit_tiny_limits_bracket_the_papers_token_schedules():
    tiny = {"hidden_size": 192, "num_attention_heads": 3, "intermediate_size": 768}
    assert flops_speedup_limit(TriLevelViTConfig(**tiny, token_keep_rate=0.7)) == pytest.approx(1.54, abs=0.01)
    assert flops_speedup_limit(TriLevelViTConfig(**tiny, token_keep_rate=0.5)) == pytest.approx(2.01, abs=0.01)
    assert flops_speedup_limit(TriLevelViTConfig(**tiny)) == 1.0


@pytest.mark.parametrize("rates", [{}, {"token_keep_rate": 0.7, "attention_keep_rate": 0.3, "token_fusion": True}])
def test_analytic_flops_of_a_slimmed_model_match_the_flop_counter(rates):
    slim = {"num_attention_heads_per_layer": [2, 1, 2, 1], "intermediate_size_per_layer": [64, 16, 48, 8]}
    model = tiny_model(attn_implementation="eager", **slim, **rates)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images(2))
    assert forward_flops(model.config, batch_size=2) == counter.get_total_flops()
    assert forward_flops(model.config) < forward_flops(tiny_model(**rates).config)


def _counted_flops(model, pixel_values):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        outputs = model(pixel_values, output_kept_token_indices=True)
    return counter.get_total_flops(), outputs.kept_token_counts


@pytest.mark.parametrize(
    "rates",
    [
        {"token_keep_rate": 0.5},
        {"token_keep_rate": 0.7, "attention_keep_rate": 0.3, "token_fusion": True},
        {"token_keep_rate": 1.0},  # keeps every token: the scorer never runs
    ],
)
def test_learned_selector_flops_match_the_flop_counter(rates):
    model = tiny_model(attn_implementation="eager", token_selector="learned", **rates)
    counted, counts = _counted_flops(model, images(2))
    assert forward_flops(model.config, batch_size=2) == counted
    assert measured_flops(model.config, counts).flops_per_image == counted / 2


def test_learned_selector_costs_its_scorer_on_every_current_patch_of_a_pruning_layer():
    learned = tiny_config(token_selector="learned", token_keep_rate=0.5)  # 64 patches, pruning at 1, 2, 3
    fixed = tiny_config(token_keep_rate=0.5)
    scored_patches = 64 + 32 + 16
    assert forward_flops(learned) - forward_flops(fixed) == scored_patches * learned_scorer_flops(learned)
    assert learned_scorer_flops(learned) == 2 * 32 * 8 + 2 * 8


@pytest.mark.parametrize(
    "settings",
    [
        {"token_keep_rate": 0.7, "token_keep_mass": 0.6},
        {"token_keep_rate": 1.0, "token_keep_mass": 0.8, "token_fusion": True},
        {"token_keep_rate": 0.9, "token_keep_mass": 0.7, "attention_keep_rate": 0.5},
        {"token_keep_rate": 0.8, "token_keep_mass": 0.7, "token_importance": "learned"},
        {"token_keep_rate": 0.7, "token_keep_mass": 1.0},  # the fixed rate, still scored at every pruning layer
    ],
)
def test_adaptive_flops_of_one_image_match_the_flop_counter(settings):
    # One image, so the padded width is the image's own count and the counter sees exactly its work.
    model = sharpen_attention(
        tiny_model(attn_implementation="eager", token_selector="adaptive", **settings), factor=5.0
    )
    counted, counts = _counted_flops(model, images(1))
    measured = measured_flops(model.config, counts)
    assert measured.flops_per_image == counted
    assert measured.speedup_limit == pytest.approx(forward_flops(dense_config(model.config)) / counted)
    if settings["token_keep_mass"] < 1.0:  # the mass, not the rate bound, chose the count
        assert [int(c) for c in counts] != token_schedule(64, settings["token_keep_rate"], 3)


def test_measured_flops_count_each_image_of_a_batch_at_its_own_counts():
    adaptive = tiny_model(
        attn_implementation="eager", token_selector="adaptive", token_keep_rate=1.0, token_keep_mass=0.7
    )
    model = sharpen_attention(adaptive, factor=5.0)
    pixel_values = images(4)
    _, counts = _counted_flops(model, pixel_values)
    assert len(set(counts[0].tolist())) > 1  # the images keep different numbers of tokens
    alone = [_counted_flops(model, pixel_values[i : i + 1])[0] for i in range(4)]
    measured = measured_flops(model.config, counts)
    assert measured.flops_per_image == pytest.approx(sum(alone) / 4)
    assert measured.mean_kept_tokens == tuple(c.double().mean().item() for c in counts)
    assert measured.min_kept_tokens[0] < measured.max_kept_tokens[0]
    assert measured.num_images == 4


def test_measured_flops_average_the_flops_not_the_counts():
    config = tiny_config(token_selector="adaptive", token_keep_rate=1.0, token_keep_mass=0.5)
    counts = (torch.tensor([60, 20]), torch.tensor([50, 10]), torch.tensor([40, 4]))
    measured = measured_flops(config, counts)
    each = [forward_flops(config, kept_counts=(60, 50, 40)), forward_flops(config, kept_counts=(20, 10, 4))]
    assert measured.flops_per_image == sum(each) / 2
    assert measured.flops_per_image > forward_flops(config, kept_counts=(40, 30, 22))  # attention is quadratic
    assert measured.mean_kept_tokens == (40.0, 30.0, 22.0)


def test_measured_flops_of_a_fixed_rate_model_equal_its_config_flops():
    model = tiny_model(token_keep_rate=0.7, token_fusion=True)
    _, counts = _counted_flops(model, images(3))
    measured = measured_flops(model.config, counts)
    assert measured.flops_per_image == forward_flops(model.config)
    assert measured.speedup_limit == pytest.approx(flops_speedup_limit(model.config))
    assert measured.mean_kept_tokens == tuple(float(c) for c in token_schedule(64, 0.7, 3))


def test_one_image_column_of_the_counts_gives_that_images_flops():
    config = tiny_config(token_selector="adaptive", token_keep_rate=1.0, token_keep_mass=0.5)
    counts = torch.tensor([[60, 20], [50, 10], [40, 4]])  # [pruning layers, images]
    assert forward_flops(config, kept_counts=counts[:, 1]) == forward_flops(config, kept_counts=[20, 10, 4])
    assert measured_flops(config, counts).flops_per_image == measured_flops(config, list(counts)).flops_per_image


def test_adaptive_from_a_config_alone_is_counted_at_its_upper_bound():
    adaptive = tiny_config(token_selector="adaptive", token_keep_rate=0.5, token_keep_mass=0.8)
    fixed = tiny_config(token_keep_rate=0.5)
    assert [c.mlp_tokens for c in layer_costs(adaptive)] == [c.mlp_tokens for c in layer_costs(fixed)]
    assert forward_flops(adaptive) == forward_flops(fixed)
    # At keep 1.0 the fixed rate skips scoring; adaptive still scores at every pruning layer, as its mass may drop.
    everything = tiny_config(token_selector="adaptive", token_keep_mass=0.8)
    assert forward_flops(everything) - forward_flops(tiny_config()) == 3 * 2 * 65 * 32
    assert forward_flops(dense_config(everything)) == forward_flops(tiny_config())


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ((torch.tensor([30]), torch.tensor([20])), "one entry per pruning layer (3"),
        ((torch.tensor([30]), torch.tensor([40]), torch.tensor([10])), "`kept_token_counts[1][0]` must be in [1, 30]"),
        ((torch.tensor([65]), torch.tensor([40]), torch.tensor([10])), "must be in [1, 64]"),
        ((torch.tensor([30, 20]), torch.tensor([20]), torch.tensor([10])), "same number (>= 1) of images"),
        ((torch.tensor([30.0]), torch.tensor([20]), torch.tensor([10])), "1-D integer tensor"),
        (([30], [20.5], [10]), "`kept_token_counts[1]` must hold integers"),
        ((torch.tensor([30]), torch.tensor([0]), torch.tensor([0])), "`kept_token_counts[1][0]` must be in [1, 30]"),
    ],
)
def test_bad_kept_counts_are_a_value_error_naming_the_argument(counts, message):
    with pytest.raises(ValueError, match="kept_token_counts") as error:
        measured_flops(tiny_config(token_selector="adaptive"), counts)
    assert message in str(error.value)
