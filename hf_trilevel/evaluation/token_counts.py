"""The patch tokens each image keeps: measured over a data set, or fixed by the schedule, and what they cost.

A script reports, after its evaluation, the mean tokens kept after each pruning layer and the FLOPs those counts
give (`kept_token_metrics`); model cards quote them. With the `"adaptive"` selector the counts differ per image and
must be measured (`collect_kept_token_counts`); fixed-count selectors give them from the keep-rate schedule
(`fixed_kept_token_counts`) without a pass over the data.
"""

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext

import torch

from ..modeling.configuration_trilevel_vit import TriLevelViTConfig
from .flops import layer_tokens, measured_flops

# Metric of the mean patch tokens an image keeps after pruning layer `layer`'s drop and merge (`kept_token_metrics`
# writes it, with Trainer's `eval_` prefix in results files; model cards read it back).
KEPT_TOKENS_METRIC = "kept_tokens_layer_{layer}"
FIXED_COUNT_SELECTORS = ("class_attention", "learned")  # every image keeps `ceil(n * token_keep_rate)`, less merges


def kept_token_counts(outputs) -> torch.Tensor:
    """`[batch, pruning layers]` int64: valid patch tokens each image kept after each pruning layer.

    From the model's `kept_token_counts`; a model output without them (an older checkpoint's remote code) gives the
    counts from `kept_token_indices`, whose padded slots are `-1`.
    """
    counts = getattr(outputs, "kept_token_counts", None)
    if counts is None:
        counts = tuple((indices >= 0).sum(dim=1) for indices in outputs.kept_token_indices)
    return torch.stack([count.to(torch.int64) for count in counts], dim=1)


def fixed_kept_token_counts(config: TriLevelViTConfig) -> torch.Tensor | None:
    """`[1, pruning layers]` int64: the counts every image keeps under a fixed-count selector (`"class_attention"`,
    `"learned"`), from the keep rate and `token_merge_r` (tokens alive after each pruning layer's drop and merge, as
    the model's `kept_token_counts`); None when counts may differ per image (`"adaptive"`, a custom selector) and must
    be measured, or without pruning layers.

    Lets a script report the same figures for every selector without an extra pass over its data where the config
    already fixes them.
    """
    if getattr(config, "token_selector", "class_attention") not in FIXED_COUNT_SELECTORS:
        return None
    prune_layers = config.token_prune_layers
    if not prune_layers:
        return None
    counts = [tokens.after_merge for layer, tokens in enumerate(layer_tokens(config)) if layer in prune_layers]
    return torch.tensor([counts], dtype=torch.int64)


def collect_kept_token_counts(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    context: Callable[[], AbstractContextManager] | None = None,
) -> torch.Tensor | None:
    """`[examples, pruning layers]` int64 (on the CPU): the patch tokens each image of `batches` (dicts with
    `pixel_values`) kept after each pruning layer, from eval-mode forwards; None without pruning layers or batches.

    `gather` collects each batch's counts over processes (e.g. `accelerator.gather_for_metrics`, which drops the
    examples accelerate repeats to fill the last round); `context` makes the context each forward runs in (e.g. the
    Trainer's autocast, so the counts are those of its evaluation).
    """
    if not model.config.token_prune_layers:
        return None
    was_training, collected = model.training, []
    model.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                with context() if context is not None else nullcontext():
                    outputs = model(pixel_values=batch["pixel_values"], output_kept_token_indices=True)
                counts = kept_token_counts(outputs)
                collected.append((gather(counts) if gather is not None else counts).cpu())
    finally:
        model.train(was_training)
    return torch.cat(collected) if collected else None


def kept_token_metrics(config: TriLevelViTConfig, counts: torch.Tensor | None, prefix: str = "eval_") -> dict:
    """What measured counts (`collect_kept_token_counts`) say, for results files and model cards.

    - `kept_tokens_layer_<i>`: the mean patch tokens an image keeps after pruning layer `i` (after its drop and, with
      `token_merge_r`, its merge). With the `"adaptive"` selector the counts differ per image, so only a measurement
      gives them; fixed selectors give the schedule.
    - `measured_gflops_per_image` and `measured_flops_speedup_limit`: forward FLOPs per image with each image counted
      at its own counts, then averaged (`hf_trilevel.evaluation.flops.measured_flops`), and dense FLOPs over them. For
      fixed
      selectors they equal the config's figures; for `"adaptive"` the config's are only the upper bound.

    Keys carry `prefix` (Trainer's `eval_`); empty when `counts` is None or holds no image.
    """
    if counts is None or counts.shape[0] == 0:
        return {}
    layers = list(config.token_prune_layers)
    means = counts.double().mean(dim=0).tolist()
    metrics = {prefix + KEPT_TOKENS_METRIC.format(layer=layer): mean for layer, mean in zip(layers, means, strict=True)}
    flops = measured_flops(config, list(counts.T))
    metrics[prefix + "measured_gflops_per_image"] = flops.flops_per_image / 1e9
    metrics[prefix + "measured_flops_speedup_limit"] = flops.speedup_limit
    return metrics


__all__ = [
    "FIXED_COUNT_SELECTORS",
    "KEPT_TOKENS_METRIC",
    "collect_kept_token_counts",
    "fixed_kept_token_counts",
    "kept_token_counts",
    "kept_token_metrics",
]
