"""Loading and checking image-classification data sets: what a training script needs before the first step.

Everything here turns a user's data (a Hub or local data set, a folder saved with `save_to_disk`, or image folders)
into `{"train", "validation"}` splits with exactly two columns, `image` (`datasets.Image`) and `label`
(`datasets.ClassLabel`, the same names in every split), and reports bad input as `ValueError`s that name the
function argument to fix in backticks (`` `label_column_name` 'y' ...``): the names of transformers' example flags,
which a script's own flags can share. The checks run before training so that a wrong column name, a regression
target or a corrupt file stops the run at once rather than after an hour of training:

* a missing image or label column: an error listing the columns there are;
* labels that are integers or strings rather than a `ClassLabel`: a `ClassLabel` is built from the distinct values
  of all splits together (sorted, so the mapping is the same on every run and every rank), with a notice;
  floats, lists and missing labels are errors;
* unreadable image files (truncated, not an image at all): `drop_unreadable_images` decodes every image once and
  drops the ones that fail, returning their paths and reasons so the caller can warn with a count;
* missing or empty splits (`check_splits`), before the Trainer meets them.
"""

import os
from collections.abc import Sequence
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, Image, Value, load_dataset, load_from_disk

IMAGE = "image"
LABEL = "label"
_INTEGER_DTYPES = {f"{sign}int{bits}" for sign in ("", "u") for bits in (8, 16, 32, 64)} | {"bool"}
_STRING_DTYPES = {"string", "large_string"}


def load_image_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_dir: str | None = None,
    validation_dir: str | None = None,
    **load_kwargs,
) -> DatasetDict:
    """The raw splits of `dataset_name` (Hub id, local data set or folder, or a `save_to_disk` folder) or of image
    folders (`train_dir` / `validation_dir`, one sub-folder per class).

    `load_kwargs` (e.g. `cache_dir`, `token`) go to `datasets.load_dataset`. Raises `ValueError` naming the
    argument when the source does not exist or cannot be read.
    """
    if dataset_name is not None and (train_dir or validation_dir):
        raise ValueError("give either `dataset_name` or `train_dir`/`validation_dir`, not both.")
    if dataset_name is not None:
        return _load_named(dataset_name, dataset_config_name, **load_kwargs)
    if train_dir is None and validation_dir is None:
        raise ValueError("give `dataset_name`, or `train_dir` (and optionally `validation_dir`).")
    data_files = {}
    for split, argument, folder in (
        ("train", "train_dir", train_dir),
        ("validation", "validation_dir", validation_dir),
    ):
        if folder is None:
            continue
        if not Path(folder).is_dir():
            raise ValueError(
                f"`{argument}` {folder!r} is not a directory (expected one sub-folder of images per class)."
            )
        data_files[split] = os.path.join(folder, "**")
    try:
        dataset = load_dataset("imagefolder", data_files=data_files, **load_kwargs)
    except Exception as error:  # datasets raises many types; all mean the same thing to the user
        raise ValueError(f"could not read the image folders {data_files}: {type(error).__name__}: {error}") from error
    if LABEL not in next(iter(dataset.values())).column_names:
        _explain_missing_folder_labels(train_dir, validation_dir)
    return dataset


def _explain_missing_folder_labels(train_dir: str | None, validation_dir: str | None) -> None:
    """`imagefolder` adds no `label` column when the folders name a single class; say so instead of blaming the
    label column. Folders with a metadata file carry their own label columns and are left alone."""
    for argument, folder in (("train_dir", train_dir), ("validation_dir", validation_dir)):
        if folder is None or any(Path(folder).rglob("metadata.*")):
            continue
        classes = sorted(path.name for path in Path(folder).iterdir() if path.is_dir())
        if len(classes) == 1 and (argument == "train_dir" or train_dir is None):
            raise ValueError(
                f"`{argument}` {folder!r} has one class sub-folder ({classes[0]!r}), so the training data has one "
                "class, and a classifier needs at least 2: put each class's images in its own sub-folder."
            )
        if not classes:
            raise ValueError(
                f"`{argument}` {folder!r} has no class sub-folders: put each class's images in its own sub-folder "
                "(at least two classes)."
            )


def is_missing_local_path(name: str) -> bool:
    """True for a name that can only be a local path (not a Hub id `name` or `owner/name`) and does not exist.

    Such names would otherwise reach the Hub client, whose error ("Repo id must be in the form ...") hides the typo.
    """
    looks_local = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)
    return looks_local and not Path(name).expanduser().exists()


def _load_named(dataset_name: str, dataset_config_name: str | None, **load_kwargs) -> DatasetDict:
    """`load_from_disk` for folders written by `save_to_disk`, `load_dataset` for everything else."""
    if is_missing_local_path(dataset_name):
        raise ValueError(f"`dataset_name` {dataset_name!r}: no such folder.")
    try:
        if _is_saved_to_disk(Path(dataset_name)):
            dataset = load_from_disk(dataset_name)
        else:
            dataset = load_dataset(dataset_name, dataset_config_name, **load_kwargs)
    except Exception as error:  # FileNotFoundError, DatasetNotFoundError, ConnectionError offline, ...
        raise ValueError(
            f"`dataset_name` {dataset_name!r} could not be loaded: {type(error).__name__}: {error}"
        ) from error
    if isinstance(dataset, Dataset):  # a single saved split: treat it as the training data
        dataset = DatasetDict({"train": dataset})
    if not isinstance(dataset, DatasetDict):
        raise ValueError(f"`dataset_name` {dataset_name!r} gave a {type(dataset).__name__}; expected a DatasetDict.")
    return dataset


def _is_saved_to_disk(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def split_off_validation(dataset: DatasetDict, train_val_split: float | None, seed: int) -> DatasetDict:
    """`{"train", "validation"}` splits: the data set's own, or a seeded random `train_val_split` share of train.

    A data set that has a `validation` split keeps it (`train_val_split` is then ignored); other splits (`test`,
    ...) are left out, as in transformers' example. `train_val_split` of 0 or None keeps no validation split.
    """
    if "train" not in dataset and "validation" not in dataset:
        raise ValueError(f"the data set has no `train` or `validation` split; its splits are {list(dataset)}.")
    splits = {name: dataset[name] for name in ("train", "validation") if name in dataset}
    if "validation" in splits or not train_val_split or "train" not in splits:
        return DatasetDict(splits)
    if not 0 < train_val_split < 1:
        raise ValueError(f"`train_val_split` must be in (0, 1) (the held-out share of train), got {train_val_split}.")
    if len(splits["train"]) < 2:
        raise ValueError(f"`train_val_split` needs at least 2 training examples, got {len(splits['train'])}.")
    parts = splits["train"].train_test_split(test_size=train_val_split, seed=seed)
    return DatasetDict({"train": parts["train"], "validation": parts["test"]})


def select_image_and_label(dataset: DatasetDict, image_column_name: str, label_column_name: str) -> DatasetDict:
    """Keep only the image and label columns, renamed to `image` and `label`, in every split.

    Raises `ValueError` naming `image_column_name` / `label_column_name` if a split lacks the column or the
    image column does not hold images.
    """
    if image_column_name == label_column_name:
        raise ValueError(f"`image_column_name` and `label_column_name` are both {image_column_name!r}.")
    selected = {}
    for split, data in dataset.items():
        for argument, column in (("image_column_name", image_column_name), ("label_column_name", label_column_name)):
            if column not in data.column_names:
                raise ValueError(
                    f"`{argument}` {column!r}: the {split} split has no such column; its columns are "
                    f"{data.column_names}.{_hint_image_column(data.features, argument)}"
                )
        if not isinstance(data.features[image_column_name], Image):
            raise ValueError(
                f"`image_column_name` {image_column_name!r} holds {data.features[image_column_name]}, not images "
                f"(datasets.Image).{_hint_image_column(data.features, 'image_column_name')}"
            )
        data = data.select_columns([image_column_name, label_column_name])
        selected[split] = data.rename_columns({image_column_name: IMAGE, label_column_name: LABEL})
    return DatasetDict(selected)


def _hint_image_column(features, argument: str) -> str:
    if argument != "image_column_name":
        return ""
    image_columns = [name for name, feature in features.items() if isinstance(feature, Image)]
    return f" Image columns: {image_columns}." if image_columns else ""


def encode_labels(dataset: DatasetDict, label_column_name: str) -> tuple[DatasetDict, str | None]:
    """Make `label` a `ClassLabel` shared by all splits; return the data and a notice if labels were encoded.

    Integer and string labels become a `ClassLabel` whose names are the distinct values of all splits, sorted
    (numerically for integers): one mapping for train and validation, the same on every run and process. Raises
    `ValueError` for float, list or missing labels, for training labels of fewer than two classes (a
    `ClassLabel` may name more classes than the training split holds), and for `ClassLabel`s that differ between
    splits or mark examples unlabelled (-1, as test splits often do).
    """
    features = {split: data.features[LABEL] for split, data in dataset.items()}
    first = next(iter(features.values()))
    notice = None
    if isinstance(first, ClassLabel):
        if any(feature != first for feature in features.values()):
            raise ValueError(
                f"`label_column_name` {label_column_name!r} has different class names in different splits."
            )
    else:
        dataset, first = _build_class_label(dataset, label_column_name, features)
        notice = (
            f"`label_column_name` {label_column_name!r} holds {features[next(iter(features))]}, not a ClassLabel; "
            f"built one from its {first.num_classes} distinct values: {_preview(first.names)}."
        )
    for split, data in dataset.items():
        values = data.unique(LABEL)
        unlabelled = sum(1 for value in values if value is None or value < 0)
        if unlabelled:
            raise ValueError(
                f"the {split} split has unlabelled examples (label -1 or missing) in `label_column_name` "
                f"{label_column_name!r}; use a labelled split for training and validation."
            )
        if split == "train":
            _check_two_classes(sorted(values), first, label_column_name)
    if "train" not in dataset and first.num_classes < 2:
        raise ValueError(
            f"`label_column_name` {label_column_name!r} has {first.num_classes} class; at least 2 are needed."
        )
    return dataset, notice


def _check_two_classes(values: list[int], class_label: ClassLabel, label_column_name: str) -> None:
    """The training labels must hold at least two classes: a classifier cannot learn from one."""
    if len(values) >= 2:
        return
    names = ", ".join(repr(class_label.int2str(value)) for value in values) or "none"
    raise ValueError(
        f"the training data has {len(values)} class ({names}) in `label_column_name` {label_column_name!r}, and a "
        "classifier needs at least 2: train on data with examples of two classes or more."
    )


def _build_class_label(dataset: DatasetDict, label_column_name: str, features: dict) -> tuple[DatasetDict, ClassLabel]:
    for split, feature in features.items():
        if not isinstance(feature, Value) or feature.dtype not in _INTEGER_DTYPES | _STRING_DTYPES:
            raise ValueError(
                f"`label_column_name` {label_column_name!r} holds {feature} in the {split} split; single-label "
                "classification needs a ClassLabel, integers or strings (cast float class "
                "ids to int; regression and multi-label targets are not supported)."
            )
    values = set()
    for split, data in dataset.items():
        split_values = data.unique(LABEL)
        if any(value is None for value in split_values):
            raise ValueError(f"`label_column_name` {label_column_name!r} has missing labels in the {split} split.")
        negative = [value for value in split_values if isinstance(value, int) and value < 0]
        if negative:
            raise ValueError(
                f"`label_column_name` {label_column_name!r} holds negative integers {sorted(negative)[:5]} in the "
                f"{split} split (-1 usually marks unlabelled examples); drop or relabel them, class ids must be >= 0."
            )
        values.update(split_values)
    try:
        ordered = sorted(values)
    except TypeError as error:  # e.g. integers in one split and strings in another
        raise ValueError(f"`label_column_name` {label_column_name!r} mixes label types across splits.") from error
    class_label = ClassLabel(names=[str(value) for value in ordered])
    index = {value: position for position, value in enumerate(ordered)}
    encoded = {}
    for split, data in dataset.items():
        new_features = data.features.copy()
        new_features[LABEL] = class_label
        encoded[split] = data.map(
            lambda labels: {LABEL: [index[value] for value in labels]},
            input_columns=LABEL,
            batched=True,
            features=new_features,
            desc=f"Encoding {split} labels",
        )
    return DatasetDict(encoded), class_label


def _preview(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"


def take_samples(data: Dataset, max_samples: int | None, seed: int) -> Dataset:
    """A seeded random subset of `max_samples` examples (all of them if None or more than there are).

    Random rather than the first `max_samples`: image folders are sorted by class, so a prefix would hold one class.
    """
    if max_samples is None or max_samples >= len(data):
        return data
    return data.shuffle(seed=seed).select(range(max_samples))


def drop_unreadable_images(data: Dataset, num_proc: int | None = None) -> tuple[Dataset, list[tuple[str, str]]]:
    """Decode every image once, as training will, and drop those that fail.

    Returns the readable examples and `(path, reason)` for each dropped one. Costs one decode per image (cached by
    `datasets` for file-backed data sets); without it one corrupt file stops training when its batch comes up.
    """
    decoder = data.features[IMAGE]
    raw = data.cast_column(IMAGE, Image(decode=False, mode=decoder.mode))

    def check(images: list[dict]) -> dict[str, list[str]]:
        return {"error": [_decode_error(decoder, image) for image in images]}

    errors = raw.map(
        check, input_columns=IMAGE, batched=True, remove_columns=raw.column_names, num_proc=num_proc,
        desc="Checking images",
    )["error"]  # fmt: skip
    bad = [index for index, error in enumerate(errors) if error]
    if not bad:
        return data, []
    dropped = [(raw[index][IMAGE]["path"] or f"example {index}", errors[index]) for index in bad]
    bad_set = set(bad)
    return data.select([index for index in range(len(data)) if index not in bad_set]), dropped


def _decode_error(decoder: Image, image: dict) -> str:
    """ "" if `image` decodes, else a one-line reason."""
    try:
        decoder.decode_example(image)
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError ...
        return f"{type(error).__name__}: {error}"
    return ""


def check_splits(dataset: DatasetDict, *, need_train: bool, need_validation: bool) -> None:
    """The splits a run needs exist and are not empty; the message says which argument supplies each."""
    for split, needed, hint in (
        ("train", need_train, "give `train_dir` or a data set with a train split"),
        (
            "validation",
            need_validation,
            "give `validation_dir` or `train_val_split` > 0, or `do_eval` False and `eval_strategy` no",
        ),
    ):
        if needed and (split not in dataset or len(dataset[split]) == 0):
            raise ValueError(f"there is no {split} data ({hint}).")


def limit_and_check_splits(
    dataset: DatasetDict,
    max_samples: dict[str, int | None],
    seed: int,
    *,
    check_images: bool = True,
    num_proc: int | None = None,
) -> tuple[DatasetDict, list[str]]:
    """Take at most `max_samples[split]` examples of each split (`take_samples`), then drop unreadable images.

    Returns the splits and one warning per split that lost images (with a count and the first five paths). Raises
    `ValueError` when no image of a split can be read.
    """
    finished, warnings = {}, []
    for split, data in dataset.items():
        data = take_samples(data, max_samples.get(split), seed)
        if check_images:
            data, dropped = drop_unreadable_images(data, num_proc)
            if dropped:
                listed = "; ".join(f"{path} ({reason})" for path, reason in dropped[:5])
                warnings.append(
                    f"skipped {len(dropped)} of {len(data) + len(dropped)} {split} images that cannot be read: "
                    f"{listed}{' ...' if len(dropped) > 5 else ''}"
                )
            if len(data) == 0:
                raise ValueError(f"none of the {split} images can be read.")
        finished[split] = data
    return DatasetDict(finished), warnings


__all__ = [
    "IMAGE",
    "LABEL",
    "check_splits",
    "drop_unreadable_images",
    "encode_labels",
    "is_missing_local_path",
    "limit_and_check_splits",
    "load_image_dataset",
    "select_image_and_label",
    "split_off_validation",
    "take_samples",
]
