"""A checkpoint's weight files against the model its config describes, checked from the files' headers before any
weight loads: cut-short or unreadable files, shapes that differ (named by the folder's and the model's names), and
what a mismatch most likely means (a slimmed folder whose config lost its per-layer sizes, a classifier for other
labels). Every family's names come from its own classifier (`FAMILY_CLASSES`), built on the meta device.
"""

import copy
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.conversion_mapping import get_checkpoint_conversion_mapping

from ..modeling import family_of_config
from ..modeling.configuration_trilevel_vit import PER_LAYER_FIELDS, TriLevelViTConfig
from ..training.weight_files import WeightFileError, folder_weight_shapes

CLASSIFIER_PREFIX = "classifier."  # ViT's head; a family's heads are whatever lies outside its base model


Mismatch = tuple[str, tuple[int, ...], tuple[int, ...], str]  # model's name, saved shape, model's shape, saved name


def meta_model(config: TriLevelViTConfig) -> PreTrainedModel:
    """The image classifier of `config`'s family, built on the meta device (no memory, no initialisation): its
    weight names and shapes are what a checkpoint's are compared with."""
    with torch.device("meta"):
        return family_of_config(config).classifier_class(copy.deepcopy(config))


def head_prefixes(model: PreTrainedModel) -> tuple[str, ...]:
    """`('classifier.',)`, DeiT's `('cls_classifier.', 'distillation_classifier.')`: the name prefixes of the weights
    outside the base model, the heads `ignore_mismatched_sizes` may replace."""
    names = {name.split(".")[0] for name in model.state_dict() if not name.startswith(f"{model.base_model_prefix}.")}
    return tuple(f"{name}." for name in sorted(names))


def is_head_weight(name: str, config: TriLevelViTConfig) -> bool:
    """Whether the model's weight `name` belongs to a classifier head of `config`'s family, not to its base model."""
    return not name.startswith(f"{family_of_config(config).classifier_class.base_model_prefix}.")


def by_model_name(
    saved_shapes: Mapping[str, tuple[int, ...]],
    model_type: str,
    prefix: str = "vit",
    heads: tuple[str, ...] = (CLASSIFIER_PREFIX,),
) -> dict:
    """`{model's name: (saved name, shape)}` of a checkpoint's weights: v4 names renamed by transformers' conversion
    mapping for `model_type`, a base model's save (no `prefix.`) given the prefix. `heads` are the name prefixes of
    the weights outside the base model (`head_prefixes`), which keep their names."""
    renamings = get_checkpoint_conversion_mapping(model_type) or []
    found = {}
    for saved_name, shape in saved_shapes.items():
        key = saved_name
        for renaming in renamings:
            key, _ = renaming.rename_source_key(key)
        key = key if key.startswith((f"{prefix}.", *heads)) else f"{prefix}.{key}"
        found[key] = (saved_name, tuple(shape))
    return found


def model_names(saved_shapes: Mapping[str, tuple[int, ...]], model: PreTrainedModel) -> dict:
    """`by_model_name` for the names of `model` (a family's classifier): its prefix and heads."""
    return by_model_name(saved_shapes, model.config.model_type, model.base_model_prefix, head_prefixes(model))


def mismatched_weights(saved_shapes: Mapping[str, tuple[int, ...]], config: TriLevelViTConfig) -> list[Mismatch]:
    """`(name, saved shape, model shape, saved name)` for each weight whose saved shape differs from that of the
    model `config` describes (its family's classifier class), names as the model's
    (`vit.layers.0.attention.q_proj.weight`, `classifier.weight`), in the model's order. `saved_shapes` may use a
    checkpoint's names (v4 names, a base model's without its prefix); weights only one side has are not compared."""
    model = meta_model(config)
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    saved = model_names(saved_shapes, model)
    return [
        (name, saved[name][1], shape, saved[name][0])
        for name, shape in expected.items()
        if name in saved and saved[name][1] != shape
    ]


def check_checkpoint_weights(
    model_name_or_path: str | None,
    config: TriLevelViTConfig,
    *,
    ignore_mismatched_sizes: bool = False,
    compare_classifier: bool = True,
    argument: str = "model_name_or_path",
    config_argument: str | None = None,
) -> None:
    """Refuse a local checkpoint folder whose weights cannot load into the model `config` describes, before they
    load: a cut-short or corrupt `model.safetensors` (or shard), and saved shapes that differ from the model's.

    Only the headers are read (`hf_trilevel.training.weight_files`). A classifier of another size is what
    `ignore_mismatched_sizes` is for (a new one is trained); any other mismatch is refused with or without it, since
    transformers would otherwise stop with a `RuntimeError`, or with the flag silently re-initialise every layer
    whose shape differs. `compare_classifier=False` skips the classifier (when `config` does not yet carry the
    data's labels); `config_argument` names the flag the config came from when it is not `argument`'s. Hub ids and
    files are left to transformers.
    """
    if model_name_or_path is None or not Path(model_name_or_path).expanduser().is_dir():
        return
    folder = Path(model_name_or_path).expanduser()
    # A flag in backticks with the value quoted; a command's positional argument (`IN_DIR`) as its usage line shows it.
    named = f"{argument} {model_name_or_path}" if argument.isupper() else f"`{argument}` {model_name_or_path!r}"
    try:
        saved_shapes = folder_weight_shapes(folder)
    except WeightFileError as error:
        raise ValueError(f"{named}: {error}. Save, copy or download the model again.") from None
    if saved_shapes is None:
        return
    mismatches = mismatched_weights(saved_shapes, config)
    body = [found for found in mismatches if not is_head_weight(found[0], config)]
    if body:
        described = f"`{config_argument}`" if config_argument else "its config.json"
        cause = mismatch_cause(saved_shapes, config, body)
        if ignore_mismatched_sizes:
            raise ValueError(
                f"`ignore_mismatched_sizes` replaces only the classifier, but other weights of {named} do not fit "
                f"the model {described} describes: {mismatch_text(body)}. It would re-initialise them, training "
                f"from scratch what the folder holds. {cause}"
            )
        raise ValueError(
            f"{named}: its weights do not fit the model {described} describes: {mismatch_text(body)}. {cause}"
        )
    if mismatches and compare_classifier and not ignore_mismatched_sizes:
        raise ValueError(
            f"{named} has a classifier of another size than the model's: "
            f"{mismatch_text(mismatches)}. Pass `ignore_mismatched_sizes` to train a new classifier."
        )


def mismatch_text(mismatches: list[Mismatch]) -> str:
    """`'vit.encoder.layer.0.attention.attention.query.weight' is [16, 32] in the folder but [32, 32] in the model
    (its 'vit.layers.0.attention.q_proj.weight'; and 23 more)`: the folder's name, and the model's where it differs."""
    name, saved, expected, saved_name = mismatches[0]
    notes = [f"its {name!r}"] if name != saved_name else []
    notes += [f"and {len(mismatches) - 1} more"] if len(mismatches) > 1 else []
    more = f" ({'; '.join(notes)})" if notes else ""
    return f"{saved_name!r} is {list(saved)} in the folder but {list(expected)} in the model{more}"


def mismatch_cause(
    saved_shapes: Mapping[str, tuple[int, ...]],
    config: TriLevelViTConfig,
    mismatches: list[Mismatch],
) -> str:
    """The likely cause of a body mismatch: per-layer sizes (a slimmed folder whose config lost or changed them),
    else the config's shape fields."""
    block_weights = layer_block_weights(meta_model(config))
    if all(name in block_weights for name, *_ in mismatches):
        sizes = saved_layer_sizes(saved_shapes, config)
        configured = {name: getattr(config, name, None) for name in PER_LAYER_FIELDS}
        fields = " and ".join(f"`{name}`" for name in PER_LAYER_FIELDS)
        found = ", ".join(f'"{name}": {value}' for name, value in sizes.items())
        found = f" The weights' sizes, to put in config.json: {found}." if sizes else ""
        if all(value is None for value in configured.values()):
            return (
                "Likely cause: the folder was slimmed (its layers have their own numbers of heads and MLP neurons) "
                f"but the config has no per-layer sizes ({fields}).{found}"
            )
        given = ", ".join(f"{name}={value}" for name, value in configured.items())
        return f"Likely cause: the config's per-layer sizes ({given}) are not the weights'.{found}"
    return (
        "Likely cause: the config's shape fields (hidden_size, num_hidden_layers, num_attention_heads, "
        "intermediate_size, image_size, patch_size, num_channels) are not those the weights were saved with."
    )


def layer_sized_weights(model: PreTrainedModel) -> list[tuple[str, str]]:
    """Per layer, the names of its query and first MLP weights, whose rows are its heads' channels and its neurons
    (`vit.layers.0.attention.q_proj.weight`, DINOv2's `dinov2.encoder.layer.0...`, CLIP's `...self_attn.q_proj...`).

    Found by module, not by name: every TriLevel family's base model lists its layers as `layers`, and each layer
    exposes its `attention` (with `q_proj`) and `mlp` (with `fc1`), as structured sparsity and slimming read them."""
    names = {module: name for name, module in model.named_modules()}
    layers: nn.ModuleList = model.base_model.layers
    return [(f"{names[layer.attention.q_proj]}.weight", f"{names[layer.mlp.fc1]}.weight") for layer in layers]


def layer_block_weights(model: PreTrainedModel) -> set[str]:
    """The names of every weight in the layers' attention and MLP blocks: those per-layer sizes shape."""
    names = {module: name for name, module in model.named_modules()}
    blocks = [block for layer in model.base_model.layers for block in (layer.attention, layer.mlp)]
    return {f"{names[block]}.{name}" for block in blocks for name, _ in block.named_parameters()}


def saved_layer_sizes(saved_shapes: Mapping[str, tuple[int, ...]], config: TriLevelViTConfig) -> dict[str, list]:
    """`{num_attention_heads_per_layer: [...], intermediate_size_per_layer: [...]}` read from the saved q and fc1
    weights (heads of `hidden_size / num_attention_heads` channels), or {} when a layer's weights are missing. The
    names are those of `config`'s family (`layer_sized_weights`: the weights slimming cuts)."""
    model = meta_model(config)
    shapes = {name: shape for name, (_, shape) in model_names(saved_shapes, model).items()}
    head_dim = config.hidden_size // config.num_attention_heads
    heads, neurons = [], []
    for query_name, fc1_name in layer_sized_weights(model):
        query, fc1 = shapes.get(query_name), shapes.get(fc1_name)
        if query is None or fc1 is None or not query or query[0] % head_dim:
            return {}
        heads.append(query[0] // head_dim)
        neurons.append(fc1[0])
    return dict(zip(PER_LAYER_FIELDS, (heads, neurons), strict=True))


__all__ = ["Mismatch", "check_checkpoint_weights", "mismatched_weights", "saved_layer_sizes"]
