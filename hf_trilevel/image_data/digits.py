"""scikit-learn's handwritten digits as a `datasets.DatasetDict` of RGB images: a real data set that needs no network.

The 1797 8x8 grey-level scans (UCI "Optical Recognition of Handwritten Digits", ink 0..16 on a 0 background) ship
inside the scikit-learn wheel, so the example, the tests and CI train and evaluate on real images offline, with no
download and no data-set cache. The images are upscaled so that a ViT patch grid (e.g. 4x4 patches on 32x32) has
enough tokens for token dropping to mean something.
"""

import math

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from ..modeling.value_checks import check_int

DIGIT_NAMES = [str(digit) for digit in range(10)]
MIN_IMAGE_SIZE = 8
MAX_IMAGE_SIZE = 1024
_INK_MAX = 16


def load_digits_dataset(image_size: int = 32, validation_fraction: float = 0.2, seed: int = 0) -> DatasetDict:
    """Build the digits as `{"train", "validation"}` splits with an `"image"` and a `"label"` column.

    Args:
        image_size: side of the square RGB images, in [8, 1024]; the 8x8 scans are upscaled with bicubic resampling
            (smooth strokes rather than 8x8 blocks).
        validation_fraction: share of the 1797 examples in the validation split. The split is stratified by class, so
            each split must keep at least one example per class: roughly (0.0056, 0.9944).
        seed: seed of the stratified split, a non-negative integer below 2**32; the same seed gives the same split.

    Returns:
        A `DatasetDict` whose splits have features `image` (`datasets.Image`, RGB PIL images of
        `image_size` x `image_size`) and `label` (`datasets.ClassLabel` with names "0".."9").

    Raises:
        ValueError: naming the argument, its value and the allowed range.
    """
    scans, labels, splits = digits_scans_and_split(image_size, validation_fraction, seed)
    return DatasetDict(
        {split: digits_split(scans[index], labels[index], image_size) for split, index in splits.items()}
    )


def digits_scans_and_split(
    image_size: object, validation_fraction: object, seed: object
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The `[1797, 8, 8]` scans (ink 0..16), their labels and the sorted `train` / `validation` indices of the
    stratified split `load_digits_dataset` makes, after checking its arguments (variants of the digits reuse it)."""
    digits = load_digits()
    scans, labels = digits.images, digits.target
    _check_arguments(image_size, validation_fraction, seed, num_examples=len(labels), num_classes=len(DIGIT_NAMES))
    train_index, validation_index = train_test_split(
        np.arange(len(labels)), test_size=validation_fraction, stratify=labels, random_state=seed
    )
    return scans, labels, {"train": np.sort(train_index), "validation": np.sort(validation_index)}


def digits_split(scans: np.ndarray, labels: np.ndarray, image_size: int) -> Dataset:
    """`[n, 8, 8]` scans (ink 0..16) and their labels as a split with an RGB `image` and a ClassLabel `label`."""
    features = Features({"image": Image(), "label": ClassLabel(names=DIGIT_NAMES)})
    return Dataset.from_dict(
        {"image": [_to_rgb_image(scan, image_size) for scan in scans], "label": [int(label) for label in labels]},
        features=features,
    )


def _to_rgb_image(scan: np.ndarray, image_size: int) -> PILImage.Image:
    """An 8x8 scan with values 0..16 -> an `image_size` x `image_size` RGB image (white ink on black)."""
    grey = np.rint(scan * (255 / _INK_MAX)).astype(np.uint8)
    image = PILImage.fromarray(grey, mode="L")
    if image_size != image.width:
        image = image.resize((image_size, image_size), resample=PILImage.Resampling.BICUBIC)
    return image.convert("RGB")


def _check_arguments(
    image_size: object, validation_fraction: object, seed: object, num_examples: int, num_classes: int
) -> None:
    check_int("image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)

    # train_test_split puts ceil(fraction * n) examples in the validation split; stratifying needs one per class
    # on each side.
    low, high = num_classes / num_examples, (num_examples - num_classes) / num_examples
    allowed = f"a float in [{low:.4f}, {high:.4f}] (at least {num_classes} examples, one per class, in each split)"
    if isinstance(validation_fraction, bool) or not isinstance(validation_fraction, (int, float)):
        raise ValueError(f"`validation_fraction` must be {allowed}, got {validation_fraction!r}.")
    num_validation = math.ceil(validation_fraction * num_examples) if math.isfinite(validation_fraction) else -1
    if not (0 < validation_fraction < 1 and num_classes <= num_validation <= num_examples - num_classes):
        raise ValueError(f"`validation_fraction` must be {allowed}, got {validation_fraction!r}.")
    check_int("seed", seed, 0, 2**32 - 1)


__all__ = ["DIGIT_NAMES", "digits_scans_and_split", "digits_split", "load_digits_dataset"]
