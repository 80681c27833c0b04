"""Image data for training scripts, apart from the model and training core: load and check image-classification
data sets (`loading`), augment and resize them with PIL (`transforms`), batch them for a `Trainer`
(`preprocessing`), and the digits bundled with scikit-learn (`digits`), a real data set that needs no network, with a
redundant variant for data-level experiments (`redundant_digits`).

Not to be confused with the *data level* of Tri-Level E-ViT (which training examples to skip), which lives in
`hf_trilevel.example_pruning.pruner`. Nothing in the model's remote-code set imports this package.
"""

from .digits import DIGIT_NAMES, load_digits_dataset
from .loading import (
    IMAGE,
    LABEL,
    check_splits,
    drop_unreadable_images,
    encode_labels,
    is_missing_local_path,
    limit_and_check_splits,
    load_image_dataset,
    select_image_and_label,
    split_off_validation,
    take_samples,
)
from .preprocessing import AugmentedSplit, attach_transforms, collate, preprocess
from .redundant_digits import REDUNDANT_DIGITS, load_redundant_digits_dataset
from .transforms import TRAIN_AUGMENTATIONS, RandomSource, eval_transforms, train_transforms

__all__ = [
    "DIGIT_NAMES",
    "IMAGE",
    "LABEL",
    "REDUNDANT_DIGITS",
    "TRAIN_AUGMENTATIONS",
    "AugmentedSplit",
    "RandomSource",
    "attach_transforms",
    "check_splits",
    "collate",
    "drop_unreadable_images",
    "encode_labels",
    "eval_transforms",
    "is_missing_local_path",
    "limit_and_check_splits",
    "load_digits_dataset",
    "load_image_dataset",
    "load_redundant_digits_dataset",
    "preprocess",
    "select_image_and_label",
    "split_off_validation",
    "take_samples",
    "train_transforms",
]
