"""Adaptive token counts and attention sparsity export: one graph for every batch size, the same logits as eager."""

import pytest
import torch
from torch import nn

from hf_trilevel.modeling.sparse_attention import select_connections

from .helpers import images, sharpen_attention, tiny_model

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ADAPTIVE = {
    "token_selector": "adaptive",
    "token_keep_rate": 0.9,
    "token_keep_mass": 0.6,
    "token_min_keep_rate": 0.2,
    "token_prune_layers": [1, 2, 3],
    "token_count_buckets": 4,  # eager splits into groups; a traced graph runs one
}
# Rows of the second and third intervals run out of unmasked candidates: their budgets end in ties at 0.
SPARSE_ATTENTION = {"token_keep_rate": 0.7, "attention_keep_rate": 0.5, "token_prune_layers": [1, 2, 3]}
BATCH_SIZES = (1, 2, 5)


class Logits(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model.eval()

    def forward(self, pixel_values):
        return self.model(pixel_values).logits


def dynamic_batch():
    return {"pixel_values": {0: torch.export.Dim("batch", min=1, max=16)}}


def eager_logits(model, pixel_values):
    with torch.no_grad():
        return model(pixel_values).logits


def test_adaptive_counts_differ_between_the_images_used_here():
    model = sharpen_attention(tiny_model(**ADAPTIVE))
    with torch.no_grad():
        counts = model(images(5, seed=5), output_kept_token_indices=True).kept_token_counts
    assert any(len(set(layer.tolist())) > 1 for layer in counts)


def kept_widths(program) -> list[str]:
    """The data-dependent sizes an exported graph reads at run time (one per `.item()` it keeps)."""
    return [
        node.name
        for node in program.graph.nodes
        if node.target in (torch.ops.aten.item.default, torch.ops.aten._local_scalar_dense.default)
    ]


def test_exported_adaptive_graph_pads_to_the_batch_largest_count_not_the_patch_axis():
    # A lone image in the exported graph computes its own count, as in eager, not every patch: one size read per
    # pruning layer. With attention sparsity (a Python budget per width) the graph pads to the whole axis instead.
    model = sharpen_attention(tiny_model(**ADAPTIVE))
    program = torch.export.export(Logits(model), (images(3),), dynamic_shapes=dynamic_batch(), strict=False)
    assert len(kept_widths(program)) == len(ADAPTIVE["token_prune_layers"])
    for batch_size in (1, 4):
        pixel_values = images(batch_size, seed=10 + batch_size)
        torch.testing.assert_close(program.module()(pixel_values), eager_logits(model, pixel_values), rtol=0, atol=1e-5)
    padded = sharpen_attention(tiny_model(**ADAPTIVE, attention_keep_rate=0.5))
    program = torch.export.export(Logits(padded), (images(3),), dynamic_shapes=dynamic_batch(), strict=False)
    assert kept_widths(program) == []
    pixel_values = images(1, seed=7)
    torch.testing.assert_close(program.module()(pixel_values), eager_logits(padded, pixel_values), rtol=0, atol=1e-5)


def test_adaptive_selector_exports_with_a_dynamic_batch():
    model = sharpen_attention(tiny_model(**ADAPTIVE))
    program = torch.export.export(Logits(model), (images(3),), dynamic_shapes=dynamic_batch(), strict=False)
    for batch_size in BATCH_SIZES:
        pixel_values = images(batch_size, seed=batch_size)
        exported = program.module()(pixel_values)
        torch.testing.assert_close(exported, eager_logits(model, pixel_values), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        ADAPTIVE,
        {**ADAPTIVE, "token_fusion": True},
        {**ADAPTIVE, "token_importance": "learned"},
        {**ADAPTIVE, "token_fusion": True, "attention_keep_rate": 0.5},
        SPARSE_ATTENTION,
    ],
    ids=["adaptive", "adaptive_fusion", "adaptive_learned", "adaptive_fusion_attention", "attention_keep_rate_0.5"],
)
def test_onnxruntime_logits_equal_eager_at_two_batch_sizes(overrides, tmp_path):
    model = sharpen_attention(tiny_model(**overrides))
    program = torch.onnx.export(Logits(model), (images(3),), dynamo=True, dynamic_shapes=dynamic_batch())
    program.save(str(tmp_path / "model.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    for batch_size in BATCH_SIZES:
        pixel_values = images(batch_size, seed=batch_size)
        (logits,) = session.run(None, {session.get_inputs()[0].name: pixel_values.numpy()})
        torch.testing.assert_close(torch.from_numpy(logits), eager_logits(model, pixel_values), rtol=0, atol=1e-5)


def test_equal_connection_scores_at_the_budget_edge_go_to_the_lowest_key_index():
    # Class token, 6 patches: rows with 1 or 2 nonzero patches and a budget of 3 fill it from the zeros.
    scores = torch.tensor([[0.0, 0.0, 0.5, 0.0, 0.0, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9]])
    fixed_budget = select_connections(scores[0].expand(1, 7, 7), 0.5, has_trailing_summary_token=False)
    assert fixed_budget[0, 1:].unique(dim=0).tolist() == [[True, True, True, False, False, True, False]]
    per_image = select_connections(scores[1].expand(1, 7, 7), 0.5, False, num_valid=torch.tensor([6]))
    assert per_image[0, 1:].unique(dim=0).tolist() == [[True, True, True, False, False, False, True]]
