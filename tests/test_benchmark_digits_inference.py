"""examples/benchmark_digits_inference.py: trained folders timed on the real digits validation images."""

import importlib.util
import json
from pathlib import Path

import torch
from transformers import ViTImageProcessorPil

from hf_trilevel import slim
from hf_trilevel.evaluation.flops import forward_flops

from .helpers import sharpen_attention, tiny_model

SCRIPT = Path(__file__).parents[1] / "examples" / "benchmark_digits_inference.py"


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark_digits_inference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_report_accuracy_tokens_flops_and_speed_against_dense_vit(tmp_path):
    folder = tmp_path / "adaptive"
    model = sharpen_attention(
        tiny_model(token_selector="adaptive", token_keep_rate=0.9, token_keep_mass=0.6, num_labels=10)
    )
    model.save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    output = tmp_path / "rows.json"
    specs = [str(folder), f'{folder}:{{"token_keep_mass": 1.0}}']
    threads = torch.get_num_threads()
    try:
        rows = load_script().main(
            [*specs, "--repeats", "1", "--batch-size", "180", "--threads", "1", "--json", str(output)]
        )
    finally:
        torch.set_num_threads(threads)  # the script sets torch's threads for the whole process
    assert [row["model"] for row in rows] == [*specs, "dense ViT"]
    adaptive, fixed, dense = rows
    assert fixed["mean_kept_tokens"] == [58.0, 53.0, 48.0]  # mass 1.0: the cap, ceil(0.9 n) compounded from 64
    assert all(a <= f for a, f in zip(adaptive["mean_kept_tokens"], fixed["mean_kept_tokens"], strict=True))
    assert adaptive["flops_speedup_limit"] > fixed["flops_speedup_limit"] > 1.0
    assert 0.0 <= adaptive["accuracy"] <= 100.0 and dense["speedup"] == 1.0
    assert all(row["images_per_second"] > 0 for row in rows)
    assert json.loads(output.read_text())["rows"] == rows
    try:
        training = load_script().main(
            [str(folder), "--repeats", "1", "--batch-size", "180", "--threads", "1", "--training"]
        )
    finally:
        torch.set_num_threads(threads)
    assert [row["model"] for row in training] == [str(folder), "dense ViT"] and training[0]["images_per_second"] > 0


def test_a_slimmed_folder_scores_as_its_masked_folder_with_the_limit_against_full_width(tmp_path):
    masked = sharpen_attention(tiny_model(num_labels=10))
    head_dim = masked.config.hidden_size // masked.config.num_attention_heads
    with torch.no_grad():  # every layer: head 1 (q, k, v rows) and the even MLP neurons (fc1 rows) pruned
        for layer in masked.vit.layers:
            for projection in (layer.attention.q_proj, layer.attention.k_proj, layer.attention.v_proj):
                projection.weight[head_dim:] = 0
                projection.bias[head_dim:] = 0
            layer.mlp.fc1.weight[::2] = 0
            layer.mlp.fc1.bias[::2] = 0
    processor = ViTImageProcessorPil(size={"height": 32, "width": 32})
    for name, model in (("masked", masked), ("slimmed", slim(masked))):
        model.save_pretrained(tmp_path / name)
        processor.save_pretrained(tmp_path / name)
    threads = torch.get_num_threads()
    try:
        rows = load_script().main(
            [str(tmp_path / "masked"), str(tmp_path / "slimmed"), "--repeats", "1", "--threads", "1"]
        )
    finally:
        torch.set_num_threads(threads)
    masked_row, slimmed_row, _ = rows
    assert slimmed_row["accuracy"] == masked_row["accuracy"]  # the same logits on the 360 validation images
    assert masked_row["flops_speedup_limit"] == 1.0  # zeros cost dense kernels as much as anything else
    full, kept = tiny_model(num_labels=10).config, slim(masked).config
    assert kept.num_attention_heads_per_layer == [1] * 4 and kept.intermediate_size_per_layer == [32] * 4
    assert slimmed_row["flops_speedup_limit"] == round(forward_flops(full) / forward_flops(kept), 3) > 1.5
