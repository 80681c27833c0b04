"""The analytic FLOPs model agrees with torch's FLOP counter on real forwards."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hf_trilevel import TriLevelViTConfig, benchmark
from hf_trilevel.benchmark import Setting, benchmark_inference, format_table
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


def test_benchmark_runs_and_reports_every_setting(monkeypatch):
    monkeypatch.setitem(
        benchmark.PRESETS,
        "test-tiny",
        {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    )
    results = benchmark_inference("test-tiny", (Setting(1.0), Setting(0.5)), batch_size=2, repeats=2, warmup=1)
    assert [r.setting for r in results] == ["dense ViT (transformers)", "keep 1", "keep 0.5"]
    assert all(r.median_seconds > 0 and r.speedup > 0 for r in results)
    assert results[0].speedup == 1.0 and results[2].flops_limit > 1.0
    assert "keep 0.5" in format_table(results)


def test_benchmark_rejects_an_unknown_preset():
    with pytest.raises(ValueError, match="`preset` must be one of"):
        benchmark_inference("deit-huge")
