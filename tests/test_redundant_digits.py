"""The redundant digits: deterministic, the digits' own split, copies of the typical images only."""

import numpy as np
import pytest
from datasets import Image

from hf_trilevel.image_data import load_digits_dataset, load_redundant_digits_dataset
from hf_trilevel.image_data.digits import digits_scans_and_split
from hf_trilevel.image_data.redundant_digits import shifted, typical_examples


def encoded(split) -> list[tuple[bytes, int]]:
    """Every row as (PNG bytes, label): what byte-identical means for a data set of images."""
    rows = split.cast_column("image", Image(decode=False))
    return [(row["image"]["bytes"], row["label"]) for row in rows]


@pytest.fixture(scope="module")
def small():
    return load_redundant_digits_dataset(image_size=8, copies=2, seed=3)


def test_the_same_seed_builds_byte_identical_data_and_another_seed_other_copies(small):
    again = load_redundant_digits_dataset(image_size=8, copies=2, seed=3)
    assert encoded(small["train"]) == encoded(again["train"])
    other = encoded(load_redundant_digits_dataset(image_size=8, copies=2, seed=4)["train"])
    mine = encoded(small["train"])
    assert other[:1437] == mine[:1437] and other[1437:] != mine[1437:]  # originals fixed, copies redrawn


def test_originals_come_first_then_copies_of_the_typical_half_of_each_class(small):
    digits = load_digits_dataset(image_size=8)
    assert encoded(small["train"])[:1437] == encoded(digits["train"])
    assert encoded(small["validation"]) == encoded(digits["validation"])  # validation untouched
    labels = np.array(digits["train"]["label"])
    typical_per_class = [round(0.5 * count) for count in np.bincount(labels)]
    assert len(small["train"]) == 1437 + 2 * sum(typical_per_class)
    copy_labels = np.array(small["train"]["label"][1437:])
    assert np.bincount(copy_labels).tolist() == [2 * count for count in typical_per_class]


def test_defaults_make_ten_times_the_digits():
    dataset = load_redundant_digits_dataset(image_size=8)
    assert len(dataset["train"]) == 14_361 and len(dataset["validation"]) == 360


def test_without_noise_every_copy_is_its_original_shifted_by_at_most_one_pixel():
    dataset = load_redundant_digits_dataset(image_size=8, copies=3, noise=0.0, typical_fraction=0.1)
    train = np.stack([np.asarray(image) for image in dataset["train"]["image"]])[..., 0]
    originals = train[:1437]
    scans, labels, splits = digits_scans_and_split(8, 0.2, 0)
    typical = np.flatnonzero(typical_examples(scans[splits["train"]], labels[splits["train"]], 0.1))
    copies = train[1437:].reshape(len(typical), 3, 8, 8)
    for index, group in zip(typical, copies, strict=True):
        candidates = [shifted(originals[index], dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        assert all(any(np.array_equal(copy, candidate) for candidate in candidates) for copy in group)


def test_typical_examples_are_the_ones_closest_to_their_class_mean():
    scans = np.array([[[0.0]], [[1.0]], [[10.0]], [[5.0]], [[6.0]], [[20.0]]])
    labels = np.array([0, 0, 0, 1, 1, 1])  # means 11/3 and 31/3
    assert typical_examples(scans, labels, 0.34).tolist() == [False, True, False, False, True, False]
    assert typical_examples(scans, labels, 0.01).sum() == 2  # at least one per class


def test_shifting_fills_the_entering_pixels_with_background():
    scan = np.arange(1.0, 10.0).reshape(3, 3)
    assert shifted(scan, 1, 0).tolist() == [[0, 0, 0], [1, 2, 3], [4, 5, 6]]
    assert shifted(scan, 0, -1).tolist() == [[2, 3, 0], [5, 6, 0], [8, 9, 0]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": -1}, r"`seed` must be an integer in \[0, 4294967295\]"),
        ({"seed": 2**32}, r"`seed` must be an integer in \[0, 4294967295\]"),
        ({"copies": 101}, r"`copies` must be an integer in \[0, 100\]"),
        ({"copies": 2.5}, "`copies` must be an integer"),
        ({"typical_fraction": 0.0}, r"`typical_fraction` must be in \(0, 1\]"),
        ({"noise": 5.0}, r"`noise` must be in \[0, 4"),
        ({"image_size": 4}, r"`image_size` must be an integer in \[8, 1024\]"),
        ({"split_seed": -2}, r"`split_seed` must be an integer in \[0, 4294967295\]"),
    ],
)
def test_out_of_range_arguments_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_redundant_digits_dataset(**kwargs)
