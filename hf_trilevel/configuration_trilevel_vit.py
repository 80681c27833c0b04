"""Configuration of the TriLevel ViT: a `ViTConfig` plus the token- and attention-level sparsity settings.

This file is part of the remote-code set copied into every saved checkpoint, so it imports only `transformers`
and the standard library.
"""

import math
import numbers
from dataclasses import dataclass

from transformers import ViTConfig


def default_token_prune_layers(num_hidden_layers: int) -> list[int]:
    """Pruning positions at a quarter, half and three quarters of the depth.

    A 12-layer model gets [3, 6, 9] as in Tri-Level E-ViT and EViT; shallower models get the same proportions,
    so any plain ViT checkpoint loads with defaults (for example 6 layers -> [1, 3, 4]).
    """
    return sorted({num_hidden_layers * quarter // 4 for quarter in (1, 2, 3)})


def check_keep_rate(name: str, value: object) -> float:
    """Return `value` as a float, or raise `ValueError` naming `name` unless it is a number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a float in (0, 1], got {value!r} of type {type(value).__name__}.")
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(f"`{name}` must be in (0, 1] (1.0 keeps everything), got {value!r}.")
    return float(value)


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

    @classmethod
    def from_config(cls, config: "TriLevelViTConfig") -> "SparsitySettings":
        """Validated settings; catches values assigned to the config directly, which bypass its constructor."""
        if not isinstance(config.token_fusion, bool):
            raise ValueError(f"`token_fusion` must be True or False, got {config.token_fusion!r}.")
        return cls(
            check_keep_rate("token_keep_rate", config.token_keep_rate),
            check_keep_rate("attention_keep_rate", config.attention_keep_rate),
            config.token_fusion,
            tuple(check_token_prune_layers(config.token_prune_layers, config.num_hidden_layers)),
        )


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
            Fuse the dropped tokens into one extra token (their mean weighted by class-token attention, EViT-style)
            instead of discarding them.
        attention_keep_rate (`float`, *optional*, defaults to 1.0):
            Fraction of the patch connections kept per query row among the kept tokens, in (0, 1]; the class (and
            fused) token's connections are always kept. 1.0 is dense.

    Keep rates may be changed on a live model with `model.set_keep_rates(...)`; each forward reads them once.
    """

    model_type = "trilevel_vit"

    token_keep_rate: float = 1.0
    token_prune_layers: list[int] | None = None
    token_fusion: bool = False
    attention_keep_rate: float = 1.0

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
        # Loading a plain ViT/DeiT checkpoint into TriLevel classes is a supported conversion, not a mismatch:
        # present its config as ours so transformers does not warn that the model types differ.
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") == "vit":
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs

    def check_trilevel_fields(self) -> None:
        """Validate the sparsity fields and the geometry they depend on; raise `ValueError` naming the field."""
        for name in ("num_hidden_layers", "num_attention_heads", "hidden_size", "num_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        settings = SparsitySettings.from_config(self)
        self.token_keep_rate, self.attention_keep_rate = settings.token_keep_rate, settings.attention_keep_rate
        self.token_prune_layers = list(settings.token_prune_layers)


__all__ = ["SparsitySettings", "TriLevelViTConfig"]
