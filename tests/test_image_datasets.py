"""hf_trilevel.image_data.loading: user data becomes `image` + ClassLabel `label` splits, or a clear ValueError."""

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Image
from PIL import Image as PILImage

from hf_trilevel.image_data.loading import (
    IMAGE,
    LABEL,
    drop_unreadable_images,
    encode_labels,
    is_missing_local_path,
    load_image_dataset,
    select_image_and_label,
    split_off_validation,
    take_samples,
)


def images(count: int, size: int = 8) -> list[PILImage.Image]:
    rng = np.random.default_rng(0)
    return [PILImage.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def labelled(labels: list, label_feature=None, **columns) -> Dataset:
    data = {"img": images(len(labels)), "y": labels, **columns}
    dataset = Dataset.from_dict(data).cast_column("img", Image())
    return dataset.cast_column("y", label_feature) if label_feature is not None else dataset


def write_image_folder(root, classes=("cat", "dog"), per_class: int = 3) -> None:
    for name in classes:
        (root / name).mkdir(parents=True)
        for index, image in enumerate(images(per_class)):
            image.save(root / name / f"{index}.png")


# --- columns ---------------------------------------------------------------------------------------------------------


def test_columns_are_selected_and_renamed_to_image_and_label():
    dataset = DatasetDict({"train": labelled([0, 1], extra=["a", "b"])})
    selected = select_image_and_label(dataset, "img", "y")
    assert selected["train"].column_names == [IMAGE, LABEL]
    assert isinstance(selected["train"].features[IMAGE], Image)


def test_a_missing_image_column_names_the_argument_the_columns_and_the_image_column():
    dataset = DatasetDict({"train": labelled([0, 1])})
    with pytest.raises(ValueError, match=r"`image_column_name` 'image'.*\['img', 'y'\].*Image columns: \['img'\]"):
        select_image_and_label(dataset, "image", "y")


def test_a_missing_label_column_names_the_argument():
    with pytest.raises(ValueError, match="`label_column_name` 'label'"):
        select_image_and_label(DatasetDict({"train": labelled([0, 1])}), "img", "label")


def test_an_image_column_without_images_is_refused():
    with pytest.raises(ValueError, match="`image_column_name` 'y' holds"):
        select_image_and_label(DatasetDict({"train": labelled([0, 1], other=["a", "b"])}), "y", "other")


# --- labels ----------------------------------------------------------------------------------------------------------


def renamed(dataset: DatasetDict) -> DatasetDict:
    return select_image_and_label(dataset, "img", "y")


def test_integer_labels_become_one_class_label_for_all_splits_sorted_numerically():
    dataset = renamed(DatasetDict({"train": labelled([10, 2, 3, 2]), "validation": labelled([3, 10])}))
    encoded, notice = encode_labels(dataset, "y")
    assert (
        encoded["train"].features[LABEL] == encoded["validation"].features[LABEL] == ClassLabel(names=["2", "3", "10"])
    )
    assert encoded["train"][LABEL] == [2, 0, 1, 0] and encoded["validation"][LABEL] == [1, 2]
    assert "not a ClassLabel" in notice and "3 distinct values" in notice


def test_string_labels_use_values_of_every_split():
    dataset = renamed(DatasetDict({"train": labelled(["dog", "cat"]), "validation": labelled(["emu"])}))
    encoded, _ = encode_labels(dataset, "y")
    assert encoded["validation"].features[LABEL].names == ["cat", "dog", "emu"]
    assert encoded["validation"][LABEL] == [2]


def test_class_labels_pass_unchanged_without_a_notice():
    dataset = renamed(DatasetDict({"train": labelled([0, 1], ClassLabel(names=["a", "b"]))}))
    encoded, notice = encode_labels(dataset, "y")
    assert notice is None and encoded["train"][LABEL] == [0, 1]


@pytest.mark.parametrize(
    ("labels", "feature", "message"),
    [
        ([0.5, 1.5], None, "float"),
        ([[0, 1], [1]], None, "ClassLabel, integers or strings"),
        ([1, None], None, "missing labels"),
        ([4, 4], None, "at least 2"),
        ([0, -1], ClassLabel(names=["a", "b"]), "unlabelled"),
        ([0, 1, -1], None, "negative integers"),
    ],
)
def test_unusable_labels_are_refused_naming_the_argument(labels, feature, message):
    dataset = renamed(DatasetDict({"train": labelled(labels, feature)}))
    with pytest.raises(ValueError, match=message) as raised:
        encode_labels(dataset, "y")
    assert "`label_column_name` 'y'" in str(raised.value)


def test_class_labels_that_differ_between_splits_are_refused():
    dataset = DatasetDict(
        {
            "train": labelled([0, 1], ClassLabel(names=["a", "b"])),
            "validation": labelled([0, 1], ClassLabel(names=["b", "a"])),
        }
    )
    with pytest.raises(ValueError, match="different class names"):
        encode_labels(renamed(dataset), "y")


# --- splits and subsets ----------------------------------------------------------------------------------------------


def test_a_validation_split_is_held_out_of_train_reproducibly():
    dataset = DatasetDict({"train": labelled(list(range(20))), "test": labelled([0])})
    first, second = (split_off_validation(dataset, 0.25, seed=1) for _ in range(2))
    assert set(first) == {"train", "validation"} and len(first["validation"]) == 5
    assert first["validation"]["y"] == second["validation"]["y"]
    assert sorted([*first["train"]["y"], *first["validation"]["y"]]) == list(range(20))


def test_an_existing_validation_split_is_kept():
    dataset = DatasetDict({"train": labelled([0, 1, 2]), "validation": labelled([5])})
    assert split_off_validation(dataset, 0.5, seed=0)["validation"]["y"] == [5]


def test_no_validation_is_held_out_with_a_zero_share():
    assert set(split_off_validation(DatasetDict({"train": labelled([0, 1])}), 0.0, seed=0)) == {"train"}


def test_sample_limits_take_a_seeded_random_subset_not_a_prefix():
    data = labelled([0] * 10 + [1] * 10)
    subset = take_samples(data, 6, seed=0)
    assert len(subset) == 6 and set(subset["y"]) == {0, 1}
    assert subset["y"] == take_samples(data, 6, seed=0)["y"]
    assert take_samples(data, 100, seed=0) is data


# --- loading and unreadable files ------------------------------------------------------------------------------------


def test_image_folders_load_with_class_names_from_the_sub_folders(tmp_path):
    write_image_folder(tmp_path / "train")
    write_image_folder(tmp_path / "val", per_class=1)
    dataset = load_image_dataset(
        train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"), cache_dir=str(tmp_path / "cache")
    )
    assert len(dataset["train"]) == 6 and len(dataset["validation"]) == 2
    assert dataset["train"].features["label"].names == ["cat", "dog"]


def test_unreadable_images_are_dropped_and_reported(tmp_path):
    root = tmp_path / "train"
    write_image_folder(root)
    (root / "cat" / "empty.png").write_bytes(b"")
    png = (root / "dog" / "0.png").read_bytes()
    (root / "dog" / "truncated.png").write_bytes(png[: len(png) // 2])
    data = load_image_dataset(train_dir=str(root), cache_dir=str(tmp_path / "cache"))["train"]
    readable, dropped = drop_unreadable_images(data)
    assert len(data) == 8 and len(readable) == 6
    assert sorted(path.rsplit("/", 1)[-1] for path, _ in dropped) == ["empty.png", "truncated.png"]
    assert all(reason for _, reason in dropped)
    for example in readable:  # everything left decodes
        example[IMAGE].load()


def test_a_saved_dataset_folder_loads_and_a_single_split_becomes_train(tmp_path):
    labelled([0, 1]).save_to_disk(tmp_path / "saved")
    assert list(load_image_dataset(str(tmp_path / "saved"))) == ["train"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_dir": "/no/such/folder"}, "`train_dir` '/no/such/folder' is not a directory"),
        ({"dataset_name": "./no/such/data"}, "`dataset_name` './no/such/data': no such folder"),
        ({"dataset_name": "x", "train_dir": "y"}, "either `dataset_name` or `train_dir`"),
        ({}, "give `dataset_name`"),
    ],
)
def test_missing_sources_are_reported_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_image_dataset(**kwargs)


def test_local_looking_names_that_do_not_exist_are_not_sent_to_the_hub(tmp_path):
    assert is_missing_local_path("/no/such/path") and is_missing_local_path("a/b/c")
    assert not is_missing_local_path("owner/dataset") and not is_missing_local_path(str(tmp_path))
