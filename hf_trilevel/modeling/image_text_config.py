"""What the TriLevel image-text configs (CLIP's, SigLIP's) share: loading plain folders of their family, and the
sparsity fields forwarded to the vision config (the text tower has no patches, so the fields live on the vision
config; the composite config reads and writes them there).

This file is part of the remote-code set copied into CLIP and SigLIP checkpoints: it imports only the standard
library.
"""

from typing import Any

#: The TriLevel fields a composite config forwards to its vision config.
VISION_SPARSITY_FIELDS = (
    "token_keep_rate",
    "token_prune_layers",
    "token_fusion",
    "attention_keep_rate",
    "token_selector",
    "token_keep_mass",
    "token_min_keep_rate",
    "token_importance",
    "token_selector_temperature",
    "token_count_buckets",
    "token_selector_noise",
    "dense_sparse_keep_rates",
    "token_merge_r",
    "token_merge_proportional_attention",
)


class _VisionField:
    """A composite config's view of one vision-config field: reads and writes `vision_config.<name>`."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, config: Any, owner: type | None = None) -> Any:
        if config is None:
            return self
        return getattr(config.vision_config, self.name)

    def __set__(self, config: Any, value: Any) -> None:
        setattr(config.vision_config, self.name, value)


def forward_vision_fields(cls: type) -> type:
    """Class decorator: every `VISION_SPARSITY_FIELDS` name of the composite config `cls` reads and writes its vision
    config's field (set after `@strict`, so they are not dataclass fields and are not saved at the top level)."""
    for name in VISION_SPARSITY_FIELDS:
        field = _VisionField()
        field.__set_name__(cls, name)
        setattr(cls, name, field)
    return cls


class CompositeConfigLoading:
    """What a TriLevel image-text config adds to loading: a plain folder of its family (`plain_model_type`) loads as a
    conversion (shown as ours, so transformers does not warn), a folder of another type is refused by name."""

    plain_model_type = ""  # set by each family

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type")
        if model_type == cls.plain_model_type:
            config_dict = {**config_dict, "model_type": cls.model_type}
        elif model_type not in (None, cls.model_type):
            vision_class = cls.sub_configs_defaults["vision_config"].config_class.__name__
            raise ValueError(
                f"{pretrained_model_name_or_path} holds a {model_type!r} model; {cls.__name__} loads "
                f"{cls.plain_model_type!r} and {cls.model_type!r} folders only (a vision tower's folder loads with "
                f"{vision_class.replace('Config', 'Model')})."
            )
        return config_dict, kwargs

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        vars(self).pop("model_type", None)  # a plain config.json's model type would shadow ours on the instance
        # Sparsity fields given to the composite config were set on the vision config after it validated itself.
        self.vision_config.check_trilevel_fields()


__all__ = ["VISION_SPARSITY_FIELDS", "CompositeConfigLoading", "forward_vision_fields"]
