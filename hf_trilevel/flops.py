"""Analytic forward FLOPs of a TriLevel ViT for a config, so every measured speedup can stand beside its limit.

FLOPs are counted as `torch.utils.flop_counter.FlopCounterMode` counts them: 2 per multiply-accumulate of every
matmul and convolution; normalisations, activations and softmax are not counted. Masked attention is counted at
its dense cost because the kernels compute the masked entries too; the extra work of a pruning layer (class-token
scores, fusion, and the connection scores behind the attention mask) is counted where it happens.
"""

from dataclasses import dataclass

from .configuration_trilevel_vit import TriLevelViTConfig
from .token_reduction import num_kept_tokens


@dataclass(frozen=True)
class LayerCost:
    """Tokens seen by one layer's attention block and MLP, and the layer's forward FLOPs per image."""

    attention_tokens: int
    mlp_tokens: int
    flops: int


def _grid(value: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def num_patches(config: TriLevelViTConfig) -> int:
    (height, width), (patch_height, patch_width) = _grid(config.image_size), _grid(config.patch_size)
    return (height // patch_height) * (width // patch_width)


def layer_costs(config: TriLevelViTConfig) -> list[LayerCost]:
    """Per-layer token counts and FLOPs for one image at the config's current keep rates."""
    hidden, intermediate = config.hidden_size, config.intermediate_size
    patches, fused = num_patches(config), 0
    costs = []
    for layer in range(config.num_hidden_layers):
        tokens = 1 + patches + fused
        flops = 2 * tokens * hidden * hidden * 4  # q, k, v and output projections
        flops += 2 * 2 * tokens * tokens * hidden  # scores and weighted values, all heads together
        if layer in config.token_prune_layers:
            kept = num_kept_tokens(patches, config.token_keep_rate)
            if kept < patches:
                flops += 2 * tokens * hidden  # class query against every key
                if config.token_fusion:
                    flops += 2 * (tokens - 1) * hidden  # attention-weighted sum of the non-kept tokens
                    fused = 1
                patches = kept
            if config.attention_keep_rate < 1.0:
                flops += 2 * (1 + patches) * tokens * hidden  # kept queries against the layer's keys
        mlp_tokens = 1 + patches + fused
        flops += 2 * 2 * mlp_tokens * hidden * intermediate
        costs.append(LayerCost(tokens, mlp_tokens, flops))
    return costs


def forward_flops(config: TriLevelViTConfig, batch_size: int = 1, with_classifier: bool = True) -> int:
    """Total forward FLOPs: patch embedding, every layer, and (optionally) the linear classifier on the class token."""
    (patch_height, patch_width) = _grid(config.patch_size)
    embedding = 2 * num_patches(config) * config.num_channels * patch_height * patch_width * config.hidden_size
    classifier = 2 * config.hidden_size * config.num_labels if with_classifier else 0
    return batch_size * (embedding + sum(cost.flops for cost in layer_costs(config)) + classifier)


def flops_speedup_limit(config: TriLevelViTConfig) -> float:
    """Dense FLOPs divided by sparse FLOPs at the config's keep rates: the speedup if time followed FLOPs."""
    dense = config.to_dict()
    dense.update(token_keep_rate=1.0, attention_keep_rate=1.0)
    return forward_flops(TriLevelViTConfig(**dense)) / forward_flops(config)
