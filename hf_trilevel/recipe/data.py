"""The recipe's data: the user's images or the bundled digits as `{"train", "validation"}` splits of `image` and
ClassLabel `label` columns, limited and checked before the model is built.

The loading and checks themselves are `hf_trilevel.image_data`'s; this module picks them from the arguments. Notices
(labels encoded, unreadable images dropped) go to this module's logger.
"""

import logging

from datasets import DatasetDict
from transformers import TrainingArguments

from ..image_data import (
    DIGIT_NAMES,
    LABEL,
    check_splits,
    encode_labels,
    limit_and_check_splits,
    load_digits_dataset,
    load_image_dataset,
    load_redundant_digits_dataset,
    select_image_and_label,
    split_off_validation,
)
from ..modeling.value_checks import as_pair, check_fraction
from .arguments import DataArguments

logger = logging.getLogger(__name__)


def load_user_dataset(data_args: DataArguments, cache_dir: str | None = None, token: str | None = None) -> DatasetDict:
    """The user's data set or image folders as `{"train", "validation"}` splits with `image` and ClassLabel `label`
    columns (integer and string labels are encoded, with a notice)."""
    dataset = load_image_dataset(
        data_args.dataset_name,
        data_args.dataset_config_name,
        data_args.train_dir,
        data_args.validation_dir,
        cache_dir=cache_dir,
        token=token,
    )
    split = 0.15 if data_args.train_val_split is None else data_args.train_val_split
    dataset = split_off_validation(dataset, split, data_args.split_seed)
    dataset = select_image_and_label(dataset, data_args.image_column_name, data_args.label_column_name)
    dataset, notice = encode_labels(dataset, data_args.label_column_name)
    if notice:
        logger.warning(notice)
    return dataset


def label_names(dataset: DatasetDict | None) -> list[str]:
    """The class names of a loaded data set, or the digits' when there is none yet (they are built at the model's
    resolution, once the config is known)."""
    return DIGIT_NAMES if dataset is None else next(iter(dataset.values())).features[LABEL].names


def load_digits(data_args: DataArguments, image_size) -> DatasetDict:
    """The bundled digits (or their redundant variant) at the model's `image_size`, split stratified by
    `train_val_split` (default 0.2; the digits always keep a validation split)."""
    fraction = 0.2 if data_args.train_val_split is None else data_args.train_val_split
    check_fraction("train_val_split", fraction, allow_one=False)
    load = load_redundant_digits_dataset if data_args.uses_redundant_digits() else load_digits_dataset
    return load(max(as_pair(image_size)), fraction, data_args.split_seed)


def limit_splits(dataset: DatasetDict, data_args: DataArguments, training_args: TrainingArguments) -> DatasetDict:
    """The splits the run needs, each cut to its `max_*_samples` (a seeded subset) and, for the user's images,
    without the files that cannot be decoded (`check_images`), each drop logged with a count."""
    needs_validation = training_args.do_eval or training_args.eval_strategy != "no"
    check_splits(dataset, need_train=training_args.do_train, need_validation=needs_validation)
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    dataset, warnings = limit_and_check_splits(
        dataset,
        limits,
        data_args.split_seed,
        check_images=data_args.check_images and not data_args.uses_digits(),
        num_proc=data_args.preprocessing_num_workers,
    )
    for warning in warnings:
        logger.warning(warning)
    return dataset


__all__ = ["label_names", "limit_splits", "load_digits", "load_user_dataset"]
