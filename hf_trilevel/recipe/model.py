"""What a training script builds before `Trainer.train()`: the TriLevel config, model and image processor.

From a checkpoint (folder, file or Hub id) or a `--config_name` of any family in `hf_trilevel.modeling.FAMILY_CLASSES`,
TriLevel or plain transformers (ViT, DeiT, DINOv2, ...), or from a shape for training from scratch in the family
`--model_family` names, with the data's label names. Everything family-specific is read from the registry entry (its
config class, its classifier class and that class's weight names), so a new entry needs nothing here. The flags'
sparsity and selector fields are checked against the config they change before any data loads
(`check_config_overrides`); a local checkpoint's weight files are checked against that config first
(`weight_checks.py`). Errors are `ValueError`s naming the arguments in backticks.
"""

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path

from huggingface_hub.errors import StrictDataclassError
from transformers import AutoImageProcessor, PretrainedConfig, PreTrainedModel, ViTImageProcessorPil

from ..image_data.loading import is_missing_local_path
from ..modeling import FAMILY_CLASSES, FamilyClasses, family_of_config, family_of_model_type
from ..modeling.configuration_trilevel_vit import TriLevelViTConfig
from ..modeling.value_checks import as_pair
from .weight_checks import check_checkpoint_weights

# The ViT family's types: what tools that load ViT classes only accept (`hf-trilevel visualize`). The example takes
# any family's (`accepted_model_types`).
CHECKPOINT_MODEL_TYPES = FAMILY_CLASSES[TriLevelViTConfig.model_type].model_types
DEFAULT_MODEL_FAMILY = "vit"  # trained from scratch when neither `model_family` nor a checkpoint or config names one
# A config field from which a family derives its MLP width (DINOv2: `intermediate_size = hidden_size * mlp_ratio`).
MLP_RATIO_FIELD = "mlp_ratio"


def family_names() -> tuple[str, ...]:
    """The registered families' names (`--model_family`'s choices), ViT first."""
    return tuple(family.name for family in FAMILY_CLASSES.values())


def accepted_model_types() -> tuple[str, ...]:
    """Every `model_type` a checkpoint or config may carry: each registered family's TriLevel and plain ones."""
    return tuple(model_type for family in FAMILY_CLASSES.values() for model_type in family.model_types)


def family_named(name: str, argument: str = "model_family") -> FamilyClasses:
    """The registered family called `name`; `argument` names the flag in the error."""
    found = next((family for family in FAMILY_CLASSES.values() if family.name == name), None)
    if found is None:
        raise ValueError(f"`{argument}` must be one of {', '.join(family_names())}; got {name!r}.")
    return found


def read_vit_config(source: str, argument: str = "model_name_or_path", **hub_kwargs) -> dict:
    """The raw `config.json` of `source` (folder, file or Hub id), which must describe a model of a registered family
    (`hf_trilevel.modeling.FAMILY_CLASSES`: TriLevel ViT, DeiT, DINOv2 ..., or their plain transformers types).

    `argument` names `source` in error messages; `hub_kwargs` (`cache_dir`, `revision`, `token`) go to transformers.
    """
    if is_missing_local_path(source):
        raise ValueError(f"`{argument}` {source!r}: no such folder or file.")
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(source, **hub_kwargs)
    except (OSError, ValueError) as error:
        raise ValueError(f"`{argument}` {source!r}: cannot read its config: {error}") from error
    model_type = config_dict.get("model_type")
    if model_type is None:
        raise ValueError(f"`{argument}` {source!r} has no config.json with a `model_type`; is it a model folder?")
    if family_of_model_type(model_type) is None:
        raise ValueError(
            f"`{argument}` {source!r} is a {model_type!r} model; TriLevel ViTs start from a TriLevel or a plain "
            f"checkpoint of a registered family ({', '.join(family_names())}): model_type one of "
            f"{', '.join(map(repr, accepted_model_types()))}."
        )
    return config_dict


def model_family_of(
    model_name_or_path: str | None = None,
    config_name: str | None = None,
    model_family: str | None = None,
    **hub_kwargs,
) -> FamilyClasses:
    """The family of the run's model: that of `config_name`'s and `model_name_or_path`'s `config.json` (TriLevel or
    plain type), else `model_family`'s, else ViT's.

    A folder's family comes from its config, so `model_family` only chooses the family of a model trained from
    scratch; given with a folder of another family, or a config of another family than the checkpoint's, the run is
    refused naming both arguments instead of loading one family's weights into another's classes.
    """
    families = {}
    for argument, source in (("config_name", config_name), ("model_name_or_path", model_name_or_path)):
        if source is not None:
            model_type = read_vit_config(source, argument, **hub_kwargs)["model_type"]
            families[argument] = (f"`{argument}` {source!r} ({model_type!r})", family_of_model_type(model_type))
    if model_family is not None:
        families["model_family"] = (f"`model_family` {model_family!r}", family_named(model_family))
    (first, family), *others = families.values() or [("", family_named(DEFAULT_MODEL_FAMILY))]
    for other, other_family in others:
        if other_family is not family:
            raise ValueError(
                f"{first} is a {family.name} model but {other} a {other_family.name} one; give arguments of one "
                "family (a folder's family comes from its config.json, `model_family` only shapes a model trained "
                "from scratch)."
            )
    return family


def scratch_fields(family: FamilyClasses, scratch: Mapping[str, object]) -> dict:
    """`scratch` (shape flags such as `hidden_size`, `intermediate_size`) as `family`'s config class takes them.

    A family whose config derives the MLP width from a ratio (`MLP_RATIO_FIELD`, DINOv2's `mlp_ratio`) gets that
    ratio instead of `intermediate_size`, which must then be a whole multiple of `hidden_size` (`ValueError` naming
    both flags and `model_family`).
    """
    fields = dict(scratch)
    ratio_field = any(field.name == MLP_RATIO_FIELD for field in dataclasses.fields(family.config_class))
    if not ratio_field or fields.get("intermediate_size") is None:
        return fields
    intermediate_size = fields.pop("intermediate_size")
    hidden_size = fields.get("hidden_size") or family.config_class().hidden_size
    if intermediate_size % hidden_size:
        raise ValueError(
            f"`model_family` {family.name} derives the MLP width as `hidden_size` * {MLP_RATIO_FIELD}, so "
            f"`intermediate_size` ({intermediate_size}) must be a whole multiple of `hidden_size` ({hidden_size}); "
            f"give e.g. `intermediate_size` {max(1, round(intermediate_size / hidden_size)) * hidden_size}."
        )
    return {**fields, MLP_RATIO_FIELD: intermediate_size // hidden_size}


def check_classifier_size(checkpoint: dict, num_labels: int, ignore_mismatched_sizes: bool) -> None:
    """A checkpoint's classifier (raw `config.json` dict) must fit the data's labels unless it may be replaced."""
    has_classifier = any("ForImageClassification" in name for name in checkpoint.get("architectures") or [])
    checkpoint_labels = len(checkpoint.get("id2label") or {}) or checkpoint.get("num_labels")
    if has_classifier and checkpoint_labels != num_labels and not ignore_mismatched_sizes:
        raise ValueError(
            f"`model_name_or_path` has a classifier for {checkpoint_labels} labels but the data has {num_labels}; "
            "pass `ignore_mismatched_sizes` to train a new classifier."
        )


def build_trilevel_config(
    label_names: list[str],
    *,
    model_name_or_path: str | None = None,
    config_name: str | None = None,
    scratch: Mapping[str, object] | None = None,
    overrides: Mapping[str, object] | None = None,
    ignore_mismatched_sizes: bool = False,
    model_family: str | None = None,
    **hub_kwargs,
) -> TriLevelViTConfig:
    """The model's config, of its family's config class (`model_family_of`), with the data's label names (saved with
    the checkpoint, used by pipelines).

    From `config_name` if given, else from `model_name_or_path`'s config, else the `model_family` config class built
    from `scratch` (`scratch_fields`); `overrides` (e.g. keep rates given on a command line) win over all three. A
    checkpoint's classifier must fit `label_names` unless `ignore_mismatched_sizes`.
    """
    labels = {  # num_labels follows from id2label
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: index for index, name in enumerate(label_names)},
    }
    overrides = dict(overrides or {})
    family = model_family_of(model_name_or_path, config_name, model_family, **hub_kwargs)
    if model_name_or_path is not None:
        checkpoint = read_vit_config(model_name_or_path, "model_name_or_path", **hub_kwargs)
        check_classifier_size(checkpoint, len(label_names), ignore_mismatched_sizes)
    source = config_name or model_name_or_path
    if source is None:
        return family.config_class(**{**scratch_fields(family, scratch or {}), **overrides}, **labels)
    argument = "config_name" if config_name is not None else "model_name_or_path"
    try:
        config = family.config_class.from_pretrained(source, **hub_kwargs, **labels, **overrides)
    except StrictDataclassError as error:  # not a ValueError: the config's type checks (`@strict`)
        raise invalid_config_error(error, argument, source, **hub_kwargs) from error
    config.check_trilevel_fields()  # from_pretrained sets keyword arguments after the config validated itself
    return config


def check_config_overrides(
    overrides: Mapping[str, object],
    *,
    model_name_or_path: str | None = None,
    config_name: str | None = None,
    scratch: Mapping[str, object] | None = None,
    model_family: str | None = None,
    **hub_kwargs,
) -> TriLevelViTConfig:
    """Refuse `overrides` (e.g. `token_selector`, `token_keep_mass` from a command line) that the config they change
    refuses, before a script loads its data: `build_trilevel_config` needs the data's label names, so without this
    check a bad field would only fail after the data loaded.

    The config is the one `build_trilevel_config` starts from (`config_name`, else `model_name_or_path`'s, else
    `scratch` in the `model_family`), so combinations are checked too: `token_selector="learned"` against a
    checkpoint without pruning layers, `model_family` against a folder of another family. Raises the config's
    `ValueError`, which names the field. Returns the checked config (with the checkpoint's labels, not yet the
    data's).
    """
    family = model_family_of(model_name_or_path, config_name, model_family, **hub_kwargs)
    source = config_name or model_name_or_path
    if source is None:
        return family.config_class(**{**scratch_fields(family, scratch or {}), **overrides})
    argument = "config_name" if config_name is not None else "model_name_or_path"
    try:
        config = family.config_class.from_pretrained(source, **hub_kwargs, **overrides)
    except StrictDataclassError as error:
        raise invalid_config_error(error, argument, source, **hub_kwargs) from error
    config.check_trilevel_fields()
    return config


def selector_text(config: TriLevelViTConfig) -> str:
    """`selector adaptive (token_keep_mass=0.9, ...)`: the token selector and the settings it reads, for a run's
    summary line."""
    selector = getattr(config, "token_selector", "class_attention")
    if selector != "adaptive":
        return f"selector {selector}"
    settings = ", ".join(
        f"{name}={getattr(config, name)}"
        for name in ("token_keep_mass", "token_min_keep_rate", "token_importance")
        if hasattr(config, name)
    )
    return f"selector adaptive ({settings})"


def merge_text(config: TriLevelViTConfig) -> str:
    """`token merging r=8 in every layer (proportional attention on)`, or `token merging off`: the merge counts
    (`token_merge_r`) for a run's summary line."""
    if not config.merges_tokens():
        return "token merging off"
    merge_r = config.token_merge_r
    amount = f"r={merge_r} in every layer" if isinstance(merge_r, int) else f"r per layer {list(merge_r)}"
    proportional = "on" if config.token_merge_proportional_attention else "off"
    return f"token merging {amount} (proportional attention {proportional})"


def invalid_config_error(error: StrictDataclassError, argument: str, source: str, **hub_kwargs) -> ValueError:
    """A `ValueError` naming the flag, the config file, the field and its value, for a config that fails the
    config class's `@strict` type checks (`huggingface_hub.dataclasses`)."""
    cause = error.__cause__ or error
    found = re.search(r"field '(\w+)'", str(error))
    config_file = _config_file(source)
    if found is None:  # a check over several fields
        return ValueError(f"`{argument}` {source!r}: {config_file} is not a valid config: {cause}")
    field_name = found[1]
    try:
        value = PretrainedConfig.get_config_dict(source, **hub_kwargs)[0].get(field_name)
    except (OSError, ValueError):
        value = None
    return ValueError(
        f"`{argument}` {source!r}: in {config_file}, '{field_name}' is {value!r}, which the config refuses "
        f"({type(cause).__name__}: {cause}); fix that field of the file."
    )


def _config_file(source: str) -> str:
    """The `config.json` a config source means: the file itself, the one in a folder, or a Hub repo's."""
    path = Path(source).expanduser()
    return str(path / "config.json") if path.is_dir() else str(path) if path.is_file() else f"{source}/config.json"


def load_trilevel_model(
    config: TriLevelViTConfig,
    model_name_or_path: str | None = None,
    *,
    ignore_mismatched_sizes: bool = False,
    config_argument: str | None = None,
    **hub_kwargs,
) -> PreTrainedModel:
    """A new model for `config`, or the checkpoint's weights (TriLevel or plain) in this package's classes: the
    image classifier of `config`'s family (`hf_trilevel.modeling.FAMILY_CLASSES`).

    A local folder's weights are checked first (`check_checkpoint_weights`); `config_argument` names the flag the
    config came from when it is not the checkpoint's own (`config_name`)."""
    classifier_class = family_of_config(config).classifier_class
    if model_name_or_path is None:
        return classifier_class(config)
    check_checkpoint_weights(
        model_name_or_path, config, ignore_mismatched_sizes=ignore_mismatched_sizes, config_argument=config_argument
    )
    try:
        return classifier_class.from_pretrained(
            model_name_or_path, config=config, ignore_mismatched_sizes=ignore_mismatched_sizes, **hub_kwargs
        )
    except OSError as error:
        raise ValueError(f"`model_name_or_path` {model_name_or_path!r}: cannot load weights: {error}") from error


def build_image_processor(
    config: TriLevelViTConfig,
    image_processor_name: str | None = None,
    model_name_or_path: str | None = None,
    *,
    trust_remote_code: bool = False,
    **hub_kwargs,
) -> tuple[ViTImageProcessorPil, str | None]:
    """A ViT image processor at the model's resolution with the named (or checkpoint's) normalisation, and a notice
    when the checkpoint has none (then mean = std = 0.5).

    It must resize to the model's `image_size`: `pipeline` resizes to the processor's size, and a processor at
    another size (a default one resizes to 224) makes the model refuse its input.
    """
    settings = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "rescale_factor": 1 / 255}
    source, notice = image_processor_name or model_name_or_path, None
    if source is not None:
        try:
            loaded = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code, **hub_kwargs)
        except (OSError, ValueError) as error:
            if image_processor_name:
                raise ValueError(f"`image_processor_name` {source!r}: cannot load it: {error}") from error
            notice = f"{source} has no image processor; normalising with mean = std = 0.5."
        else:
            for name in settings:
                if getattr(loaded, name, None) is not None:
                    settings[name] = getattr(loaded, name)
    height, width = as_pair(config.image_size)
    processor = ViTImageProcessorPil(
        do_resize=True, size={"height": height, "width": width}, do_rescale=True, do_normalize=True, **settings
    )
    return processor, notice


__all__ = [
    "CHECKPOINT_MODEL_TYPES",
    "DEFAULT_MODEL_FAMILY",
    "accepted_model_types",
    "build_image_processor",
    "build_trilevel_config",
    "check_classifier_size",
    "check_config_overrides",
    "family_named",
    "family_names",
    "load_trilevel_model",
    "merge_text",
    "model_family_of",
    "read_vit_config",
    "scratch_fields",
    "selector_text",
]
