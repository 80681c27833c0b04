"""`torch.compile`: the fixed-count settings capture as one graph with eager's logits, and changing a setting costs
one compile per distinct value, reused when the value comes back.

Graph capture is checked with `aot_eager` (dynamo and AOT autograd, no code generation) or a backend that counts the
graphs it is handed, so these tests need no C++ toolchain; one test runs inductor itself. docs/serving.md records
what compiles, what recompiles and the measured speed.
"""

import pytest
import torch

from .helpers import images, sharpen_attention, tiny_model

FIXED_COUNT_SETTINGS = {
    "dense": {},
    "class_attention": {"token_keep_rate": 0.7},
    "merging": {"token_merge_r": 2},
    "fusion": {"token_keep_rate": 0.7, "token_fusion": True},
    "learned": {"token_keep_rate": 0.7, "token_selector": "learned"},
    "attention_sparsity": {"token_keep_rate": 0.7, "attention_keep_rate": 0.5},
}
ADAPTIVE = {
    "token_selector": "adaptive",
    "token_keep_rate": 0.9,
    "token_keep_mass": 0.6,
    "token_min_keep_rate": 0.2,
    "token_prune_layers": [1, 2, 3],
}


class CountingBackend:
    """A dynamo backend that runs each captured graph as is and counts the graphs (one per compile)."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def logits(model, pixel_values):
    with torch.no_grad():
        return model(pixel_values=pixel_values).logits


def compiled_logits_per_setting(name, values, **compile_options):
    """`(graphs compiled so far, compiled logits, eager logits)` after switching `name` to each of `values`."""
    model, pixel_values, backend = tiny_model(**{name: values[0]}), images(), CountingBackend()
    compiled = torch.compile(model, backend=backend, fullgraph=True, **compile_options)
    runs = []
    for value in values:
        model.set_keep_rates(**{name: value})
        compiled_logits = logits(compiled, pixel_values)
        runs.append((backend.graphs, compiled_logits, logits(model, pixel_values)))
    return runs


@pytest.mark.parametrize("setting", FIXED_COUNT_SETTINGS)
def test_fixed_count_settings_compile_to_one_graph_with_eager_logits(setting):
    model, pixel_values = tiny_model(**FIXED_COUNT_SETTINGS[setting]), images()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(logits(compiled, pixel_values), logits(model, pixel_values), rtol=0, atol=1e-6)


def test_inductor_compiled_token_dropping_matches_eager():
    model, pixel_values = tiny_model(token_keep_rate=0.7), images()
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(logits(compiled, pixel_values), logits(model, pixel_values), rtol=0, atol=1e-5)


def test_token_merge_r_compiles_once_per_distinct_value():
    runs = compiled_logits_per_setting("token_merge_r", [2, 3, 2, 1, 3, 0, 2])
    assert [graphs for graphs, _, _ in runs] == [1, 2, 2, 3, 3, 4, 4]
    for _, compiled, eager in runs:
        torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


RATES = [0.7, 0.5, 0.7, 0.5, 0.9, 1.0, 0.7]
GRAPHS_PER_RATE = [1, 2, 2, 2, 3, 4, 4]


def test_keep_rate_compiles_once_per_distinct_rate_when_compiled_static():
    runs = compiled_logits_per_setting("token_keep_rate", RATES, dynamic=False)
    assert [graphs for graphs, _, _ in runs] == GRAPHS_PER_RATE
    for _, compiled, eager in runs:
        torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


def test_keep_rate_compiles_at_most_once_per_distinct_rate_with_default_dynamic():
    """Default `torch.compile` (automatic dynamic): from the second distinct rate dynamo traces the rate as a symbolic
    float, which the config's rate check must accept (it once called `math.isfinite`, which dynamo cannot trace:
    a graph break and a recompile at every switch). A graph may then serve several rates; none is compiled twice."""
    runs = compiled_logits_per_setting("token_keep_rate", RATES)
    graphs = [count for count, _, _ in runs]
    seen: set[float] = set()
    for index, (rate, count) in enumerate(zip(RATES, graphs, strict=True)):
        if rate in seen:
            assert count == graphs[index - 1], f"rate {rate} was compiled again: {graphs}"
        seen.add(rate)
        assert count <= len(seen), graphs
    for _, compiled, eager in runs:
        torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-6)


def test_compiled_adaptive_selector_matches_eager_on_batches_with_different_counts():
    """Whether the per-image counts are read on the host (graph breaks, new graphs for new padded widths) or padded
    to the whole patch axis inside one graph, every batch must get eager's logits (padding changes no result)."""
    model = sharpen_attention(tiny_model(**ADAPTIVE))
    compiled = torch.compile(model, backend="eager")
    for seed in range(1, 5):
        pixel_values = images(seed=seed)
        torch.testing.assert_close(logits(compiled, pixel_values), logits(model, pixel_values), rtol=0, atol=1e-6)
