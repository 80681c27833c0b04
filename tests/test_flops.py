"""The analytic FLOPs model agrees with torch's FLOP counter on real forwards."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hf_trilevel import TriLevelViTConfig
from hf_trilevel.flops import flops_speedup_limit, forward_flops, layer_costs

from .helpers import images, tiny_model


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
