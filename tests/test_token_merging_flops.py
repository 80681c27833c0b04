"""Token merging in the analytic FLOPs model: the MLP and the later layers at the merged widths, the matching where
it happens, exactly as torch's FLOP counter counts real forwards; and the eval metrics that quote them."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hf_trilevel import TriLevelViTConfig
from hf_trilevel.evaluation.flops import (
    dense_config,
    flops_speedup_limit,
    forward_flops,
    layer_costs,
    matching_flops,
    measured_flops,
)
from hf_trilevel.evaluation.metrics import sparsity_metrics
from hf_trilevel.evaluation.token_counts import fixed_kept_token_counts, kept_token_counts, kept_token_metrics

from .helpers import images, tiny_config, tiny_model

SLIMMED = {"num_attention_heads_per_layer": [2, 1, 2, 1], "intermediate_size_per_layer": [64, 16, 48, 8]}


def _counted(model, pixel_values):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        outputs = model(pixel_values, output_kept_token_indices=True)
    return counter.get_total_flops(), outputs


@pytest.mark.parametrize(
    "settings",
    [
        {"token_merge_r": 4},
        {"token_merge_r": [8, 0, 5, 3]},
        {"token_merge_r": 4, "token_keep_rate": 0.7},
        {"token_merge_r": 3, "token_keep_rate": 0.7, "token_fusion": True},
        {"token_merge_r": 3, "token_keep_rate": 0.5, "token_selector": "learned"},
        {"token_merge_r": [2, 6, 3, 1], "token_keep_rate": 0.7, **SLIMMED},
        {"token_merge_r": 4, "token_merge_proportional_attention": False},
    ],
)
def test_analytic_flops_of_merging_match_the_flop_counter(settings):
    # eager: FlopCounterMode does not count the CPU flash-attention kernel that sdpa dispatches to.
    model = tiny_model(attn_implementation="eager", **settings)
    counted, outputs = _counted(model, images(2))
    assert forward_flops(model.config, batch_size=2) == counted
    assert measured_flops(model.config, outputs.kept_token_counts).flops_per_image == counted / 2
    assert forward_flops(model.config) < forward_flops(dense_config(model.config))


def test_a_merging_layers_mlp_and_every_later_layer_see_the_merged_width():
    costs = layer_costs(tiny_config(token_merge_r=8))  # 64 patches, 4 layers, keep rate 1: only merging
    assert [c.attention_tokens for c in costs] == [65, 57, 49, 41]
    assert [c.mlp_tokens for c in costs] == [57, 49, 41, 33]


def test_the_matching_is_counted_in_the_layer_that_merges_on_its_tokens_after_the_drop():
    merged_once = tiny_config(token_merge_r=[0, 3, 0, 0], token_keep_rate=0.5)  # layer 1 drops 64 -> 32, merges 3
    dropped_only = tiny_config(token_keep_rate=0.5)
    merged, dropped = layer_costs(merged_once), layer_costs(dropped_only)
    assert merged[0] == dropped[0]
    assert merged[1].mlp_tokens == dropped[1].mlp_tokens - 3
    mlp_saving = 2 * 2 * 3 * 32 * 64  # 3 tokens fewer through fc1 and fc2 (hidden 32, 64 neurons)
    assert merged[1].flops == dropped[1].flops - mlp_saving + matching_flops(32, 16)
    assert matching_flops(32, 16) == 2 * 16 * 16 * 16 and matching_flops(7, 4) == 2 * 4 * 3 * 4


def test_dense_config_turns_merging_off():
    merging = tiny_config(token_merge_r=[8, 0, 5, 3], token_keep_rate=0.7)
    assert dense_config(merging).token_merge_r == 0
    assert forward_flops(dense_config(merging)) == forward_flops(tiny_config())
    assert flops_speedup_limit(merging) == forward_flops(tiny_config()) / forward_flops(merging)


def test_deit_small_at_r_13_costs_what_tome_reports():
    small = TriLevelViTConfig(hidden_size=384, num_attention_heads=6, intermediate_size=1536, token_merge_r=13)
    assert layer_costs(small)[-1].mlp_tokens == 1 + 196 - 12 * 13  # 196 patches, 12 layers
    # ToMe's paper (GFLOPs there are multiply-accumulates, half of ours): DeiT-S 4.6, at r = 13 2.7.
    assert forward_flops(dense_config(small)) / 2e9 == pytest.approx(4.6, abs=0.05)
    assert forward_flops(small) / 2e9 == pytest.approx(2.7, abs=0.05)


def test_fixed_counts_include_the_merges_the_model_makes():
    for settings in (
        {"token_merge_r": 4},
        {"token_merge_r": [8, 0, 5, 3], "token_keep_rate": 0.7, "token_fusion": True},
    ):
        model = tiny_model(**settings)
        _, outputs = _counted(model, images(3))
        measured = kept_token_counts(outputs)
        fixed = fixed_kept_token_counts(model.config)
        assert (measured == fixed).all()
    assert fixed_kept_token_counts(tiny_config(token_merge_r=4)).tolist() == [[64 - 8, 64 - 12, 64 - 16]]


def test_eval_metrics_count_the_merged_widths():
    config = tiny_config(token_merge_r=4, token_keep_rate=0.7)
    metrics = sparsity_metrics(config)
    assert metrics["eval_gflops_per_image"] == pytest.approx(forward_flops(config) / 1e9)
    assert metrics["flops_speedup_limit"] == pytest.approx(flops_speedup_limit(config))
    mlp_tokens = [c.mlp_tokens for c in layer_costs(config)]
    assert mlp_tokens == [61, 39, 24, 14]  # 64 -4; 60 -> 42 -4; 38 -> 27 -4; 23 -> 17 -4 (+ class token)
    assert metrics["token_fraction_kept"] == pytest.approx(sum(mlp_tokens) / (4 * 65))
    kept = kept_token_metrics(config, fixed_kept_token_counts(config), prefix="")
    assert [kept[f"kept_tokens_layer_{layer}"] for layer in (1, 2, 3)] == [38, 23, 13]
    assert kept["measured_gflops_per_image"] == pytest.approx(metrics["eval_gflops_per_image"])
    assert kept["measured_flops_speedup_limit"] == pytest.approx(metrics["flops_speedup_limit"])


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        # Layer 0 merges 4 (64 -> 60 enter layer 1), which merges 4 more: at most 56 survive it.
        (([57], [52], [48]), "`kept_token_counts[0][0]` must be in [4, 56]"),
        (([56], [53], [48]), "`kept_token_counts[1][0]` must be in [4, 52]"),
        (([56], [52], [3]), "`kept_token_counts[2][0]` must be in [4, 48]"),  # a layer merges at most half
    ],
)
def test_merged_counts_above_what_entered_less_the_merge_are_refused(counts, message):
    with pytest.raises(ValueError, match="kept_token_counts") as error:
        measured_flops(tiny_config(token_merge_r=4), counts)
    assert message in str(error.value)
    assert measured_flops(tiny_config(token_merge_r=4), ([56], [52], [48])).num_images == 1


def test_accuracy_and_throughput_measure_merge_counts_in_the_same_rounds_and_report_them():
    from hf_trilevel.evaluation.accuracy_throughput import measure_accuracy_and_throughput

    model = tiny_model(token_keep_rate=1.0, num_labels=3).eval()
    pixel_values, labels = images(6), torch.tensor([0, 1, 2, 0, 1, 2])
    settings = [(1.0, 1.0), (1.0, 1.0, 0), (1.0, 1.0, 2)]
    plain, unmerged, merged = measure_accuracy_and_throughput(
        model, pixel_values, labels, settings, batch_size=3, repeats=1, warmup=0
    )
    assert "token_merge_r" not in plain and unmerged["token_merge_r"] == 0 and merged["token_merge_r"] == 2
    assert unmerged["accuracy"] == plain["accuracy"] and unmerged["flops_per_image"] == plain["flops_per_image"]
    with model.keep_rates(token_merge_r=2):
        expected_accuracy = (model(pixel_values=pixel_values).logits.argmax(-1) == labels).float().mean().item()
        assert merged["flops_per_image"] == forward_flops(model.config) < plain["flops_per_image"]
    assert merged["accuracy"] == pytest.approx(expected_accuracy)
    assert model.config.token_merge_r == 0  # every setting was undone
