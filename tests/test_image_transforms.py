"""hf_trilevel.image_data.transforms: PIL train/eval transforms ending at the model input size, with explicit RNG."""

import numpy as np
import pytest
import torch
from PIL import Image

from hf_trilevel.image_data.transforms import (
    RandomAffine,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomSource,
    ResizeToCover,
    eval_transforms,
    to_rgb,
    train_transforms,
)


def gradient_image(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """Red grows left to right, green top to bottom: any crop, flip or resize shows in the pixels."""
    x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    pixels = np.stack([x, y, np.full_like(x, 40)], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels).convert(mode)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "1", "RGB"])
def test_to_rgb_gives_three_channel_images_of_every_mode(mode):
    image = to_rgb(gradient_image(20, 12, mode))
    assert image.mode == "RGB" and image.size == (20, 12)


def test_to_rgb_keeps_the_top_eight_bits_of_16_bit_images():
    values = np.array([[0, 255, 256, 65535]], dtype=np.uint16)
    image = to_rgb(Image.fromarray(values))
    assert image.mode == "RGB"
    assert np.asarray(image)[0, :, 0].tolist() == [0, 0, 1, 255]


@pytest.mark.parametrize(("width", "height"), [(40, 24), (24, 40), (9, 9), (32, 32)])
def test_eval_transform_gives_the_model_size_keeping_the_aspect_ratio(width, height):
    image = eval_transforms((16, 16))(gradient_image(width, height))
    assert image.size == (16, 16)
    if width > height:  # a centre crop of a wide image loses red at both sides, keeps green top to bottom
        red, green = np.asarray(image)[8, :, 0], np.asarray(image)[:, 8, 1]
        assert red[0] > 20 and red[-1] < 235 and green[0] < 20 and green[-1] > 235


def test_eval_transform_leaves_an_image_of_the_right_size_untouched():
    image = gradient_image(16, 16)
    assert np.array_equal(np.asarray(eval_transforms((16, 16))(image)), np.asarray(image))
    assert ResizeToCover((16, 16))(image) is image


def test_random_resized_crop_boxes_fit_the_image_and_the_area_range():
    crop = RandomResizedCrop((8, 8), RandomSource(0), scale=(0.25, 0.5))
    for _ in range(200):
        left, top, right, bottom = crop.sample_box(40, 30)
        assert 0 <= left < right <= 40 and 0 <= top < bottom <= 30
        assert 0.2 <= (right - left) * (bottom - top) / (40 * 30) <= 0.55  # rounding of the sides
    assert crop(gradient_image(40, 30)).size == (8, 8)


def test_random_resized_crop_falls_back_to_a_central_crop_for_extreme_images():
    crop = RandomResizedCrop((8, 8), RandomSource(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert crop.sample_box(100, 10) == (45, 0, 55, 10)


def test_random_source_alone_is_the_plain_seeded_stream():
    draws = [RandomSource(3).get().random(4).tolist() for _ in range(2)]
    assert draws[0] == draws[1] == np.random.default_rng(3).random(4).tolist()


def keyed_draw(random: RandomSource, epoch: int, position: int) -> float:
    random.set_epoch(epoch)
    random.select_example(position)
    return float(random.get().random())


def test_an_examples_draws_depend_only_on_seed_epoch_and_position():
    first, again = RandomSource(0), RandomSource(0)
    keys = [(0, 0), (0, 1), (1, 0), (1, 1)]
    draws = [keyed_draw(first, epoch, position) for epoch, position in keys]
    # Another source, other keys drawn first and in another order: the same draw for the same key.
    assert [keyed_draw(again, epoch, position) for epoch, position in reversed(keys)] == draws[::-1]
    assert len(set(draws)) == 4
    assert keyed_draw(RandomSource(1), 0, 0) != draws[0]
    with pytest.raises(ValueError, match="`epoch` must be a non-negative integer"):
        first.set_epoch(-1)


class _Draws(torch.utils.data.Dataset):
    def __init__(self, random: RandomSource):
        self.random = random

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return float(self.random.get().random())


def test_dataloader_workers_draw_different_augmentations():
    loader = torch.utils.data.DataLoader(_Draws(RandomSource(0)), batch_size=None, num_workers=2)
    torch.manual_seed(0)
    draws = list(loader)
    # Without per-worker seeding, workers 0 and 1 (serving items 0, 2 and 1, 3) would repeat each other's draws.
    assert len(set(draws)) == 4


def test_horizontal_flip_mirrors_with_probability_p():
    image = gradient_image(10, 6)
    mirrored = np.asarray(image)[:, ::-1]
    assert np.array_equal(np.asarray(RandomHorizontalFlip(RandomSource(0), p=1.0)(image)), mirrored)
    assert RandomHorizontalFlip(RandomSource(0), p=0.0)(image) is image


def test_crop_augmentation_never_mirrors_and_crop_flip_sometimes_does():
    image = gradient_image(16, 16)

    def mirrored_count(augmentation: str) -> int:
        transform = train_transforms(augmentation, (16, 16), RandomSource(0), min_crop_scale=1.0)
        return sum(np.asarray(transform(image))[8, 0, 0] > 128 for _ in range(40))

    assert mirrored_count("crop") == 0
    assert 5 < mirrored_count("crop_flip") < 35


def test_affine_augmentation_matches_the_digits_recipe_draw_for_draw():
    image = gradient_image(32, 32)
    transform = train_transforms("affine", (32, 32), RandomSource(0))
    expected = RandomAffine(RandomSource(0))
    for _ in range(3):
        assert np.array_equal(np.asarray(transform(image)), np.asarray(expected(image)))


def test_affine_keeps_the_image_size_and_fills_with_black():
    image = Image.new("RGB", (32, 32), (255, 255, 255))
    moved = np.asarray(RandomAffine(RandomSource(1), max_degrees=30, max_shift_fraction=0.3)(image))
    assert moved.shape == (32, 32, 3) and (moved == 0).all(axis=-1).any()


@pytest.mark.parametrize("augmentation", ["crop_flip", "crop", "affine", "none"])
def test_every_train_augmentation_ends_at_the_model_size(augmentation):
    transform = train_transforms(augmentation, (12, 20), RandomSource(0))
    assert transform(gradient_image(30, 50, "L")).size == (20, 12)


def test_train_transforms_reject_unknown_names_and_scales():
    with pytest.raises(ValueError, match="augmentation"):
        train_transforms("flip", (8, 8), RandomSource(0))
    with pytest.raises(ValueError, match="min_crop_scale"):
        train_transforms("crop", (8, 8), RandomSource(0), min_crop_scale=0.0)
    with pytest.raises(ValueError, match="seed"):
        RandomSource(-1)
