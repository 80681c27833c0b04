"""The recipe's own argument groups: which model to start from (`ModelArguments`), which images to train on
(`DataArguments`) and the consent to replace an earlier run (`RunArguments`).

Parsed with `transformers.HfArgumentParser` beside `TrainingArguments` and each technique's arguments
(`hf_trilevel.recipe.parsing`). A field's name is its flag (`--image_column_name`), so every message names the flag as
it is typed. Each group checks its own fields in `__post_init__`; checks across groups, and those that read a
checkpoint's config or a folder, are `hf_trilevel.recipe.checks.check_arguments`. docs/flags.md lists every flag.
"""

from dataclasses import dataclass, field

from ..image_data import REDUNDANT_DIGITS, TRAIN_AUGMENTATIONS
from ..modeling.configuration_trilevel_vit import TriLevelViTConfig
from ..modeling.token_selectors import TOKEN_IMPORTANCES, registered_token_selectors
from ..modeling.value_checks import check_fraction, check_int
from .model import DEFAULT_MODEL_FAMILY, build_trilevel_config, family_named, family_names, scratch_fields

# The digits model, used when training from scratch without --config_name.
SCRATCH_SHAPE = {
    "image_size": 32,
    "patch_size": 4,
    "hidden_size": 128,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "intermediate_size": 256,
}
SCRATCH_SPARSITY = {"token_keep_rate": 0.7, "attention_keep_rate": 0.5}
# Config fields a flag may set, over a checkpoint's or `--config_name`'s values too; the config validates them.
SPARSITY_FIELDS = (
    "token_keep_rate",
    "token_prune_layers",
    "token_fusion",
    "attention_keep_rate",
    "token_selector",
    "token_keep_mass",
    "token_min_keep_rate",
    "token_importance",
    "token_count_buckets",
    "token_merge_r",
    "token_merge_proportional_attention",
)

# Selector settings and the built-in selectors that read them; given with another built-in selector (which ignores
# them) they are refused (`hf_trilevel.recipe.checks.check_selector_settings`). A registered selector of a user's own
# receives the whole config, so it may read any of them.
SELECTOR_SETTINGS = {
    "token_keep_mass": ("adaptive",),
    "token_min_keep_rate": ("adaptive",),
    "token_importance": ("adaptive",),
    "token_count_buckets": ("adaptive",),
}


def choices(names) -> str:
    """`{a,b,c}`: argparse's way of listing the values a flag takes, for fields the config checks instead."""
    return "{" + ",".join(names) + "}"


@dataclass
class ModelArguments:
    """Which model to start from: a checkpoint, a config, or a new model of the shape given here."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A TriLevel checkpoint, or a plain one of a TriLevel family (ViT, DeiT, DINOv2, ...; converted on "
            "load), as a folder or a Hub id. Omit it to train from scratch (from --config_name, or the shape below)."
        },
    )
    config_name: str | None = field(
        default=None,
        metadata={"help": "A config of a TriLevel family, TriLevel or plain (folder, config.json or Hub id), instead."},
    )
    # Not argparse `choices`: a JSON file is not checked against them, so `__post_init__` checks both forms. Default
    # None, read as vit, so that a family given with a folder of another family can be told apart and refused.
    model_family: str | None = field(
        default=None,
        metadata={
            "help": "From scratch: the TriLevel family to build (default: vit). A checkpoint's or --config_name's "
            "family comes from its config.json.",
            "metavar": choices(family_names()),
        },
    )
    image_processor_name: str | None = field(
        default=None,
        metadata={"help": "Image processor whose mean and std to use (default: the checkpoint's, or 0.5)."},
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache Hub downloads."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of a Hub checkpoint."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private checkpoints and data sets."})
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Allow custom code of the image processor. The model always runs this package's TriLevel "
            "classes, never a checkpoint's code."
        },
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Replace a checkpoint's classifier whose number of labels differs from the data's."},
    )
    image_size: int | None = field(default=None, metadata={"help": "From scratch: input side in pixels (32)."})
    patch_size: int | None = field(default=None, metadata={"help": "From scratch: patch side; divides image_size (4)."})
    hidden_size: int | None = field(default=None, metadata={"help": "From scratch: transformer width (128)."})
    num_hidden_layers: int | None = field(default=None, metadata={"help": "From scratch: number of layers (6)."})
    num_attention_heads: int | None = field(
        default=None, metadata={"help": "From scratch: attention heads; divides hidden_size (4)."}
    )
    intermediate_size: int | None = field(default=None, metadata={"help": "From scratch: MLP hidden width (256)."})
    token_keep_rate: float | None = field(
        default=None,
        metadata={"help": "Share of patch tokens kept at each pruning layer, in (0, 1] (default: 0.7 from scratch)."},
    )
    token_prune_layers: list[int] | None = field(
        default=None,
        metadata={"help": "0-indexed pruning layers, e.g. `1 3 4` (default: 1/4, 1/2 and 3/4 of the depth)."},
    )
    token_fusion: bool | None = field(
        default=None,
        metadata={
            "help": "Fuse the dropped tokens into one extra token instead of discarding them (default: off).",
            "nargs": "?",
            "const": True,
        },
    )
    attention_keep_rate: float | None = field(
        default=None,
        metadata={"help": "Share of attention connections kept per query, in (0, 1]; 1 is dense (scratch: 0.5)."},
    )
    # No argparse `choices` for the next two: the config checks them, so flags and a JSON file get one message.
    token_selector: str | None = field(
        default=None,
        metadata={
            "help": "What picks the kept tokens: class_attention (Tri-Level E-ViT, the default), learned (a small "
            "scorer per pruning layer, trained end to end) or adaptive (a per-image count from --token_keep_mass).",
            "metavar": choices(registered_token_selectors()),
        },
    )
    token_keep_mass: float | None = field(
        default=None,
        metadata={
            "help": "adaptive: each image keeps its fewest patches whose importance mass reaches this share, in "
            "(0, 1]; --token_keep_rate caps the count (default 1.0: the fixed rate)."
        },
    )
    token_min_keep_rate: float | None = field(
        default=None,
        metadata={"help": "adaptive: the fewest patches an image keeps, as a share of its patches, in (0, 1] (0.25)."},
    )
    token_importance: str | None = field(
        default=None,
        metadata={
            "help": "adaptive: the scores it ranks and sums, class_attention (default) or learned.",
            "metavar": choices(TOKEN_IMPORTANCES),
        },
    )
    token_count_buckets: int | None = field(
        default=None,
        metadata={"help": "adaptive: batch groups of similar kept counts, at most this many, >= 1 (default 4)."},
    )
    token_merge_r: list[int] | None = field(
        default=None,
        metadata={
            "help": "Token merging (ToMe): patch tokens merged away in every layer, an integer >= 0, or one per "
            "layer (`8 8 6 6 ...`); 0 is off. From scratch, merging replaces the default dropping and attention "
            "sparsity (keep rates 1.0) unless --token_keep_rate / --attention_keep_rate are given.",
            "nargs": "+",
        },
    )
    token_merge_proportional_attention: bool | None = field(
        default=None,
        metadata={
            "help": "Token merging: add log(size) to a merged token's attention logits (default: on).",
            "nargs": "?",
            "const": True,
        },
    )

    def __post_init__(self):
        shape_given = [name for name in SCRATCH_SHAPE if getattr(self, name) is not None]
        if shape_given and (self.model_name_or_path or self.config_name):
            raise ValueError(
                f"`{shape_given[0]}` shapes a model trained from scratch; with `model_name_or_path` or `config_name` "
                "the shape comes from that checkpoint or config."
            )
        for name in shape_given:
            check_int(name, getattr(self, name), low=1)
        if self.model_family is not None:
            family_named(self.model_family)  # a name not registered
        if not (self.model_name_or_path or self.config_name):  # a shape the family's config cannot take
            scratch_fields(family_named(self.model_family or DEFAULT_MODEL_FAMILY), self.scratch_config())
        if isinstance(self.token_merge_r, int) and not isinstance(self.token_merge_r, bool):
            self.token_merge_r = [self.token_merge_r]  # a JSON file's `"token_merge_r": 8`, as the flag's `8`

    def hub_kwargs(self) -> dict:
        """What `from_pretrained` and `load_dataset` take to reach the Hub (or its cache)."""
        return {"cache_dir": self.cache_dir, "revision": self.model_revision, "token": self.token}

    def scratch_config(self) -> dict:
        """Config fields of a model trained from scratch: the shape flags (or the digits model) and its keep rates."""
        shape = {name: getattr(self, name) or default for name, default in SCRATCH_SHAPE.items()}
        if self.merges_tokens():  # merging instead of the default dropping; flags given still win
            return {**shape, "token_keep_rate": 1.0, "attention_keep_rate": 1.0}
        return {**shape, **SCRATCH_SPARSITY}

    def merges_tokens(self) -> bool:
        """Whether `token_merge_r` asks some layer to merge (values the config refuses are left to it)."""
        merge_r = self.token_merge_r
        return isinstance(merge_r, list) and any(r != 0 for r in merge_r)

    def config_overrides(self) -> dict:
        """The sparsity and selector fields given as flags; they win over a checkpoint's or config's values."""
        overrides = {name: getattr(self, name) for name in SPARSITY_FIELDS if getattr(self, name) is not None}
        merge_r = overrides.get("token_merge_r")
        if isinstance(merge_r, list) and len(merge_r) == 1:  # one value: the same r in every layer
            overrides["token_merge_r"] = merge_r[0]
        return overrides

    def build_config(self, label_names: list[str]) -> TriLevelViTConfig:
        """The config from the checkpoint, `config_name` or the scratch shape, with the sparsity fields given here
        and the data's label names."""
        return build_trilevel_config(
            label_names,
            model_name_or_path=self.model_name_or_path,
            config_name=self.config_name,
            scratch=self.scratch_config(),
            overrides=self.config_overrides(),
            ignore_mismatched_sizes=self.ignore_mismatched_sizes,
            model_family=self.model_family,
            **self.hub_kwargs(),
        )


@dataclass
class DataArguments:
    """Which images to train and evaluate on, and how to augment them."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A data set: Hub id, local folder, or a folder written by `save_to_disk`. Default, with "
            "no --train_dir either: the digits bundled with scikit-learn. `digits-redundant`: those digits with "
            "their typical training images repeated as near-copies (10x; the same images for every --seed, the "
            "split by --split_seed), for data pruning."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The data set's configuration name."})
    train_dir: str | None = field(default=None, metadata={"help": "Image folder of training data (class sub-folders)."})
    validation_dir: str | None = field(default=None, metadata={"help": "Image folder of validation data."})
    train_val_split: float | None = field(
        default=None,
        metadata={
            "help": "Share of train held out for validation when there is no validation split, in [0, 1) (0.15; "
            "the digits: 0.2, stratified). 0 keeps none."
        },
    )
    split_seed: int = field(
        default=0, metadata={"help": "Seed of that split and of sample limits; apart from --seed so runs compare."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on a random subset of this size."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on a random subset of this size."})
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the labels."})
    augmentation: str = field(
        default="auto",
        metadata={
            "help": "Training augmentation: crop_flip (random resized crop + horizontal flip), crop (no flip: "
            "digits, text), affine (small rotation/scale/shift), none. auto: affine for the digits, crop_flip else.",
            "choices": ["auto", *TRAIN_AUGMENTATIONS],
        },
    )
    min_crop_scale: float = field(default=0.08, metadata={"help": "Smallest area share a random crop keeps, (0, 1]."})
    check_images: bool = field(
        default=True, metadata={"help": "Decode every image once first; drop unreadable files with a warning."}
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for --check_images."})

    def __post_init__(self):
        if self.dataset_name is not None and (self.train_dir or self.validation_dir):
            raise ValueError("give either `dataset_name` or `train_dir`/`validation_dir`, not both.")
        for name in ("max_train_samples", "max_eval_samples", "preprocessing_num_workers"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), low=1)
        check_int("split_seed", self.split_seed, 0, 2**32 - 1)
        if self.train_val_split is not None:
            check_fraction("train_val_split", self.train_val_split, allow_zero=True, allow_one=False)
        check_fraction("min_crop_scale", self.min_crop_scale)
        if self.augmentation not in ("auto", *TRAIN_AUGMENTATIONS):
            raise ValueError(
                f"`augmentation` must be one of auto, {', '.join(TRAIN_AUGMENTATIONS)}; got {self.augmentation!r}."
            )

    def uses_digits(self) -> bool:
        """No data set named (or `digits-redundant`): the digits bundled with scikit-learn, built in memory."""
        named = self.dataset_name is not None and not self.uses_redundant_digits()
        return not named and self.train_dir is None and self.validation_dir is None

    def uses_redundant_digits(self) -> bool:
        """`--dataset_name digits-redundant` (`hf_trilevel.image_data.load_redundant_digits_dataset`)."""
        return self.dataset_name == REDUNDANT_DIGITS

    def training_augmentation(self) -> str:
        """`augmentation`, with `auto` resolved: flips and crops would turn a 6 into a 2 or cut a 7 in half, so the
        digits get small affine moves and other data random crops and flips."""
        if self.augmentation != "auto":
            return self.augmentation
        return "affine" if self.uses_digits() else "crop_flip"


@dataclass
class RunArguments:
    """Consent to replace an earlier run's results (transformers 5 dropped `overwrite_output_dir`)."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train into an --output_dir that holds a saved model, replacing it; a fresh run also deletes the "
            "earlier run's checkpoint-* folders there (not one it starts from)."
        },
    )


__all__ = [
    "SCRATCH_SHAPE",
    "SCRATCH_SPARSITY",
    "SELECTOR_SETTINGS",
    "SPARSITY_FIELDS",
    "DataArguments",
    "ModelArguments",
    "RunArguments",
]
