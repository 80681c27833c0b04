"""Analytic forward FLOPs of a TriLevel ViT for a config, so every measured speedup can stand beside its limit.

FLOPs are counted as `torch.utils.flop_counter.FlopCounterMode` counts them: 2 per multiply-accumulate of every
matmul and convolution; normalisations, activations and softmax are not counted. Masked attention is counted at
its dense cost because the kernels compute the masked entries too; the extra work of a pruning layer (the
selector's scores, fusion, and the connection scores behind the attention mask) is counted where it happens.

Layer sizes come from `config.layer_num_attention_heads(i)` / `config.layer_intermediate_size(i)`, so slimmed models
with fewer heads or MLP neurons in some layers are counted as built.

Token merging (`config.token_merge_r`): the patch tokens of every layer come from the model's own schedule
(`hf_trilevel.modeling.token_merging.layer_token_counts`: attention, then the pruning layer's drop, then the merge),
so a layer's MLP and every later layer are counted at the merged width. The bipartite matching of a merging layer is
counted where it happens (`matching_flops`); averaging, scattering and the proportional-attention mask are not
matmuls. The model's `kept_token_counts` are the tokens alive after a pruning layer's drop and merge.

Selectors (`config.token_selector`):
- `"class_attention"` and `"learned"` keep the same count in every image, so a config fixes the FLOPs. Both score
  with the class token's query against every key; `"learned"` adds its scorer (`learned_scorer_flops`) on every
  current patch token of a pruning layer.
- `"adaptive"` keeps a per-image count, known only after a forward. `measured_flops(config, kept_token_counts)` takes
  the counts a model returned (`output_kept_token_indices=True`) and averages the FLOPs per image, each image
  counted with its own counts (attention is quadratic in the tokens, so averaging counts first would undercount).
  Padding is not counted: the figure is what each image needs alone, the limit padding and bucketing approach. From a
  config alone (`forward_flops`), `"adaptive"` is counted at its upper bound, the fixed-rate schedule.
"""

import numbers
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..evaluation.patches import num_patches
from ..modeling.configuration_trilevel_vit import TriLevelViTConfig
from ..modeling.token_merging import LayerTokens, check_merge_r, layer_token_counts
from ..modeling.token_reduction import num_kept_tokens
from ..modeling.token_selectors import learned_scorer_flops
from ..modeling.value_checks import as_pair


@dataclass(frozen=True)
class LayerCost:
    """Tokens seen by one layer's attention block and MLP, and the layer's forward FLOPs per image."""

    attention_tokens: int
    mlp_tokens: int
    flops: int


@dataclass(frozen=True)
class MeasuredFlops:
    """Forward FLOPs per image from the token counts a model kept, against the dense model of the same shape.

    Attributes:
        flops_per_image: mean over the images of each image's forward FLOPs at its own counts.
        dense_flops_per_image: the same shape with every token kept and dense attention (transformers' ViT).
        mean_kept_tokens: patch tokens alive after each pruning layer, mean over the images.
        min_kept_tokens, max_kept_tokens: the fewest and most patch tokens an image kept after each pruning layer.
        num_images: how many images the counts cover.
    """

    flops_per_image: float
    dense_flops_per_image: int
    mean_kept_tokens: tuple[float, ...]
    min_kept_tokens: tuple[int, ...]
    max_kept_tokens: tuple[int, ...]
    num_images: int

    @property
    def speedup_limit(self) -> float:
        """Dense FLOPs over the measured mean FLOPs: the speedup if time followed FLOPs."""
        return self.dense_flops_per_image / self.flops_per_image


def _selector_scores(config: TriLevelViTConfig, patches: int) -> bool:
    """Whether a pruning layer's selector computes scores for an image with `patches` current patch tokens.

    Fixed-count selectors skip scoring when their count keeps every patch; `"adaptive"` always scores, since its
    count follows from the scores.
    """
    return config.token_selector == "adaptive" or num_kept_tokens(patches, config.token_keep_rate) < patches


def _selector_flops(config: TriLevelViTConfig, tokens: int, patches: int, inner: int) -> int:
    """A selector's scoring work at one pruning layer, per image, when it scores."""
    flops = 2 * max(prefix_tokens(config), 1) * tokens * inner  # each prefix query (or the mean one) against every key
    if config.uses_learned_scores():
        flops += patches * learned_scorer_flops(config)
    return flops


def prefix_tokens(config: TriLevelViTConfig) -> int:
    """Tokens before the patches that every layer keeps (ViT's class token: 1; DeiT's class and distillation: 2)."""
    return getattr(config, "num_prefix_tokens", 1)


def classifier_flops(config: TriLevelViTConfig) -> int:
    """The linear heads, per image: one per prefix token (ViT's class token; DeiT's class and distillation heads), or
    one on pooled tokens without a prefix (SigLIP; CLIP's head reads the patch mean, also one); DINOv2's head reads the
    class token and the patch mean, twice as wide."""
    width = config.hidden_size * (2 if config.model_type == "trilevel_dinov2" else 1)
    return 2 * width * config.num_labels * max(prefix_tokens(config), 1)


def pooling_head_flops(config: TriLevelViTConfig, tokens: int) -> int:
    """SigLIP's attention-pooling head (`vision_use_head`), per image, over the `tokens` the last layer returns: the
    probe's query and output projections, key and value projections of every token, the probe's scores and weighted
    values, and the MLP on the one pooled token. 0 for a family without one (CLIP's pooler is a norm)."""
    if not getattr(config, "vision_use_head", False):
        return 0
    hidden = config.hidden_size
    projections = 2 * hidden * hidden * 2 + 2 * tokens * hidden * 2 * hidden  # q and out (one token); k and v
    return projections + 2 * 2 * tokens * hidden + 2 * 2 * hidden * config.intermediate_size


def matching_flops(num_patches: int, head_size: int) -> int:
    """Bipartite matching of one merging layer, per image: `[set A, head_size] @ [head_size, set B]` cosine
    similarities of the head-averaged keys, set A holding `ceil(n / 2)` of the `n` current patch tokens and set B
    the other `floor(n / 2)`."""
    return 2 * ((num_patches + 1) // 2) * (num_patches // 2) * head_size


def merge_r_per_layer(config: TriLevelViTConfig) -> list[int]:
    """`config.token_merge_r` as one entry per layer (0 where a layer does not merge, and for configs without it)."""
    return check_merge_r(getattr(config, "token_merge_r", 0), config.num_hidden_layers)


def layer_tokens(config: TriLevelViTConfig, kept_counts: Sequence[int] | None = None) -> list[LayerTokens]:
    """Patch tokens each layer sees (entering attention, after its drop, after its merge) for one image.

    Args:
        kept_counts: patch tokens alive after each pruning layer's drop and merge (one int per entry of
            `config.token_prune_layers`), e.g. one column of a model's `kept_token_counts`. Default: the schedule
            the keep rate and `token_merge_r` fix (for `"adaptive"`, its upper bound).
    """
    patches, merge_r = num_patches(config.image_size, config.patch_size), merge_r_per_layer(config)
    prune_layers = list(config.token_prune_layers)
    if kept_counts is None:
        after_drop = config.token_keep_rate
    else:
        counts = _checked_counts(config, [[count] for count in kept_counts])[0]
        after_drop = [count + merge_r[layer] for count, layer in zip(counts, prune_layers, strict=True)]
    return layer_token_counts(patches, config.num_hidden_layers, prune_layers, after_drop, merge_r)


def layer_costs(config: TriLevelViTConfig, kept_counts: Sequence[int] | None = None) -> list[LayerCost]:
    """Per-layer token counts and FLOPs for one image.

    Args:
        config: the model's config, at the keep rates, merge counts and selector to count.
        kept_counts: patch tokens the image keeps after each pruning layer's drop and merge (see `layer_tokens`).
            Default: the schedule the config fixes (for `"adaptive"`, its upper bound).
    """
    hidden, head_size = config.hidden_size, config.hidden_size // config.num_attention_heads
    merge_r, fused, costs, prefix = merge_r_per_layer(config), 0, [], prefix_tokens(config)
    for layer, patches in enumerate(layer_tokens(config, kept_counts)):
        inner = config.layer_num_attention_heads(layer) * head_size  # width of q, k, v across the heads
        tokens = prefix + patches.attention + fused
        flops = 2 * tokens * hidden * inner * 4  # q, k, v and output projections
        flops += 2 * 2 * tokens * tokens * inner  # scores and weighted values, all heads together
        if layer in config.token_prune_layers:
            if _selector_scores(config, patches.attention):
                flops += _selector_flops(config, tokens, patches.attention, inner)
            if patches.after_drop < patches.attention and config.token_fusion:
                flops += 2 * (tokens - prefix) * hidden  # score-weighted sum of the non-kept tokens
                fused = 1
            if config.attention_keep_rate < 1.0:
                flops += 2 * (prefix + patches.after_drop) * tokens * inner  # kept queries against the layer's keys
        if merge_r[layer]:
            flops += matching_flops(patches.after_drop, head_size)
        mlp_tokens = prefix + patches.after_merge + fused
        flops += 2 * 2 * mlp_tokens * hidden * config.layer_intermediate_size(layer)
        costs.append(LayerCost(tokens, mlp_tokens, flops))
    return costs


def forward_flops(
    config: TriLevelViTConfig,
    batch_size: int = 1,
    with_classifier: bool = True,
    kept_counts: Sequence[int] | None = None,
) -> int:
    """Total forward FLOPs: patch embedding, every layer, a pooling head (`pooling_head_flops`) and (optionally) the
    linear classifier heads (`classifier_flops`).

    Every image is counted at the same `kept_counts` (see `layer_costs`); for per-image counts use `measured_flops`.
    """
    patches, (patch_height, patch_width) = num_patches(config.image_size, config.patch_size), as_pair(config.patch_size)
    embedding = 2 * patches * config.num_channels * patch_height * patch_width * config.hidden_size
    classifier = classifier_flops(config) if with_classifier else 0
    costs = layer_costs(config, kept_counts)
    head = pooling_head_flops(config, costs[-1].mlp_tokens)
    return batch_size * (embedding + sum(cost.flops for cost in costs) + head + classifier)


def dense_config(config: TriLevelViTConfig) -> TriLevelViTConfig:
    """The same shape with every token kept, dense attention, no merging and no selector work: what transformers'
    ViT computes."""
    dense = config.to_dict()
    dense.update(token_keep_rate=1.0, attention_keep_rate=1.0, token_selector="class_attention", token_merge_r=0)
    dense.update(token_importance="class_attention", token_keep_mass=1.0)
    return type(config)(**dense)  # the config's own class: a family's prefix tokens and heads count alike


def full_width_config(config: TriLevelViTConfig) -> TriLevelViTConfig:
    """The full-width shape a slimmed config was cut from: `num_attention_heads` heads and `intermediate_size` MLP
    neurons in every layer (the per-layer lists dropped; a uniform config keeps its shape). A slimmed model is timed
    against this dense ViT, so its FLOPs limit must count the removed heads and neurons as saved work too."""
    full = config.to_dict()
    full.update(num_attention_heads_per_layer=None, intermediate_size_per_layer=None)
    return type(config)(**full)


def flops_speedup_limit(config: TriLevelViTConfig, kept_counts: Sequence[int] | None = None) -> float:
    """Dense FLOPs divided by sparse FLOPs at the config's keep rates: the speedup if time followed FLOPs."""
    return forward_flops(dense_config(config)) / forward_flops(config, kept_counts=kept_counts)


def measured_flops(
    config: TriLevelViTConfig,
    kept_token_counts: Sequence[torch.Tensor | Sequence[int]],
    with_classifier: bool = True,
) -> MeasuredFlops:
    """Mean forward FLOPs per image from the counts a forward kept, and the speedup limit against dense.

    Args:
        config: the config the counts were measured with (keep rates, selector, fusion, attention sparsity).
        kept_token_counts: one `[batch]` tensor (or list of ints) per pruning layer, in `config.token_prune_layers`
            order: the `kept_token_counts` output of a TriLevel model (tokens alive after the layer's drop and, with
            `token_merge_r`, its merge). Any selector: fixed-count ones give equal counts, and then
            `flops_per_image == forward_flops(config)`.
        with_classifier: count the linear classifier on the class token (as `forward_flops` does).

    Each image is counted with its own counts, then the FLOPs are averaged; padding (the padded width of a batch with
    per-image counts) is not counted.
    """
    per_image = _checked_counts(config, kept_token_counts)
    frequency = Counter(per_image)
    total = sum(count * forward_flops(config, 1, with_classifier, kept) for kept, count in frequency.items())
    columns = list(zip(*per_image, strict=True)) if per_image[0] else []
    return MeasuredFlops(
        flops_per_image=total / len(per_image),
        dense_flops_per_image=forward_flops(dense_config(config), 1, with_classifier),
        mean_kept_tokens=tuple(sum(column) / len(column) for column in columns),
        min_kept_tokens=tuple(min(column) for column in columns),
        max_kept_tokens=tuple(max(column) for column in columns),
        num_images=len(per_image),
    )


def _checked_counts(config: TriLevelViTConfig, kept_token_counts: Sequence) -> list[tuple[int, ...]]:
    """Per-image tuples of kept counts (one entry per pruning layer), or a `ValueError` naming what is wrong.

    `kept_token_counts` is layer-major (one sequence of per-image counts per pruning layer), as the model returns it.
    """
    layers = len(config.token_prune_layers)
    if isinstance(kept_token_counts, torch.Tensor) and kept_token_counts.dim() == 1 and layers == 1:
        kept_token_counts = [kept_token_counts]
    if isinstance(kept_token_counts, (str, bytes)) or len(kept_token_counts) != layers:
        raise ValueError(
            f"`kept_token_counts` must hold one entry per pruning layer ({layers}, `token_prune_layers="
            f"{list(config.token_prune_layers)}`), got {_describe(kept_token_counts)}."
        )
    columns = []
    for index, counts in enumerate(kept_token_counts):
        if isinstance(counts, torch.Tensor):
            if counts.dim() != 1 or counts.is_floating_point() or counts.is_complex():
                raise ValueError(
                    f"`kept_token_counts[{index}]` must be a 1-D integer tensor of per-image counts, got "
                    f"{_describe(counts)}."
                )
            counts = counts.tolist()
        elif isinstance(counts, numbers.Integral):
            counts = [counts]
        counts = [_as_int(count) for count in counts]
        if None in counts:
            raise ValueError(f"`kept_token_counts[{index}]` must hold integers, got {kept_token_counts[index]!r}.")
        columns.append(counts)
    batch = {len(column) for column in columns}
    if layers and (len(batch) != 1 or 0 in batch):
        raise ValueError(
            f"`kept_token_counts` must hold the same number (>= 1) of images for every pruning layer, got "
            f"{[len(column) for column in columns]}."
        )
    rows = [tuple(row) for row in zip(*columns, strict=True)] if layers else [()]
    checked = set()
    for image, row in enumerate(rows):
        if row not in checked:
            _check_row(config, row, image)
            checked.add(row)
    return rows


def _check_row(config: TriLevelViTConfig, row: tuple[int, ...], image: int) -> None:
    """One image's counts must fit the tokens entering each pruning layer (after the merges of the layers before),
    less the tokens that layer merges; a merging layer must keep as many as it merges (it merges at most half)."""
    entering, merge_r = num_patches(config.image_size, config.patch_size), merge_r_per_layer(config)
    counts = iter(enumerate(row))
    for layer in range(config.num_hidden_layers):
        r = merge_r[layer]
        if layer not in config.token_prune_layers:
            entering = max(1, entering - r)
            continue
        index, count = next(counts)
        low, high = max(1, r), entering - r
        if not low <= count <= high:
            why = (
                f"layer {layer} merges {r} of the {entering} patch tokens it entered with, and at most half of what "
                "its drop kept"
                if r
                else f"an image keeps at least one and at most the {entering} patch tokens it entered the pruning "
                "layer with"
            )
            raise ValueError(f"`kept_token_counts[{index}][{image}]` must be in [{low}, {high}] ({why}), got {count}.")
        entering = count


def _as_int(value: object) -> int | None:
    """An integer count (Python, NumPy or a 0-d integer tensor) as `int`, or None for anything else."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return repr(value)
