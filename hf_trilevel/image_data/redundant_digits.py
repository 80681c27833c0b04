"""A redundant variant of the bundled digits, to test the premise of example pruning at small scale.

Tri-Level E-ViT and InfoBatch prune examples because large training sets are redundant: many near-copies of easy,
common images and few hard ones. The 1,437 digits training images are barely redundant, so no data level can show
that premise on them. This variant makes the redundancy explicit and reproducible, from the same training split:

- Every training image appears once, as it is.
- Within each class, the images closest to their class's mean scan (the most *typical*: easy, common) are the first
  `typical_fraction` of that class; each of them gets `copies` extra near-copies: the scan shifted by up to one
  pixel in each direction (zero fill) plus Gaussian noise (standard deviation `noise` on the 0..16 ink scale),
  clipped to 0..16. The atypical rest (the hard ones) appear once.
- The validation split is the original digits validation split, untouched, so accuracy compares with the digits.

With the defaults (half of each class typical, 18 copies) the training set is 10x the digits': 14,361 images, of
which 90% are copies of the easiest half. A policy that finds the redundancy can drop most of the copies for free; a
random policy drops hard originals at the same rate as copies. The build is deterministic: the same arguments give
byte-identical images (one NumPy generator keyed by `seed`, drawn in a fixed order).
"""

import numpy as np
from datasets import DatasetDict, concatenate_datasets

from ..modeling.value_checks import check_fraction, check_int, check_number
from .digits import _INK_MAX, digits_scans_and_split, digits_split

REDUNDANT_DIGITS = "digits-redundant"
MAX_COPIES = 100
MAX_NOISE = 4.0
_SALT = 20_261_202  # keeps these draws apart from any other seeded stream of the same seed


def typical_examples(scans: np.ndarray, labels: np.ndarray, typical_fraction: float) -> np.ndarray:
    """`[n]` bool: whether each scan is among the `typical_fraction` of its class closest to the class's mean scan.

    Distance is Euclidean in ink space; ties are broken by position, so the choice is deterministic. Every class keeps
    at least one typical example.
    """
    flat = scans.reshape(len(scans), -1).astype(np.float64)
    typical = np.zeros(len(scans), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        distances = np.linalg.norm(flat[members] - flat[members].mean(axis=0), axis=1)
        order = members[np.lexsort((members, distances))]
        typical[order[: max(1, round(typical_fraction * len(members)))]] = True
    return typical


def shifted(scan: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`scan` moved by `(dy, dx)` pixels, with the pixels that enter filled with 0 (background)."""
    height, width = scan.shape
    moved = np.zeros_like(scan)
    moved[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = scan[
        max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
    ]
    return moved


def near_copies(scans: np.ndarray, copies: int, noise: float, generator: np.random.Generator) -> np.ndarray:
    """`[len(scans) * copies, 8, 8]`: for each scan in turn, `copies` shifted, noisy versions (ink clipped to 0..16)."""
    result = np.empty((len(scans) * copies, *scans.shape[1:]), dtype=np.float64)
    shifts = generator.integers(-1, 2, size=(len(scans), copies, 2))
    jitter = generator.normal(0.0, noise, size=result.shape)
    for i, scan in enumerate(scans):
        for j in range(copies):
            result[i * copies + j] = shifted(scan.astype(np.float64), *shifts[i, j])
    return np.clip(result + jitter, 0.0, _INK_MAX)


def load_redundant_digits_dataset(
    image_size: int = 32,
    validation_fraction: float = 0.2,
    split_seed: int = 0,
    seed: int = 0,
    copies: int = 18,
    typical_fraction: float = 0.5,
    noise: float = 0.5,
) -> DatasetDict:
    """The digits with their typical training images repeated as near-copies; validation as in the digits.

    Args:
        image_size: side of the square RGB images, in [8, 1024] (as `load_digits_dataset`).
        validation_fraction: share of the 1797 digits in the validation split (as `load_digits_dataset`).
        split_seed: seed of that stratified split (`load_digits_dataset`'s `seed`): the same split as the digits.
        seed: seed of the copies' shifts and noise, an integer in [0, 2**32 - 1].
        copies: extra near-copies of each typical image, an integer in [0, 100] (0: the digits' training split).
        typical_fraction: share of each class that is typical and gets copies, in (0, 1].
        noise: standard deviation of the copies' Gaussian noise on the 0..16 ink scale, in [0, 4].

    Returns:
        `{"train", "validation"}` with `image` (RGB) and `label` (ClassLabel "0".."9") columns, like
        `load_digits_dataset`. Train holds the originals in the digits' order, then the copies, grouped by original.

    Raises:
        ValueError: naming the argument, its value and the allowed range, before anything is built.
    """
    check_int("seed", seed, 0, 2**32 - 1)
    check_int("split_seed", split_seed, 0, 2**32 - 1)
    check_int("copies", copies, 0, MAX_COPIES)
    check_fraction("typical_fraction", typical_fraction)
    check_number("noise", noise, 0.0, MAX_NOISE, low_open=False)
    scans, labels, splits = digits_scans_and_split(image_size, validation_fraction, split_seed)
    train_scans, train_labels = scans[splits["train"]], labels[splits["train"]]
    typical = np.flatnonzero(typical_examples(train_scans, train_labels, typical_fraction))
    generator = np.random.default_rng([_SALT, seed])
    copy_scans = near_copies(train_scans[typical], copies, noise, generator)
    copy_labels = np.repeat(train_labels[typical], copies)
    train = digits_split(train_scans, train_labels, image_size)
    if copies:
        train = concatenate_datasets([train, digits_split(copy_scans, copy_labels, image_size)])
    validation = digits_split(scans[splits["validation"]], labels[splits["validation"]], image_size)
    return DatasetDict({"train": train, "validation": validation})


__all__ = ["REDUNDANT_DIGITS", "load_redundant_digits_dataset", "near_copies", "shifted", "typical_examples"]
