"""Analytic forward FLOPs of a TriLevel ViT for a config, so every measured speedup can stand beside its limit.

FLOPs are counted as `torch.utils.flop_counter.FlopCounterMode` counts them: 2 per multiply-accumulate of every
matmul and convolution; normalisations, activations and softmax are not counted. Masked attention is counted at
its dense cost because the kernels compute the masked entries too; the extra work of a pruning layer (class-token
scores, fusion, and the connection scores behind the attention mask) is counted where it happens.

Layer sizes come from `config.layer_num_attention_heads(i)` / `config.layer_intermediate_size(i)`, so slimmed models
with fewer heads or MLP neurons in some layers are counted as built. The count assumes the built-in
`"class_attention"` selector (the default); a learned selector's own work is not included.
"""

from dataclasses import dataclass

from .configuration_trilevel_vit import TriLevelViTConfig
from .token_reduction import token_schedule
from .value_checks import as_pair
from .value_checks import num_patches as _num_patches


@dataclass(frozen=True)
class LayerCost:
    """Tokens seen by one layer's attention block and MLP, and the layer's forward FLOPs per image."""

    attention_tokens: int
    mlp_tokens: int
    flops: int


def num_patches(config: TriLevelViTConfig) -> int:
    """Patch tokens of one image at the config's `image_size` (the sequence length without the class token)."""
    return _num_patches(config.image_size, config.patch_size)


def layer_costs(config: TriLevelViTConfig) -> list[LayerCost]:
    """Per-layer token counts and FLOPs for one image at the config's current keep rates."""
    hidden, head_size = config.hidden_size, config.hidden_size // config.num_attention_heads
    patches, fused = num_patches(config), 0
    schedule = iter(token_schedule(patches, config.token_keep_rate, len(config.token_prune_layers)))
    costs = []
    for layer in range(config.num_hidden_layers):
        inner = config.layer_num_attention_heads(layer) * head_size  # width of q, k, v across the heads
        tokens = 1 + patches + fused
        flops = 2 * tokens * hidden * inner * 4  # q, k, v and output projections
        flops += 2 * 2 * tokens * tokens * inner  # scores and weighted values, all heads together
        if layer in config.token_prune_layers:
            kept = next(schedule)
            if kept < patches:
                flops += 2 * tokens * inner  # class query against every key
                if config.token_fusion:
                    flops += 2 * (tokens - 1) * hidden  # score-weighted sum of the non-kept tokens
                    fused = 1
                patches = kept
            if config.attention_keep_rate < 1.0:
                flops += 2 * (1 + patches) * tokens * inner  # kept queries against the layer's keys
        mlp_tokens = 1 + patches + fused
        flops += 2 * 2 * mlp_tokens * hidden * config.layer_intermediate_size(layer)
        costs.append(LayerCost(tokens, mlp_tokens, flops))
    return costs


def forward_flops(config: TriLevelViTConfig, batch_size: int = 1, with_classifier: bool = True) -> int:
    """Total forward FLOPs: patch embedding, every layer, and (optionally) the linear classifier on the class token."""
    patch_height, patch_width = as_pair(config.patch_size)
    embedding = 2 * num_patches(config) * config.num_channels * patch_height * patch_width * config.hidden_size
    classifier = 2 * config.hidden_size * config.num_labels if with_classifier else 0
    return batch_size * (embedding + sum(cost.flops for cost in layer_costs(config)) + classifier)


def flops_speedup_limit(config: TriLevelViTConfig) -> float:
    """Dense FLOPs divided by sparse FLOPs at the config's keep rates: the speedup if time followed FLOPs."""
    dense = config.to_dict()
    dense.update(token_keep_rate=1.0, attention_keep_rate=1.0)
    return forward_flops(TriLevelViTConfig(**dense)) / forward_flops(config)
