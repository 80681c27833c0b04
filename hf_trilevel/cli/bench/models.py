"""The models a benchmark times: dense ViT and one TriLevel ViT per token selector, all with the same weights.

A measured difference must be the cost of sparsity and nothing else, so every TriLevel model takes the dense
model's (or a saved folder's) weights (`load_shared_weights`); the only extra a model may hold is a learned
selector's scorer. The operating point a row measures is switched on a built model (`switch_setting`), untimed.

A physically slimmed shape (`Setting.head_density` / `neuron_density` below 1) is its own model, built with
per-layer sizes (`num_attention_heads_per_layer`, `intermediate_size_per_layer`) and holding the first heads and
MLP neurons of its selector's full-width weights (`slimmed_model`), cut by `hf_trilevel.slim` itself.
"""

import copy
from collections.abc import Callable

import torch
from transformers import ViTForImageClassification

from ...modeling.configuration_trilevel_vit import TriLevelViTConfig
from ...modeling.modeling_trilevel_vit import TriLevelViTForImageClassification
from ...weight_sparsity.slimming import slim
from ...weight_sparsity.structured_units import apply_unit_masks, unit_layers, zero_output_sides
from ..errors import CommandError
from .families import FAMILIES
from .options import ModelShape, RunTarget
from .settings import Setting
from .slimmed_shapes import slimmed_size

# Fields a saved folder's config passes on to the benchmark's models (its activation, norms, selector details).
CHECKPOINT_VIT_FIELDS = ("hidden_act", "layer_norm_eps", "qkv_bias")
CHECKPOINT_TRILEVEL_FIELDS = ("token_importance", "token_min_keep_rate", "token_count_buckets")


def switch_setting(model: TriLevelViTForImageClassification, setting: Setting) -> Callable[[], None]:
    """A call that puts `model` at `setting`; run untimed before each timed call of that setting.

    The selector is fixed when a model is built (a learned one owns weights), so each selector has its own model;
    the keep rates, merge count, fusion and the adaptive mass are read by every forward and switch here.
    """

    def apply() -> None:
        model.set_keep_rates(setting.token_keep_rate, setting.attention_keep_rate, setting.token_merge_r)
        model.config.token_fusion = setting.token_fusion
        if setting.token_selector == "adaptive":
            model.config.token_keep_mass = setting.token_keep_mass

    return apply


def compile_models(target: RunTarget, num_settings: int, *models: torch.nn.Module) -> list:
    """`torch.compile` each model if asked, allowing one graph per setting.

    The TriLevel model's rates are config values that dynamo specialises on, so each setting is its own graph;
    beyond `recompile_limit` (8 by default) dynamo would silently fall back to eager and time that instead.
    """
    if not target.compile:
        return list(models)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, num_settings + 2)
    return [torch.compile(model) for model in models]


def trilevel_config(shape: ModelShape, setting: Setting | None = None, **extra) -> TriLevelViTConfig:
    """The TriLevel config of `shape` at `setting` (default: everything off, class attention)."""
    setting = setting or Setting()
    layers = list(shape.token_prune_layers) if shape.token_prune_layers else None
    chosen = FAMILIES[shape.family]
    return chosen.trilevel_config(
        **chosen.config_kwargs(shape), token_prune_layers=layers, **setting.config_kwargs(), **extra
    )


def check_setting_configs(shape: ModelShape, chosen: list[Setting]) -> None:
    """Build each row's config (cheap, no model) before any model is built, so a combination the model refuses (a
    merge count a layer has too few tokens for at a keep rate) is a `CommandError` naming the flags."""
    for setting in chosen:
        try:
            trilevel_config(shape, setting)
        except ValueError as error:
            flags = f"--keep-rates {setting.token_keep_rate:g}"
            flags += f" with --token-merge-r {setting.token_merge_r}" if setting.token_merge_r else ""
            raise CommandError(f"{flags} (row {setting.name!r}): {error}") from None


def load_shared_weights(trilevel: torch.nn.Module, state_dict: dict) -> None:
    """Load another model's weights; only token-scorer weights (`.token_selector.`) may be missing or left over.

    A scorer new to the source (a dense model, or a class-attention checkpoint) keeps its own initialisation, which
    starts it at class-attention ranking; a source's scorer that the target has no place for is dropped on purpose
    (the target ranks by class attention). Any other missing or unexpected weight would make the comparison wrong.
    """
    missing, unexpected = trilevel.load_state_dict(state_dict, strict=False)
    missing = [key for key in missing if ".token_selector." not in key]
    unexpected = [key for key in unexpected if ".token_selector." not in key]
    if missing or unexpected:
        raise RuntimeError(f"weights do not match the model: missing {missing}, unexpected {unexpected}.")


def build_models_by_selector(
    shape: ModelShape, target: RunTarget, selectors: list[str], cast_weights: bool = True, **config_extra
) -> tuple[ViTForImageClassification, dict[str, TriLevelViTForImageClassification]]:
    """Dense ViT and one TriLevel ViT per selector, all with identical weights, on the target device.

    Weights are random (seed 0) or, with `shape.checkpoint`, the saved folder's: it is loaded once as saved, and
    each selector's model takes its weights (a learned scorer it holds goes to the selectors that have one). Weights
    are cast to the target dtype for inference (`cast_weights`), kept in float32 for training under autocast.
    """
    torch.manual_seed(0)
    backend = {"attn_implementation": target.attn_implementation}
    chosen = FAMILIES[shape.family]
    if shape.checkpoint is None:
        dense = chosen.dense_model(chosen.dense_config(**chosen.config_kwargs(shape), **backend))
        source, base = dense.state_dict(), {}
    else:
        saved = chosen.trilevel_model.from_pretrained(shape.checkpoint)
        source = saved.state_dict()
        # The folder's activation, norms and selector details carry over; sparsity is set per row.
        shared = {name: getattr(saved.config, name) for name in CHECKPOINT_VIT_FIELDS}
        dense = chosen.dense_model(chosen.dense_config(**chosen.config_kwargs(shape), **shared, **backend))
        load_shared_weights(dense, source)
        base = shared | {name: getattr(saved.config, name) for name in CHECKPOINT_TRILEVEL_FIELDS}
    trilevel = {}
    for selector in selectors:
        config = trilevel_config(shape, Setting(token_selector=selector), **backend, **{**base, **config_extra})
        trilevel[selector] = chosen.trilevel_model(config)
        load_shared_weights(trilevel[selector], source)
    dtype = target.dtype if cast_weights else torch.float32
    return dense.to(target.device, dtype), {name: model.to(target.device, dtype) for name, model in trilevel.items()}


def slimmed_model(
    model: TriLevelViTForImageClassification, head_density: float, neuron_density: float
) -> TriLevelViTForImageClassification:
    """`model` with the first `slimmed_size(density, ...)` heads and MLP neurons of every layer kept, the rest removed.

    Built the way a trained checkpoint is: the other units are zeroed as structured sparsity leaves them
    (`structured_units.apply_unit_masks`, `zero_output_sides`) and `hf_trilevel.slim` removes them, so the timed
    model is exactly what `slim` makes. Same dtype, device and mode as `model`; a copy when nothing is removed.
    """
    pruned = copy.deepcopy(model)
    removed = False
    for layer in unit_layers(pruned):
        heads = torch.arange(layer.num_heads) < slimmed_size(head_density, layer.num_heads)
        neurons = torch.arange(layer.num_neurons) < slimmed_size(neuron_density, layer.num_neurons)
        apply_unit_masks(layer, heads, neurons)
        zero_output_sides(layer, heads, neurons)
        removed = removed or not (heads.all() and neurons.all())
    return slim(pruned) if removed else pruned


__all__ = ["build_models_by_selector", "check_setting_configs", "compile_models", "load_shared_weights",
           "slimmed_model", "switch_setting", "trilevel_config"]  # fmt: skip
