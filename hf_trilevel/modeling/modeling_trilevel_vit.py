"""TriLevel ViT: transformers' ViT with token dropping and top-k attention sparsity at chosen layers.

Parameter names are those of `transformers.ViTModel` / `ViTForImageClassification`, so ViT and DeiT checkpoints load
unchanged, and with both keep rates at 1.0 the outputs equal transformers' ViT. At each pruning layer, after the
attention block and its residual and before the MLP:

1. tokens: the layer's `TokenSelector` (`config.token_selector`, by default the class token's attention averaged
   over heads, keeping the top `ceil(n * token_keep_rate)`) decides which patch tokens stay; the layer applies the
   decision, optionally fusing the rest into one token;
2. attention: a top-k connection mask is built among the kept tokens and used by the following layers until the
   next pruning layer.

Checkpoints are written with the key names transformers' own ViT writes (its v4 names); `from_pretrained` renames
them through transformers' conversion mapping and a plain `load_state_dict` (as `Trainer` resume uses) through a
load-state-dict pre-hook.

This file is part of the remote-code set copied into every saved checkpoint: it imports only torch, transformers,
the standard library and its flat siblings.
"""

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
import transformers
from torch import nn

try:  # transformers 5 internals this file builds on; they move between major versions
    from transformers import initialization as init
    from transformers.conversion_mapping import (
        get_checkpoint_conversion_mapping,
        register_checkpoint_conversion_mapping,
    )
    from transformers.dynamic_module_utils import custom_object_save, get_relative_import_files
    from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
    from transformers.models.vit.modeling_vit import ViTEmbeddings, ViTPooler, ViTPreTrainedModel
    from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
    from transformers.utils.output_capturing import capture_outputs
except ImportError as error:
    raise ImportError(
        f"The TriLevel ViT code needs transformers 5 (tested with 5.25); this environment has "
        f"{transformers.__version__}. Install `transformers>=5,<6` to load this checkpoint. ({error})"
    ) from error

from .configuration_trilevel_vit import SparsitySettings, TriLevelViTConfig, check_keep_rate
from .sparse_attention import check_masked_attention_implementation
from .token_groups import EncodedTokens, count_groups, merge_groups, trim_group
from .token_merging import check_merge_r
from .token_selectors import ZeroInitLinear, selector_pads_tokens
from .value_checks import as_pair
from .vit_blocks import TriLevelViTAttention
from .vit_layer import TriLevelViTLayer

# transformers writes ViT checkpoints with their v4 key names and renames them on load only for its own classes;
# registering the ViT renames under our model type makes plain ViT/DeiT folders (and our own saves) load.
register_checkpoint_conversion_mapping("trilevel_vit", get_checkpoint_conversion_mapping("ViTModel"), overwrite=True)
_V4_KEY_RENAMES = get_checkpoint_conversion_mapping("ViTModel")
_SCORER_LAYER = re.compile(r"layers?\.(\d+)\.token_selector\.")

AUTO_MAP = {
    "AutoConfig": "configuration_trilevel_vit.TriLevelViTConfig",
    "AutoModel": "modeling_trilevel_vit.TriLevelViTModel",
    "AutoModelForImageClassification": "modeling_trilevel_vit.TriLevelViTForImageClassification",
}


@dataclass
class TriLevelViTModelOutput(BaseModelOutputWithPooling):
    r"""
    Sequences shrink at each pruning layer: `last_hidden_state` and `hidden_states` hold the prefix tokens (ViT's class
    token; `P = config.num_prefix_tokens`, 2 for DeiT's class and distillation tokens), the surviving patch tokens and,
    with `token_fusion=True`, one fused token last. `hidden_states[i][:, P:]` is therefore one longer than
    `kept_token_indices` after fusion; pool over `[:, P : P + kept]` to average patch tokens only.

    kept_token_indices (`tuple[torch.LongTensor]`, *optional*, returned with `output_kept_token_indices=True`):
        One `[batch, kept]` tensor per pruning layer (in `config.token_prune_layers` order): the original patch
        positions (0-indexed, row-major over the patch grid) of the patch tokens alive after that layer, ascending;
        with per-image counts, -1 marks padded slots (after each image's real patches), and the width is the batch's
        largest count.
    kept_token_counts (`tuple[torch.LongTensor]`, *optional*, returned with `output_kept_token_indices=True`):
        One `[batch]` tensor per pruning layer: how many patch tokens each image kept there (its non-negative
        entries of `kept_token_indices`); all equal unless the selector chooses per-image counts.
    auxiliary_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Sum of the token selectors' auxiliary losses over the pruning layers, or None if none returned one.
    token_importance (`tuple[torch.FloatTensor]`, *optional*, returned with `output_token_importance=True`):
        One `[batch, patches]` tensor per pruning layer, then one for the last layer, over the original patch
        positions: the log importance each pruning layer's selector ranked its incoming patches by (its
        `log_importance`), and the last layer's log class-token attention (what the prediction reads); -inf at
        patches already dropped (or padded). Not normalised, and carrying gradients: dense/sparse training's
        importance distillation (`hf_trilevel.DenseSparseTraining`) aligns the first with the dense pass's last.
    token_sources (`torch.LongTensor` of shape `[batch, patches]`, *optional*, returned with
        `output_token_sources=True`):
        For every original patch position, the index (into the final patch tokens, `last_hidden_state[:, P + j]`) of
        the token that holds it, or -1 if it was dropped (or fused). Without merging each kept patch has its own
        token; with token merging (`token_merge_r`) several patches share one (ToMe's source map), and
        `kept_token_indices` reports a merged token by the position of the patch it was merged into.
    patch_token_mean (`torch.FloatTensor` of shape `[batch, hidden]`, *optional*, from families whose head pools the
        patch tokens, e.g. DINOv2): the mean of the final patch tokens over the original patches: a merged token
        counts as the patches it holds, a fused token as every patch dropped, padded slots not at all. With nothing
        dropped or merged, exactly `last_hidden_state[:, prefix:].mean(1)`.

    With per-image counts, `last_hidden_state` is `[prefix, patches padded to the batch's widest image, (fused)]`;
    padded slots hold no token (zeros where the batch was split into groups by count), so pool patch tokens with
    `kept_token_indices[-1] >= 0`.
    """

    kept_token_indices: tuple[torch.LongTensor, ...] | None = None
    auxiliary_loss: torch.FloatTensor | None = None
    kept_token_counts: tuple[torch.LongTensor, ...] | None = None  # after the older fields, so their positions stay
    token_importance: tuple[torch.FloatTensor, ...] | None = None
    token_sources: torch.LongTensor | None = None
    patch_token_mean: torch.FloatTensor | None = None

    def head_fields(self) -> dict:
        """What every classification head passes on from the encoder's output, by name."""
        names = ("hidden_states", "attentions", "kept_token_indices", "kept_token_counts", "auxiliary_loss",
                 "token_importance", "token_sources")  # fmt: skip
        return {name: getattr(self, name) for name in names}


@dataclass
class TriLevelViTImageClassifierOutput(ImageClassifierOutput):
    r"""
    kept_token_indices (`tuple[torch.LongTensor]`, *optional*, returned with `output_kept_token_indices=True`):
        See [`TriLevelViTModelOutput`].
    kept_token_counts (`tuple[torch.LongTensor]`, *optional*, returned with `output_kept_token_indices=True`):
        See [`TriLevelViTModelOutput`].
    auxiliary_loss (`torch.FloatTensor` of shape `()`, *optional*):
        See [`TriLevelViTModelOutput`]; already included in `loss` when `labels` are given.
    token_importance (`tuple[torch.FloatTensor]`, *optional*, returned with `output_token_importance=True`):
        See [`TriLevelViTModelOutput`].
    token_sources (`torch.LongTensor`, *optional*, returned with `output_token_sources=True`):
        See [`TriLevelViTModelOutput`].
    """

    kept_token_indices: tuple[torch.LongTensor, ...] | None = None
    auxiliary_loss: torch.FloatTensor | None = None
    kept_token_counts: tuple[torch.LongTensor, ...] | None = None  # after the older fields, so their positions stay
    token_importance: tuple[torch.FloatTensor, ...] | None = None
    token_sources: torch.LongTensor | None = None


class TriLevelViTPreTrainedModel(ViTPreTrainedModel):
    """Weight init, loading and saving shared by the TriLevel ViT classes, plus keep-rate control."""

    config: TriLevelViTConfig
    config_class = TriLevelViTConfig
    _no_split_modules = ["ViTEmbeddings", "TriLevelViTLayer"]
    _supports_flex_attn = False
    # Every Auto class a saved folder resolves (a family's classes name their own files): see `save_pretrained`.
    _trilevel_auto_map = AUTO_MAP
    # The renamings from a saved file's key names to the in-memory ones, for a plain `load_state_dict`
    # (`_rename_v4_keys`); `from_pretrained` applies the same ones through the conversion mapping of the model type.
    _checkpoint_key_renames = _V4_KEY_RENAMES
    _can_record_outputs = {
        "hidden_states": TriLevelViTLayer,
        "attentions": TriLevelViTAttention,
    }

    def __init__(self, config: TriLevelViTConfig, *inputs, **kwargs):
        config.check_trilevel_fields()  # before any layer reads a size from it
        super().__init__(config, *inputs, **kwargs)
        self.register_load_state_dict_pre_hook(_rename_v4_keys)

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, ZeroInitLinear):  # a fresh token scorer ranks exactly as class-token attention does
            init.zeros_(module.weight)
            init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' `from_pretrained`, refusing to silently drop a checkpoint's trained token scorers.

        A checkpoint trained with learned scores (`token_selector="learned"`, or `"adaptive"` over learned
        importance) holds `token_selector.scorer` weights per pruning layer. Loading it into a config without
        learned scores would leave them unused, and transformers only reports that in its load log; here it is a
        `ValueError` that says how to load the scores (or how to drop them on purpose).
        """
        return_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        unused = sorted(key for key in info.get("unexpected_keys", ()) if ".token_selector." in key)
        if unused:
            layers = sorted({int(match.group(1)) for key in unused if (match := _SCORER_LAYER.search(key))})
            config = model.config
            raise ValueError(
                f"{pretrained_model_name_or_path} holds trained token-scorer weights for layers {layers} that this "
                f"model has no place for (`token_selector={config.token_selector!r}`, `token_importance="
                f"{config.token_importance!r}`, `token_prune_layers={list(config.token_prune_layers)}`), so they "
                "would be dropped. Load it with its saved `token_selector` (and `token_importance`) and with "
                "`token_prune_layers` that include those layers; to rank by class-token attention on purpose, load "
                "it as saved and save a copy without the `token_selector.` weights."
            )
        return (model, info) if return_info else model

    def task_loss(
        self, labels: torch.Tensor | None, logits: torch.Tensor, auxiliary_loss: torch.Tensor | None, **kwargs
    ) -> torch.Tensor | None:
        """The head's loss on `logits` (transformers' `loss_function` for the config's problem type) plus the
        selectors' `auxiliary_loss`, so a stock `Trainer` trains a learned selector too; None without `labels`."""
        if labels is None:
            return None
        loss = self.loss_function(labels, logits, self.config, **kwargs)
        return loss if auxiliary_loss is None else loss + auxiliary_loss

    def set_keep_rates(
        self,
        token_keep_rate: float | None = None,
        attention_keep_rate: float | None = None,
        token_merge_r: int | list[int] | None = None,
    ) -> None:
        """Change the token and/or attention keep rates (and/or the tokens merged per layer); the next forward uses
        them. No reload, no new weights.

        The rates live in `model.config`, as every transformers setting does, so models built from the same config
        object (e.g. `Cls(model.config)` for an EMA or teacher copy) change together; build copies from
        `copy.deepcopy(model.config)` to set them apart.

        Raises `ValueError` (and changes nothing) if a rate is outside (0, 1], if attention sparsity is asked of
        an attention implementation that cannot apply a mask, or if the new settings cannot combine (token merging
        with attention sparsity, an `r` a layer has too few tokens for).
        """
        updates = {
            name: check_keep_rate(name, value)
            for name, value in (("token_keep_rate", token_keep_rate), ("attention_keep_rate", attention_keep_rate))
            if value is not None
        }
        if token_merge_r is not None:
            updates["token_merge_r"] = token_merge_r
        if updates.get("attention_keep_rate", 1.0) < 1.0:
            check_masked_attention_implementation(self.config._attn_implementation)
        previous = {name: getattr(self.config, name) for name in updates}
        for name, value in updates.items():
            setattr(self.config, name, value)
        try:
            SparsitySettings.from_config(self.config)
        except ValueError:
            for name, value in previous.items():
                setattr(self.config, name, value)
            raise
        if isinstance(token_merge_r, (list, tuple)):  # stored as the constructor stores it: a list of ints
            self.config.token_merge_r = check_merge_r(token_merge_r, self.config.num_hidden_layers)

    @contextmanager
    def keep_rates(
        self,
        token_keep_rate: float | None = None,
        attention_keep_rate: float | None = None,
        token_merge_r: int | list[int] | None = None,
    ) -> Iterator[None]:
        """Temporarily use other keep rates or merge counts (e.g. to evaluate several operating points of one
        checkpoint)."""
        config = self.config
        previous = (config.token_keep_rate, config.attention_keep_rate, getattr(config, "token_merge_r", 0))
        self.set_keep_rates(token_keep_rate, attention_keep_rate, token_merge_r)
        try:
            yield
        finally:
            config.token_keep_rate, config.attention_keep_rate, config.token_merge_r = previous

    def post_init(self):
        super().post_init()
        # `from_pretrained(..., token_keep_rate=x)` sets config attributes after the config validated itself.
        self.config.check_trilevel_fields()
        if self.config.attention_keep_rate < 1.0:
            check_masked_attention_implementation(self.config._attn_implementation)
        check_padding_attention_implementation(self.config)

    def save_pretrained(self, save_directory, is_main_process: bool = True, *args, **kwargs):
        """Save like transformers does (weights under ViT's v4 key names), with every Auto class in `auto_map`.

        transformers writes only the saved class and its config into `auto_map`; adding the rest lets AutoConfig,
        AutoModel and AutoModelForImageClassification all resolve from any TriLevel checkpoint.

        A model whose class a wrapper replaced in place (FSDP2's `fully_shard` makes it a class such as
        `FSDPTriLevelViTForImageClassification`, created in torch's own files) is saved as its TriLevel class: the
        folder carries this file and its siblings, not the wrapper's module, and `auto_map` names the TriLevel classes.
        """
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **self._trilevel_auto_map}
        if not (_is_wrapper_class(type(self)) and self._auto_class is not None):  # remote code, wrapped
            return super().save_pretrained(save_directory, is_main_process, *args, **kwargs)
        # transformers copies the code of `type(self)`'s module (torch's files) and names the wrapper in `auto_map`
        # before it writes config.json; undo both once it is done, removing only files this save added.
        present = set(os.listdir(save_directory)) if os.path.isdir(save_directory) else set()
        wrapper_files = _code_file_names(type(self).__module__)
        result = super().save_pretrained(save_directory, is_main_process, *args, **kwargs)
        saves_here = is_main_process and (not dist.is_initialized() or dist.get_rank() == 0)  # as transformers does
        if saves_here and os.path.isdir(save_directory):
            _save_as_trilevel_class(self, save_directory, wrapper_files - present)
        return result


def _trilevel_class(cls: type) -> type:
    """The first class of a TriLevel modeling file (this one, or a family's `modeling_trilevel_*.py`) in `cls`'s MRO:
    `cls` itself unless a wrapper or subclass replaced it."""
    return next(base for base in cls.__mro__ if base.__module__.rpartition(".")[2].startswith("modeling_trilevel_"))


def _is_wrapper_class(cls: type) -> bool:
    """Whether `cls` wraps a class of this file and its module does not define it by name, so remote code could not
    load it from that module (FSDP2's `FSDP<name>` classes are made with `type(...)` inside torch). A subclass that
    its module defines is left to transformers, which saves that module's code as for any custom model."""
    module = sys.modules.get(cls.__module__)
    return _trilevel_class(cls) is not cls and getattr(module, cls.__name__, None) is not cls


def _code_file_names(module_name: str) -> set[str]:
    """Names of the files transformers' `custom_object_save` copies for a class of `module_name`."""
    module_file = sys.modules[module_name].__file__
    return {os.path.basename(path) for path in [module_file, *get_relative_import_files(module_file)]}


def _save_as_trilevel_class(model: TriLevelViTPreTrainedModel, folder: str, copied: set[str]) -> None:
    """Turn the folder a wrapped `model` was just saved to into what saving its TriLevel class writes: remove the
    wrapper module's files in `copied`, copy this file and its siblings, and rewrite config.json with `auto_map`
    and `architectures` naming the TriLevel class."""
    trilevel_class = _trilevel_class(type(model))
    for name in sorted(copied):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            os.remove(path)
    custom_object_save(trilevel_class, folder)  # a class: copies its module's code, leaves configs alone
    module = trilevel_class.__module__.rsplit(".", 1)[-1]
    model.config.auto_map = {
        **model.config.auto_map,
        trilevel_class._auto_class: f"{module}.{trilevel_class.__name__}",
    }
    model.config.architectures = [trilevel_class.__name__]
    if not getattr(model, "_hf_peft_config_loaded", False):  # transformers writes no config.json for adapters
        model.config.save_pretrained(folder)


def _add_losses(first: torch.Tensor | None, second: torch.Tensor | None) -> torch.Tensor | None:
    """The sum of two optional scalar losses (None when both are)."""
    return second if first is None else first if second is None else first + second


def patch_token_weights(
    hidden_states: torch.Tensor,
    patch_positions: torch.Tensor,
    token_sizes: torch.Tensor | None,
    num_prefix_tokens: int,
    num_patches: int,
) -> torch.Tensor | None:
    """`[batch, tokens - prefix]` float32: how many of the `num_patches` original patches each token after the prefix
    stands for (a merged token its size, a trailing fused token every patch no real token holds, a padded slot 0);
    None when nothing was dropped or merged (each token is one patch). float32 whatever the model's dtype: bfloat16
    holds whole numbers exactly only up to 256."""
    kept = patch_positions.shape[1]
    has_fused_token = hidden_states.shape[1] > num_prefix_tokens + kept
    # An exported graph's kept width may be data-dependent (per-image counts), so it is not compared there: weights
    # of ones give the same mean.
    if token_sizes is None and not has_fused_token and not torch.compiler.is_exporting() and kept == num_patches:
        return None
    if token_sizes is None:
        sizes = hidden_states.new_ones(patch_positions.shape, dtype=torch.float32)
    else:
        sizes = token_sizes[:, num_prefix_tokens : num_prefix_tokens + kept].float()
    sizes = sizes * (patch_positions >= 0)
    if has_fused_token:
        fused = (num_patches - sizes.sum(dim=1, keepdim=True)).clamp_min(0)
        sizes = torch.cat([sizes, fused], dim=1)
    return sizes


def patch_token_mean(
    sequence_output: torch.Tensor, token_weights: torch.Tensor | None, num_prefix_tokens: int
) -> torch.Tensor:
    """`[batch, hidden]`: the final patch tokens' mean over the original patches (see
    `TriLevelViTModelOutput.patch_token_mean`), each token weighed by `token_weights` (`patch_token_weights`)."""
    patches = sequence_output[:, num_prefix_tokens:]
    if token_weights is None:
        return patches.mean(dim=1)  # nothing dropped or merged: the dense model's mean, bit for bit
    weights = token_weights / token_weights.sum(dim=1, keepdim=True)  # float32 shares, then the model's dtype
    return (weights.to(patches.dtype).unsqueeze(-1) * patches).sum(dim=1)


def scatter_importance(importance: torch.Tensor, positions: torch.Tensor, num_patches: int) -> torch.Tensor:
    """`[batch, patches]` importance of the current tokens placed at their original positions; -inf elsewhere.

    Padded slots (position -1) go to a spare last column, which is dropped.
    """
    spare = torch.where(positions >= 0, positions, num_patches)
    placed = importance.new_full((len(importance), num_patches + 1), float("-inf"))
    return placed.scatter(1, spare, importance)[:, :num_patches]


def check_padding_attention_implementation(config: TriLevelViTConfig) -> None:
    """A selector with per-image counts masks its padding through the attention mask, which flash kernels ignore."""
    if config.token_prune_layers and selector_pads_tokens(config.token_selector):
        check_masked_attention_implementation(
            config._attn_implementation,
            needed_by=f"`token_selector={config.token_selector!r}` (per-image counts, padding masked out of attention)",
            alternative="use a selector with fixed counts such as 'class_attention'",
        )


def _rename_v4_keys(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Load-state-dict pre-hook: rename ViT's v4 checkpoint keys to the in-memory names, in place.

    `from_pretrained` applies transformers' conversion mapping itself, but a plain `load_state_dict` of a saved
    file (what `Trainer(resume_from_checkpoint=...)` does, with `strict=False`) would otherwise load nothing. The
    renames are transformers' own for `ViTModel`; in-memory names match none of them, so the hook is idempotent.
    """
    for old_key in [key for key in state_dict if key.startswith(prefix)]:
        new_key = old_key[len(prefix) :]  # renamings are written for the module's own keys (some are anchored)
        for renaming in module._checkpoint_key_renames:
            new_key, _ = renaming.rename_source_key(new_key)
        new_key = prefix + new_key
        if new_key != old_key:
            state_dict[new_key] = state_dict.pop(old_key)


def check_pixel_values(pixel_values: torch.Tensor | None, config: TriLevelViTConfig, interpolate: bool) -> None:
    """Raise `ValueError` naming what is wrong with `pixel_values` before any layer runs."""
    if pixel_values is None:
        raise ValueError("`pixel_values` is required: a float tensor of shape [batch, channels, height, width].")
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise ValueError(f"`pixel_values` must be a 4-D tensor [batch, channels, height, width], got {shape}.")
    if not pixel_values.is_floating_point():
        raise ValueError(
            f"`pixel_values` must be a floating-point tensor (normalised images, as an image processor returns), "
            f"got dtype {pixel_values.dtype}."
        )
    if pixel_values.shape[1] != config.num_channels:
        raise ValueError(
            f"`pixel_values` has {pixel_values.shape[1]} channels but the config expects "
            f"num_channels={config.num_channels}."
        )
    size = as_pair(config.image_size)
    if not interpolate and tuple(pixel_values.shape[2:]) != tuple(size):
        raise ValueError(
            f"`pixel_values` is {pixel_values.shape[2]}x{pixel_values.shape[3]} pixels but the config expects "
            f"image_size={size[0]}x{size[1]}; resize the images or pass `interpolate_pos_encoding=True`."
        )


class TriLevelViTModel(TriLevelViTPreTrainedModel):
    """The TriLevel ViT encoder: `ViTModel` with token and attention sparsity at `config.token_prune_layers`.

    Another family sets what differs: `embeddings_class` and `pooler_class` (DeiT: a distillation token after the
    class token, `config.num_prefix_tokens = 2`), or overrides `build_embeddings`, `embed`, `set_layers` and
    `layer_class` (DINOv2: its own embeddings call, layers at `encoder.layer`, LayerScale layers), and
    `build_output_modules` / `output_tokens` / `patch_projection` (CLIP: a norm before the layers, un-normed tokens
    out, the pooled class token normed).
    """

    embeddings_class: type[nn.Module] = ViTEmbeddings
    pooler_class: type[nn.Module] = ViTPooler
    layer_class: type[TriLevelViTLayer] = TriLevelViTLayer
    # Whether the head pools the patch tokens too (DINOv2's classifier reads the class token and the patch mean):
    # then the output carries `patch_token_mean`, the mean over the original patches whatever was dropped or merged.
    returns_patch_token_mean: bool = False
    # Whether the pooler weighs tokens by the patches they stand for (SigLIP's attention-pooling head): then
    # `output_tokens` gets `patch_token_weights`.
    pools_weighted_tokens: bool = False
    # Whether the embeddings always interpolate their position embeddings (DINOv2's), so any image size is accepted.
    interpolates_always: bool = False

    def __init__(self, config: TriLevelViTConfig, add_pooling_layer: bool = True, use_mask_token: bool = False):
        super().__init__(config)
        self.embeddings = self.build_embeddings(config, use_mask_token)
        self.set_layers(nn.ModuleList([self.layer_class(config, index) for index in range(config.num_hidden_layers)]))
        self.build_output_modules(config, add_pooling_layer)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    def patch_projection(self) -> nn.Module:
        """The convolution that embeds the patches: its weight's dtype is the dtype the images are cast to."""
        return self.embeddings.patch_embeddings.projection

    def build_output_modules(self, config: TriLevelViTConfig, add_pooling_layer: bool) -> None:
        """The modules after the layers (ViT: the final norm and, if asked for, the pooler); see `output_tokens`."""
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = self.pooler_class(config) if add_pooling_layer else None

    def output_tokens(
        self, hidden_states: torch.Tensor, token_weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(last_hidden_state, pooler_output)` from the last layer's tokens (ViT: normed tokens, pooled class token).

        `token_weights` (`patch_token_weights`: the original patches each token after the prefix stands for, or None
        when each is one patch) is for a pooler that weighs tokens, such as SigLIP's attention-pooling head."""
        sequence_output = self.layernorm(hidden_states)
        return sequence_output, self.pooler(sequence_output) if self.pooler is not None else None

    def set_layers(self, layers: nn.ModuleList) -> None:
        """Hold the layers where the family's checkpoints put them (ViT: `layers`); `self.layers` must return them."""
        self.layers = layers

    def build_embeddings(self, config: TriLevelViTConfig, use_mask_token: bool) -> nn.Module:
        """The family's embeddings module (ViT's takes `use_mask_token`)."""
        return self.embeddings_class(config, use_mask_token=use_mask_token)

    def embed(
        self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None, interpolate_pos_encoding: bool | None
    ) -> torch.Tensor:
        """`[batch, prefix + patches, hidden]` embeddings: the family's embeddings module, called as it takes them."""
        return self.embeddings(
            pixel_values, bool_masked_pos=bool_masked_pos, interpolate_pos_encoding=interpolate_pos_encoding
        )

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.BoolTensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_kept_token_indices: bool | None = None,
        output_token_importance: bool | None = None,
        output_token_sources: bool | None = None,
        **kwargs,
    ) -> TriLevelViTModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `[batch, channels, height, width]`):
            Normalised images, as the image processor returns them.
        bool_masked_pos (`torch.BoolTensor` of shape `[batch, patches]`, *optional*):
            Patches replaced by the mask token (only if the model was built with `use_mask_token=True`).
        output_kept_token_indices (`bool`, *optional*):
            Also return, per pruning layer, the original positions of the surviving patches.
        output_token_importance (`bool`, *optional*):
            Also return each pruning layer's and the last layer's token importance (`token_importance`), with
            gradients; for distillation of token selection. Costs one class-token attention row per such layer.
        output_token_sources (`bool`, *optional*):
            Also return which final token holds each original patch (`token_sources`; merged patches share one).
        """
        if kwargs.get("attention_mask") is not None:
            raise ValueError(
                "`attention_mask` is not supported: the TriLevel ViT builds its own attention masks among the tokens "
                "it keeps. Drop the argument (images have no padding tokens to mask)."
            )
        kwargs.pop("attention_mask", None)
        check_pixel_values(pixel_values, self.config, bool(interpolate_pos_encoding) or self.interpolates_always)
        sparsity = SparsitySettings.from_config(self.config)
        if output_token_importance:
            sparsity = replace(sparsity, record_token_importance=True)
        if output_token_sources:
            sparsity = replace(sparsity, record_token_sources=True)
        if sparsity.attention_keep_rate < 1.0:
            check_masked_attention_implementation(self.config._attn_implementation)
        check_padding_attention_implementation(self.config)
        pixel_values = pixel_values.to(self.patch_projection().weight.dtype)

        hidden_states = self.embed(pixel_values, bool_masked_pos, interpolate_pos_encoding)
        batch_size, num_tokens = hidden_states.shape[:2]
        prefix = self.config.num_prefix_tokens
        patch_positions = torch.arange(num_tokens - prefix, device=hidden_states.device).expand(batch_size, -1)
        captures_layers = any(
            kwargs.get(name, getattr(self.config, name, False))
            for name in ("output_hidden_states", "output_attentions")
        )
        # Hooks must see whole-batch layers, and importance is returned over the whole batch. A traced graph
        # (torch.export, ONNX, torch.compile) cannot split a batch by counts it does not read: one group.
        whole_batch = captures_layers or output_token_importance or output_token_sources
        buckets = 1 if whole_batch or torch.compiler.is_compiling() else None
        buckets = sparsity.token_count_buckets if buckets is None else buckets
        # Sources as sequence indices (the class token is 0), followed through every drop and merge.
        token_sources = patch_positions + prefix if output_token_sources else None
        encoded = self._encode(0, hidden_states, patch_positions, None, sparsity, buckets, kwargs, token_sources)

        token_weights = None
        if self.returns_patch_token_mean or self.pools_weighted_tokens:
            token_weights = patch_token_weights(
                encoded.hidden_states, encoded.patch_positions, encoded.token_sizes, prefix, num_tokens - prefix
            )
        sequence_output, pooled_output = self.output_tokens(encoded.hidden_states, token_weights)
        patch_mean = patch_token_mean(sequence_output, token_weights, prefix) if self.returns_patch_token_mean else None
        return TriLevelViTModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            kept_token_indices=tuple(encoded.kept_token_indices) if output_kept_token_indices else None,
            kept_token_counts=tuple(encoded.kept_token_counts) if output_kept_token_indices else None,
            auxiliary_loss=encoded.auxiliary_loss,
            token_importance=tuple(encoded.token_importance) if output_token_importance else None,
            token_sources=(
                torch.where(encoded.token_sources >= prefix, encoded.token_sources - prefix, -1)
                if output_token_sources
                else None
            ),
            patch_token_mean=patch_mean,
        )

    def _encode(
        self,
        start: int,
        hidden_states: torch.Tensor,
        patch_positions: torch.Tensor,
        attention_mask: torch.Tensor | None,
        sparsity: SparsitySettings,
        buckets: int,
        layer_kwargs: dict,
        token_sources: torch.Tensor | None = None,
    ) -> EncodedTokens:
        """Run layers `start..` on a batch; after a per-image pruning layer, run the rest per group of similar counts.

        A padding selector pads every image to the batch's largest count. At a pruning layer that leaves counts
        spread out, the batch is split into at most `buckets` groups of images with similar counts
        (`count_groups`), each trimmed to its own largest count and run through the remaining layers on its own
        (without further splitting unless buckets are left), then merged back in the original order. Every layer
        treats images independently, so this changes no image's result, only the padding computed.

        With token merging, each layer also carries the merged tokens' sizes (and, when recorded, every patch's
        token); merging is refused with per-image counts, so merged batches are never split into groups.
        """
        kept_token_indices, kept_token_counts, auxiliary_loss, token_importance = [], [], None, []
        num_patches = patch_positions.shape[1]  # all of them when importance is recorded (never split into groups)
        token_sizes = None  # set by the first merging layer
        for layer in self.layers[start:]:
            incoming_positions = patch_positions
            hidden_states, patch_positions, attention_mask, token_sizes, token_sources, layer_loss, *importance = layer(
                hidden_states,
                patch_positions,
                attention_mask,
                token_sizes,
                token_sources,
                sparsity=sparsity,
                **layer_kwargs,
            )
            token_importance += [scatter_importance(entry, incoming_positions, num_patches) for entry in importance]
            if attention_mask is not None:
                attention_mask = attention_mask.detach()  # reentrant checkpointing marks outputs as requiring grad
            auxiliary_loss = _add_losses(auxiliary_loss, layer_loss)
            if layer.layer_idx not in sparsity.token_prune_layers:
                continue
            counts = (patch_positions >= 0).sum(dim=1)
            kept_token_indices.append(patch_positions)
            kept_token_counts.append(counts)
            last = layer.layer_idx == len(self.layers) - 1
            if buckets > 1 and not last and layer.token_selector.pads_tokens and attention_mask is not None:
                groups = count_groups(counts, buckets)
                if len(groups) > 1:
                    rest = [
                        self._encode(
                            layer.layer_idx + 1,
                            *trim_group(
                                hidden_states,
                                patch_positions,
                                attention_mask,
                                rows,
                                width,
                                self.config.num_prefix_tokens,
                            ),
                            sparsity,
                            max(1, buckets // len(groups)),
                            layer_kwargs,
                        )
                        for rows, width in groups
                    ]
                    merged = merge_groups(rest, [rows for rows, _ in groups], self.config.num_prefix_tokens)
                    return EncodedTokens(
                        merged.hidden_states,
                        merged.patch_positions,
                        kept_token_indices + merged.kept_token_indices,
                        kept_token_counts + merged.kept_token_counts,
                        _add_losses(auxiliary_loss, merged.auxiliary_loss),
                    )
        return EncodedTokens(
            hidden_states,
            patch_positions,
            kept_token_indices,
            kept_token_counts,
            auxiliary_loss,
            token_importance,
            token_sources,
            token_sizes,
        )


class TriLevelViTForImageClassification(TriLevelViTPreTrainedModel):
    """TriLevel ViT with a linear classifier on the final class token, like `ViTForImageClassification`."""

    def __init__(self, config: TriLevelViTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = TriLevelViTModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_kept_token_indices: bool | None = None,
        output_token_importance: bool | None = None,
        output_token_sources: bool | None = None,
        **kwargs,
    ) -> TriLevelViTImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `[batch]`, *optional*):
            Class indices for the loss (cross-entropy for `num_labels > 1`, as in transformers' ViT). The selectors'
            `auxiliary_loss`, if any, is added to it, so a stock `Trainer` trains a learned selector too.
        output_kept_token_indices, output_token_importance, output_token_sources (`bool`, *optional*):
            See [`TriLevelViTModel.forward`].
        """
        outputs: TriLevelViTModelOutput = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_kept_token_indices=output_kept_token_indices,
            output_token_importance=output_token_importance,
            output_token_sources=output_token_sources,
            **kwargs,
        )
        logits = self.classifier(outputs.last_hidden_state[:, 0, :])
        return TriLevelViTImageClassifierOutput(
            loss=self.task_loss(labels, logits, outputs.auxiliary_loss, **kwargs),
            logits=logits,
            **outputs.head_fields(),
        )


TriLevelViTConfig.register_for_auto_class()
TriLevelViTModel.register_for_auto_class("AutoModel")
TriLevelViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "TriLevelViTForImageClassification",
    "TriLevelViTImageClassifierOutput",
    "TriLevelViTModel",
    "TriLevelViTModelOutput",
    "TriLevelViTPreTrainedModel",
]
