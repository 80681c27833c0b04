"""Configuration of the TriLevel ViT: a `ViTConfig` plus the token- and attention-level sparsity settings.

Validation goes through the config's own mechanism: `ViTConfig` is a `huggingface_hub` `@strict` dataclass, whose
`validate_*` methods are its class validators. A subclass's validators only join that list when the subclass is
decorated `@strict` too, so this one is. They run at construction (called from `__post_init__`, so a bad value
raises a plain `ValueError` naming the field and the allowed range, as it always did), again when a model is built
(`post_init`) and whenever transformers or a user calls `config.validate()` (every `save_pretrained` does; there
`huggingface_hub` wraps the `ValueError` in its `StrictDataclassClassValidationError`).

The TriLevel fields are annotated `Any` on purpose: `@strict`'s type check would run before the validators and
refuse, say, `token_keep_rate="0.5"` with a `TypeError` that names no allowed range. The validators check types and
values together; the documented types are in the class docstring.

This file is part of the remote-code set copied into every saved checkpoint, so it imports only `transformers`
(with its own dependency `huggingface_hub`), the standard library and flat siblings. It is a little over 400 lines
because the config, its validators and `SparsitySettings` (the validated per-forward copy) change together; the
family configs build on it rather than repeat it.
"""

import math
import numbers
from dataclasses import dataclass
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import ViTConfig

from .token_merging import check_merge_r, layer_token_counts, merge_problem
from .token_selectors import LEARNED_SCORE_SELECTORS, TOKEN_IMPORTANCES, check_token_selector, selector_pads_tokens
from .value_checks import as_pair, check_fraction, check_int, check_keep_rate, check_number

PER_LAYER_FIELDS = ("num_attention_heads_per_layer", "intermediate_size_per_layer")
DENSE_SPARSE_FIELD = "dense_sparse_keep_rates"
# What a composite (image-text) config holds at the top level that a vision config read from it keeps: the labels of
# transformers' `CLIPForImageClassification` / `SiglipForImageClassification` folders.
COMPOSITE_LABEL_FIELDS = ("id2label", "label2id", "problem_type")


def default_token_prune_layers(num_hidden_layers: int) -> list[int]:
    """Pruning positions at a quarter, half and three quarters of the depth.

    A 12-layer model gets [3, 6, 9] as in Tri-Level E-ViT and EViT; shallower models get the same proportions,
    so any plain ViT checkpoint loads with defaults (for example 6 layers -> [1, 3, 4]).
    """
    return sorted({num_hidden_layers * quarter // 4 for quarter in (1, 2, 3)})


def check_token_prune_layers(value: object, num_hidden_layers: int) -> list[int]:
    """Return the pruning layers as a sorted list, or raise `ValueError` naming the field and allowed range."""
    allowed = (
        f"distinct integers in [0, {num_hidden_layers - 1}] (0-indexed layers of a {num_hidden_layers}-layer model)"
    )
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"`token_prune_layers` must be a list of {allowed}, got {value!r}.")
    for index in value:
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise ValueError(f"`token_prune_layers` must hold {allowed}; {index!r} is not an integer.")
        if not 0 <= index < num_hidden_layers:
            raise ValueError(
                f"`token_prune_layers` must hold {allowed}; {index} is out of range (if you changed "
                "`num_hidden_layers`, pass `token_prune_layers` for the new depth too)."
            )
    if len(set(value)) != len(value):
        raise ValueError(f"`token_prune_layers` must hold {allowed}; got duplicates in {list(value)}.")
    return sorted(int(index) for index in value)


def check_per_layer_sizes(name: str, value: object, num_hidden_layers: int) -> list[int] | None:
    """Return a per-layer size list (or None for uniform), or raise `ValueError` naming the field."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or len(value) != num_hidden_layers:
        raise ValueError(
            f"`{name}` must be None (uniform) or a list of {num_hidden_layers} positive integers, one per layer "
            f"(`num_hidden_layers={num_hidden_layers}`), got {value!r}."
        )
    return [check_int(f"{name}[{index}]", size, low=1) for index, size in enumerate(value)]


def check_per_layer_limit(name: str, sizes: list[int] | None, limit_name: str, limit: object) -> None:
    """Refuse a per-layer size above its uniform field (`ValueError` naming the field, the layer, the value and the
    limit): the per-layer lists only narrow layers (slimming removes heads and neurons), so a wider layer would build
    a model larger than `num_attention_heads` / `intermediate_size` say, which FLOPs and cards read as the full width.
    """
    if sizes is None:
        return
    for index, size in enumerate(sizes):
        if size > limit:
            raise ValueError(
                f"`{name}[{index}]` (layer {index}) is {size}, above `{limit_name}` ({limit}): per-layer entries "
                f"only narrow a layer (as slimming does), so each must be at most `{limit_name}`; lower the entry "
                f"or raise `{limit_name}`."
            )


def check_dense_sparse_keep_rates(value: object, name: str = DENSE_SPARSE_FIELD) -> list[float] | None:
    """None, or the distinct keep rates in (0, 1] as a list sorted from the densest; else `ValueError` naming `name`."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"`{name}` must be None or a non-empty list of token keep rates in (0, 1], got {value!r}.")
    rates = [check_keep_rate(f"{name}[{index}]", rate) for index, rate in enumerate(value)]
    if len(set(rates)) != len(rates):
        raise ValueError(f"`{name}` must hold distinct keep rates, got {list(value)}.")
    return sorted(rates, reverse=True)


@dataclass(frozen=True)
class SparsitySettings:
    """The token- and attention-level settings one forward pass uses, read from the config once.

    Layers take this as an argument instead of reading the config, so a gradient-checkpointing recompute uses the
    settings of its own forward even if `set_keep_rates` ran in between (dense and sparse passes of one batch).
    """

    token_keep_rate: float
    attention_keep_rate: float
    token_fusion: bool
    token_prune_layers: tuple[int, ...]
    token_keep_mass: float = 1.0
    token_min_keep_rate: float = 0.25
    token_selector_temperature: float = 1.0
    token_count_buckets: int = 1
    token_selector_noise: float = 1.0
    record_token_importance: bool = False
    token_merge_r: tuple[int, ...] = ()  # per layer; empty when no layer merges (the exact dense/dropping path)
    token_merge_proportional_attention: bool = True
    record_token_sources: bool = False

    @classmethod
    def from_config(cls, config: "TriLevelViTConfig") -> "SparsitySettings":
        """Validated settings; catches values assigned to the config directly, which bypass its constructor."""
        if not isinstance(config.token_fusion, bool):
            raise ValueError(f"`token_fusion` must be True or False, got {config.token_fusion!r}.")
        merge_r = check_token_merging(config)
        return cls(
            check_keep_rate("token_keep_rate", config.token_keep_rate),
            check_keep_rate("attention_keep_rate", config.attention_keep_rate),
            config.token_fusion,
            tuple(check_token_prune_layers(config.token_prune_layers, config.num_hidden_layers)),
            check_number(
                "token_keep_mass", config.token_keep_mass, 0.0, 1.0, hint="1.0 keeps `token_keep_rate` of the tokens"
            ),
            check_fraction("token_min_keep_rate", config.token_min_keep_rate),
            check_number(
                "token_selector_temperature", config.token_selector_temperature, 0.0, math.inf, high_open=True
            ),
            check_int("token_count_buckets", config.token_count_buckets, low=1),
            check_number("token_selector_noise", config.token_selector_noise, 0.0, 1.0, low_open=False),
            token_merge_r=tuple(merge_r) if any(merge_r) else (),
            token_merge_proportional_attention=getattr(config, "token_merge_proportional_attention", True),
        )


def check_token_merging(config: "TriLevelViTConfig") -> list[int]:
    """`token_merge_r` per layer, after refusing (`ValueError`, naming the fields) what merging cannot honour.

    Merging composes with token dropping at the pruning layers (drop, then merge the survivors), with fusion (the
    fused token is never merged) and with the fixed-count selectors. It is refused with attention sparsity (a
    connection mask is built for one token set at a pruning layer and reused until the next, and merging changes
    the token set in every layer) and with per-image counts (padded slots would be matched as tokens, and every
    image merges the same r). Each layer's r must fit the tokens it has there at the config's keep rate (and at the
    sparsest of `dense_sparse_keep_rates`).
    """
    merge_r = check_merge_r(getattr(config, "token_merge_r", 0), config.num_hidden_layers)
    proportional = getattr(config, "token_merge_proportional_attention", True)
    if not isinstance(proportional, bool):
        raise ValueError(f"`token_merge_proportional_attention` must be True or False, got {proportional!r}.")
    if not any(merge_r):
        return merge_r
    shown = config.token_merge_r
    if check_keep_rate("attention_keep_rate", config.attention_keep_rate) < 1.0:
        raise ValueError(
            f"`token_merge_r={shown!r}` cannot be combined with `attention_keep_rate={config.attention_keep_rate}`: "
            "attention sparsity builds a connection mask for the tokens of a pruning layer and reuses it until the "
            "next one, while merging changes the tokens in every layer. Set `attention_keep_rate=1.0` or "
            "`token_merge_r=0`."
        )
    check_token_selector(config.token_selector)
    if selector_pads_tokens(config.token_selector):
        raise ValueError(
            f"`token_merge_r={shown!r}` cannot be combined with `token_selector={config.token_selector!r}` (per-image "
            "token counts): merging takes the same r from every image, and padded slots would be matched as tokens. "
            "Use a fixed-count selector ('class_attention' or 'learned') with merging, or `token_merge_r=0`."
        )
    image, patch = as_pair(config.image_size), as_pair(config.patch_size)
    patches = (image[0] // patch[0]) * (image[1] // patch[1])
    prune_layers = check_token_prune_layers(config.token_prune_layers, config.num_hidden_layers)
    rates = [check_keep_rate("token_keep_rate", config.token_keep_rate)]
    rates += check_dense_sparse_keep_rates(getattr(config, DENSE_SPARSE_FIELD, None)) or []
    for rate in sorted(set(rates)):
        counts = layer_token_counts(patches, config.num_hidden_layers, prune_layers, rate, merge_r)
        problem = merge_problem(counts, merge_r)
        if problem is not None:
            raise ValueError(f"{problem} (at `token_keep_rate={rate:g}`, {patches} patches per image)")
    return merge_r


@strict
class TriLevelViTConfig(ViTConfig):
    r"""
    Configuration of [`TriLevelViTModel`] and [`TriLevelViTForImageClassification`].

    Every field of [`ViTConfig`] keeps its meaning, so a plain ViT/DeiT checkpoint's `config.json` loads as is. With
    both keep rates at 1.0 the model computes exactly what `ViTModel` computes.

    Args:
        token_keep_rate (`float`, *optional*, defaults to 1.0):
            Fraction of the patch tokens kept at each pruning layer, in (0, 1]. It compounds: with 0.7 and three
            pruning layers, 70%, 49% and 34.3% of the patches remain. Each layer keeps `ceil(n * rate)` of its `n`
            patch tokens, so at least one patch always survives.
        token_prune_layers (`list[int]`, *optional*):
            0-indexed layers after whose attention block tokens are dropped (and the sparse attention mask is
            rebuilt). Defaults to a quarter, half and three quarters of the depth ([3, 6, 9] for 12 layers).
        token_fusion (`bool`, *optional*, defaults to `False`):
            Fuse the dropped tokens into one extra token (their mean weighted by the selector's scores, EViT-style)
            instead of discarding them.
        attention_keep_rate (`float`, *optional*, defaults to 1.0):
            Fraction of the patch connections kept per query row among the kept tokens, in (0, 1]; the class (and
            fused) token's connections are always kept. 1.0 is dense.
        token_selector (`str`, *optional*, defaults to `"class_attention"`):
            Name of the `TokenSelector` that scores and picks the tokens at each pruning layer, from the registry in
            `token_selectors.py` (`register_token_selector` adds one): `"class_attention"` (Tri-Level E-ViT / EViT),
            `"learned"` (a trained scorer per pruning layer, SViTE+ / DynamicViT style, same count as
            `"class_attention"`) or `"adaptive"` (SaiT: a per-image count from `token_keep_mass`). See
            docs/token_selection.md.
        token_keep_mass (`float`, *optional*, defaults to 1.0):
            `"adaptive"` only, in (0, 1]: each image keeps the fewest patch tokens whose share of the importance
            (class-token attention, or the learned scores, renormalised over its current patches) reaches this
            mass, between the floor (`token_min_keep_rate`) and `ceil(n * token_keep_rate)`. 1.0 always reaches the
            upper bound, so it behaves as the fixed rate.
        token_min_keep_rate (`float`, *optional*, defaults to 0.25):
            `"adaptive"` only, in (0, 1]: no image keeps fewer than `ceil(n * min(token_min_keep_rate,
            token_keep_rate))` of its `n` current patch tokens, so an image with one dominant patch still keeps
            context (and the count never drops to the single token that `token_keep_mass` alone could choose).
        token_importance (`str`, *optional*, defaults to `"class_attention"`):
            `"adaptive"` only: the scores it ranks and sums, `"class_attention"` or `"learned"` (a trained scorer as
            in `"learned"`). `"learned"` always uses the trained scorer.
        token_selector_temperature (`float`, *optional*, defaults to 1.0):
            Gumbel temperature (> 0) of the learned scores' straight-through top-k in training; anneal it with
            `SelectorTemperatureSchedule` (10 -> 0.1 as in SViTE+). Evaluation takes the top scores, no noise.
        token_selector_noise (`float`, *optional*, defaults to 1.0):
            Scale of the Gumbel noise on learned scores in training, in [0, 1]: 1.0 keeps a sample from the softmax
            of the scores, 0.0 their top `k` as evaluation does; `SelectorTemperatureSchedule` can anneal it.
        token_count_buckets (`int`, *optional*, defaults to 1):
            `"adaptive"` only: a batch is split into at most this many groups of similar kept counts after a pruning
            layer, each padded to its own largest count (1 pads the whole batch to its largest count). Groups trade
            padding for smaller batches and more kernel calls; on the CPU digits benchmark they did not pay (see
            docs/benchmarks.md), so they are off by default. Not applied when hidden states or attentions are
            requested.
        num_attention_heads_per_layer (`list[int]`, *optional*):
            Heads of each layer (one entry per layer, each at most `num_attention_heads`: slimming removes heads,
            it never adds them); absent means `num_attention_heads` everywhere. The head size stays
            `hidden_size / num_attention_heads`, so a layer with `h` heads projects to `h * head_size`.
        intermediate_size_per_layer (`list[int]`, *optional*):
            MLP width of each layer (one entry per layer, each at most `intermediate_size`); absent means
            `intermediate_size` everywhere.
        token_merge_r (`int` or `list[int]`, *optional*, defaults to 0):
            Token merging (ToMe): patch tokens merged away in every layer (an int), or per layer (a list of
            `num_hidden_layers` ints), between the attention block and the MLP, after that layer's drop at a pruning
            layer. 0 is off and computes exactly what it computed before merging existed. Each layer merges at most
            half its patch tokens. Works with any ViT/DeiT checkpoint without training; see
            docs/token_merging.md for what it combines with (not `attention_keep_rate < 1`, not `"adaptive"`).
        token_merge_proportional_attention (`bool`, *optional*, defaults to `True`):
            Add `log(size)` to the attention logits of a merged token (ToMe's proportional attention), so a token
            holding `s` patches gets the attention of `s` copies; an additive mask that keeps `sdpa` fused.
        dense_sparse_keep_rates (`list[float]`, *optional*):
            The token keep rates this checkpoint was trained to serve with one set of weights (SaiT dense/sparse
            training, `hf_trilevel.DenseSparseTraining`), densest first; rate 1.0 is the dense model (no token
            dropping, full attention). A record for cards and tools: the model runs at `token_keep_rate`, which
            `set_keep_rates` changes. None when the checkpoint was trained at one rate.

    Keep rates may be changed on a live model with `model.set_keep_rates(...)`; each forward reads them once. Read
    per-layer sizes through `layer_num_attention_heads(index)` and `layer_intermediate_size(index)`.
    """

    model_type = "trilevel_vit"
    plain_model_type = "vit"  # transformers' own type of this family, whose folders load as a conversion
    only_own_model_types = False  # ViT classes also take DeiT checkpoints without a distillation token ("deit")
    # Types of composite folders (CLIP's image-text model) whose `base_config_key` sub-config is this family's.
    composite_model_types = ()

    token_keep_rate: Any = 1.0
    token_prune_layers: Any = None
    token_fusion: Any = False
    attention_keep_rate: Any = 1.0
    token_selector: Any = "class_attention"
    token_keep_mass: Any = 1.0
    token_min_keep_rate: Any = 0.25
    token_importance: Any = "class_attention"
    token_selector_temperature: Any = 1.0
    token_count_buckets: Any = 1
    token_selector_noise: Any = 1.0
    num_attention_heads_per_layer: Any = None
    intermediate_size_per_layer: Any = None
    dense_sparse_keep_rates: Any = None
    token_merge_r: Any = 0
    token_merge_proportional_attention: Any = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # A plain ViT/DeiT config.json carries `"model_type": "vit"`, which would shadow ours on the instance; once
        # loaded into this class the checkpoint is a TriLevel one (and needs our weight-name conversions).
        vars(self).pop("model_type", None)
        if self.token_prune_layers is None:
            self.token_prune_layers = default_token_prune_layers(self.num_hidden_layers)
        self.check_trilevel_fields()

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        # A plain folder of the family is a supported conversion (shown as ours, so transformers does not warn); a
        # family refuses other types, whose missing weights transformers would initialise at random with a warning.
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type")
        if model_type in cls.composite_model_types and isinstance(config_dict.get(cls.base_config_key), dict):
            # The vision tower's config of an image-text folder; an image classifier's labels live at the top.
            labels = {name: config_dict[name] for name in COMPOSITE_LABEL_FIELDS if name in config_dict}
            config_dict = {**config_dict[cls.base_config_key], **labels}
            model_type = config_dict.get("model_type")
        if model_type == cls.plain_model_type:
            config_dict = {**config_dict, "model_type": cls.model_type}
        elif cls.only_own_model_types and model_type not in (None, cls.model_type):
            raise ValueError(
                f"{pretrained_model_name_or_path} holds a {model_type!r} model; {cls.__name__} loads "
                f"{cls.plain_model_type!r} and {cls.model_type!r} folders only (use the TriLevel class of that family)."
            )
        return config_dict, kwargs

    def validate_architecture(self) -> None:
        """Class validator: positive sizes, heads dividing the width, patches tiling the image, per-layer lists."""
        super().validate_architecture()
        for name in ("num_hidden_layers", "num_attention_heads", "hidden_size", "num_channels"):
            check_int(name, getattr(self, name), low=1)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads}): every head gets hidden_size / num_attention_heads channels."
            )
        image, patch = as_pair(self.image_size), as_pair(self.patch_size)
        if min(*image, *patch) < 1 or image[0] % patch[0] or image[1] % patch[1]:
            raise ValueError(
                f"`image_size` ({image[0]}x{image[1]}) must be divisible by `patch_size` ({patch[0]}x{patch[1]}) "
                "into whole patches."
            )
        for name in PER_LAYER_FIELDS:
            uniform = name.removesuffix("_per_layer")  # the full width each entry narrows
            sizes = check_per_layer_sizes(name, getattr(self, name), self.num_hidden_layers)
            check_per_layer_limit(name, sizes, uniform, getattr(self, uniform))

    def validate_token_sparsity(self) -> None:
        """Class validator: keep rates in (0, 1], boolean fusion, pruning layers in range, a registered selector."""
        SparsitySettings.from_config(self)
        check_token_selector(self.token_selector)
        if self.token_importance not in TOKEN_IMPORTANCES:
            raise ValueError(
                f"`token_importance` must be one of {list(TOKEN_IMPORTANCES)} (the scores `token_selector="
                f"'adaptive'` ranks), got {self.token_importance!r}."
            )
        if self.uses_learned_scores() and not self.token_prune_layers:
            raise ValueError(
                f"`token_selector={self.token_selector!r}` with learned scores needs at least one pruning layer: "
                f"`token_prune_layers` is empty, so there is no scorer to train. Pass layers in "
                f"[0, {self.num_hidden_layers - 1}] or use `token_selector='class_attention'`."
            )
        check_dense_sparse_keep_rates(self.dense_sparse_keep_rates)

    def uses_learned_scores(self) -> bool:
        """Whether the pruning layers own a trained scorer (`"learned"`, or `"adaptive"` over learned importance)."""
        return self.token_selector in LEARNED_SCORE_SELECTORS or (
            self.token_selector == "adaptive" and self.token_importance == "learned"
        )

    def check_trilevel_fields(self) -> None:
        """Run the TriLevel validators (raising plain `ValueError`) and normalise the values they accept."""
        self.validate_architecture()
        self.validate_token_sparsity()
        settings = SparsitySettings.from_config(self)
        self.token_keep_rate, self.attention_keep_rate = settings.token_keep_rate, settings.attention_keep_rate
        self.token_prune_layers = list(settings.token_prune_layers)
        self.token_keep_mass, self.token_min_keep_rate = settings.token_keep_mass, settings.token_min_keep_rate
        self.token_selector_temperature = settings.token_selector_temperature
        self.token_selector_noise = settings.token_selector_noise
        for name in PER_LAYER_FIELDS:
            setattr(self, name, check_per_layer_sizes(name, getattr(self, name), self.num_hidden_layers))
        self.dense_sparse_keep_rates = check_dense_sparse_keep_rates(self.dense_sparse_keep_rates)
        if isinstance(self.token_merge_r, (list, tuple)):
            self.token_merge_r = check_merge_r(self.token_merge_r, self.num_hidden_layers)

    def layer_token_merge_r(self, index: int) -> int:
        """Patch tokens layer `index` merges away (`token_merge_r`, uniform or per layer); 0 when it merges none."""
        check_int("layer index", index, low=0, high=self.num_hidden_layers - 1)
        return check_merge_r(self.token_merge_r, self.num_hidden_layers)[index]

    def merges_tokens(self) -> bool:
        """Whether any layer merges tokens (`token_merge_r` above 0 somewhere)."""
        return any(check_merge_r(self.token_merge_r, self.num_hidden_layers))

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches, never dropped or merged: ViT's class token (DeiT: 2; a family without: 0)."""
        return 1

    def layer_num_attention_heads(self, index: int) -> int:
        """Attention heads of layer `index`: the one place every reader (model, FLOPs, cards) takes them from."""
        return self._layer_size("num_attention_heads", index)

    def layer_intermediate_size(self, index: int) -> int:
        """MLP width of layer `index`: the one place every reader (model, FLOPs, cards) takes it from."""
        return self._layer_size("intermediate_size", index)

    def _layer_size(self, name: str, index: int) -> int:
        check_int("layer index", index, low=0, high=self.num_hidden_layers - 1)
        per_layer = getattr(self, f"{name}_per_layer")
        return getattr(self, name) if per_layer is None else per_layer[index]


__all__ = ["SparsitySettings", "TriLevelViTConfig", "check_keep_rate"]
