"""Image transforms for training and evaluation, written with PIL and NumPy (no torchvision).

Each transform maps a PIL image to a PIL image; the last step, rescaling and normalising into `pixel_values`, is
left to the image processor that is saved with the model, so evaluation here and inference through `pipeline`
normalise identically. Train pipelines (`train_transforms`):

* `"crop_flip"`: random resized crop + horizontal flip, the standard ImageNet recipe (and the default for user data);
* `"crop"`: random resized crop only, for images whose mirror image means something else (digits, text, arrows);
* `"affine"`: a small random rotation, scaling and shift (the tuned recipe of the bundled digits);
* `"none"`: the evaluation transform.

Evaluation (`eval_transforms`) resizes the image to the smallest size that covers the model's input, keeping its
aspect ratio, then crops the centre.

Random draws come from a `RandomSource`: in training, a NumPy generator seeded per (run seed, epoch, example
position), so a resumed run, or one on another number of processes or DataLoader workers, augments every example
exactly as the uninterrupted run does. No global random state is read or changed.

Why not a library (decided for the "One house" refactor):
* torchvision and timm are excluded for the whole project (README, "Why no torchvision").
* kornia 0.9.0 (a 1.9 MB wheel needing `kornia-rs`, a compiled Rust extension, plus numpy and torch; no
  torchvision) would fit the dependency rules, but its augmentations draw from torch's *global* generators: its own
  docs state there is no per-instance generator and `generator=` raises. Seeding it per rank and per DataLoader
  worker would mean `torch.manual_seed` on global state, the trap STYLE.md rules out; and it works on batched
  tensors, so the per-example PIL step before the saved image processor would have to be rebuilt.
* Pure torch tensor ops (`torch.nn.functional.grid_sample` / `interpolate` with an explicit `torch.Generator`)
  would be possible, but interpolate differently from PIL, and the inference-time resize (PIL, in the image
  processor) would no longer match training's.
So the four small PIL transforms stay, here in the example-side `hf_trilevel.image_data` package rather than in the
model core. (Their random stream did change later, to the per-example keys above, so resumed runs reproduce.)
"""

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..modeling.value_checks import check_fraction

Size = tuple[int, int]  # (height, width), as in ViTConfig.image_size and image processors' `size`
ImageTransform = Callable[[Image.Image], Image.Image]

TRAIN_AUGMENTATIONS = ("crop_flip", "crop", "affine", "none")
SALT_AUGMENTATION = 17  # keeps augmentation draws apart from example pruning's keyed streams (salts 1-5)


class RandomSource:
    """Augmentation randomness keyed by (seed, epoch, example position), so a resumed run draws what it would have.

    A single sequential stream (one per process) cannot survive a resume: batches skipped to reach the checkpoint
    are never loaded, earlier epochs are not replayed, and another process count splits the stream differently. So
    the training split (`hf_trilevel.image_data.AugmentedSplit`) calls `select_example(position)` before it augments
    an example, and every transform holding this source then draws from a generator seeded by the run's `seed`, the
    current epoch and that position: the same example in the same epoch gets the same augmentation whatever the
    process count, the number of DataLoader workers, or where the run was interrupted.

    The epoch lives in shared memory, so DataLoader workers, persistent ones included, see `set_epoch` (which
    `TriLevelTrainer` calls on its training set before each epoch's first batch is drawn).

    Used directly (no example selected, e.g. a transform applied by hand) it is one sequential stream seeded by
    `seed` (`numpy.random.default_rng(seed)`), derived afresh inside each DataLoader worker so workers do not repeat
    each other's draws.

    Args:
        seed: the run's seed, a non-negative integer.
    """

    def __init__(self, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._example: np.random.Generator | None = None
        self._stream = np.random.default_rng(seed)
        self._worker: tuple[tuple[int, int], np.random.Generator] | None = None

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Draw the augmentations of `epoch` (0-indexed) from now on, in this process and its DataLoader workers."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"`epoch` must be a non-negative integer, got {epoch!r}.")
        self._epoch.fill_(epoch)

    def select_example(self, position: int | None) -> None:
        """Draw, until the next call, the augmentation of the example at `position` (>= 0) in the current epoch;
        `None` returns to the sequential stream."""
        if position is None:
            self._example = None
            return
        if position < 0:
            raise ValueError(f"`position` must be a non-negative example position, got {position}.")
        self._example = np.random.default_rng([SALT_AUGMENTATION, self.seed, self.epoch, int(position)])

    def get(self) -> np.random.Generator:
        if self._example is not None:
            return self._example
        info = torch.utils.data.get_worker_info()
        if info is None:
            return self._stream
        key = (info.id, info.seed)
        if self._worker is None or self._worker[0] != key:
            self._worker = (key, np.random.default_rng([self.seed, info.seed]))
        return self._worker[1]


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: grey (L, 16-bit I;16), palette, RGBA (alpha dropped), CMYK ...

    Data sets mix modes (a few greyscale or RGBA files among RGB photos); the model needs 3 channels. 16-bit images
    keep their top 8 bits rather than being clipped at 255 by PIL's own conversion.
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):
        image = Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8), mode="L")
    elif image.mode == "P":
        image = image.convert("RGBA")  # palette transparency is only understood through RGBA
    return image.convert("RGB")


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[ImageTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Image.Image) -> Image.Image:
        for transform in self.transforms:
            image = transform(image)
        return image


class ResizeToCover:
    """Resize, keeping the aspect ratio, to the smallest size that covers `size` (height, width).

    For a square target this is torchvision's `Resize(int)` (shorter side to `size`). An image that already has
    the target size is returned unchanged.
    """

    def __init__(self, size: Size, resample: Image.Resampling = Image.Resampling.BILINEAR) -> None:
        self.size, self.resample = size, resample

    def __call__(self, image: Image.Image) -> Image.Image:
        height, width = self.size
        scale = max(height / image.height, width / image.width)
        new_size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
        return image if new_size == image.size else image.resize(new_size, self.resample)


class CenterCrop:
    """Crop the central `size` (height, width) region; the image must be at least that large."""

    def __init__(self, size: Size) -> None:
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        height, width = self.size
        if (image.height, image.width) == (height, width):
            return image
        left, top = round((image.width - width) / 2), round((image.height - height) / 2)
        return image.crop((left, top, left + width, top + height))


class RandomResizedCrop:
    """Crop a random region (area share in `scale`, aspect ratio in `ratio`) and resize it to `size`.

    The sampling is torchvision's: ten tries at a random area and log-uniform aspect ratio that fits the image, else
    the largest central crop within `ratio`. Cropping and resizing happen in one PIL call (`resize(box=...)`).
    """

    def __init__(
        self,
        size: Size,
        random: RandomSource,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        resample: Image.Resampling = Image.Resampling.BILINEAR,
    ) -> None:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"`scale` must satisfy 0 < min <= max <= 1, got {scale}.")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"`ratio` must satisfy 0 < min <= max, got {ratio}.")
        self.size, self.random, self.scale, self.ratio, self.resample = size, random, scale, ratio, resample

    def sample_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the region to crop from a `width` x `height` image."""
        generator = self.random.get()
        area, log_ratio = width * height, (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * generator.uniform(*self.scale)
            aspect = math.exp(generator.uniform(*log_ratio))
            crop_width = round(math.sqrt(target_area * aspect))
            crop_height = round(math.sqrt(target_area / aspect))
            if 0 < crop_width <= width and 0 < crop_height <= height:
                top = int(generator.integers(0, height - crop_height + 1))
                left = int(generator.integers(0, width - crop_width + 1))
                return left, top, left + crop_width, top + crop_height
        aspect = width / height
        if aspect < self.ratio[0]:
            crop_width, crop_height = width, round(width / self.ratio[0])
        elif aspect > self.ratio[1]:
            crop_width, crop_height = round(height * self.ratio[1]), height
        else:
            crop_width, crop_height = width, height
        left, top = (width - crop_width) // 2, (height - crop_height) // 2
        return left, top, left + crop_width, top + crop_height

    def __call__(self, image: Image.Image) -> Image.Image:
        box = self.sample_box(image.width, image.height)
        return image.resize((self.size[1], self.size[0]), self.resample, box=box)


class RandomHorizontalFlip:
    """Mirror the image left-right with probability `p`."""

    def __init__(self, random: RandomSource, p: float = 0.5) -> None:
        self.random, self.p = random, p

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if self.random.get().random() < self.p else image


class RandomAffine:
    """Small random rotation, scaling and shift of an RGB image about its centre, filling with black.

    The augmentation of the bundled digits (white strokes on black): unlike crops and flips it keeps the whole
    digit in view and never mirrors it.
    """

    def __init__(
        self, random: RandomSource, max_degrees: float = 10.0, max_scale: float = 0.1, max_shift_fraction: float = 0.1
    ) -> None:
        self.random = random
        self.max_degrees = max_degrees
        self.max_scale = max_scale
        self.max_shift_fraction = max_shift_fraction

    def __call__(self, image: Image.Image) -> Image.Image:
        generator = self.random.get()
        angle = math.radians(generator.uniform(-self.max_degrees, self.max_degrees))
        scale = generator.uniform(1 - self.max_scale, 1 + self.max_scale)
        shift_x, shift_y = generator.uniform(-self.max_shift_fraction, self.max_shift_fraction, 2) * image.size
        # PIL wants the inverse map, output pixel -> input pixel: rotate back by `angle` and shrink by `scale`
        # around the shifted centre.
        centre_x, centre_y = image.width / 2, image.height / 2
        a, b = math.cos(angle) / scale, math.sin(angle) / scale
        d, e = -b, a
        target_x, target_y = centre_x + shift_x, centre_y + shift_y
        matrix = (a, b, centre_x - a * target_x - b * target_y, d, e, centre_y - d * target_x - e * target_y)
        return image.transform(
            image.size, Image.Transform.AFFINE, matrix, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0)
        )


def eval_transforms(size: Size) -> Compose:
    """RGB, resize to cover `size` keeping the aspect ratio, crop the centre: deterministic."""
    return Compose([to_rgb, ResizeToCover(size), CenterCrop(size)])


def train_transforms(augmentation: str, size: Size, random: RandomSource, min_crop_scale: float = 0.08) -> Compose:
    """The training pipeline named by `augmentation` (one of `TRAIN_AUGMENTATIONS`), ending at `size`.

    `min_crop_scale` is the smallest area share a random resized crop may keep, in (0, 1].
    """
    if augmentation not in TRAIN_AUGMENTATIONS:
        raise ValueError(f"`augmentation` must be one of {', '.join(TRAIN_AUGMENTATIONS)}; got {augmentation!r}.")
    check_fraction("min_crop_scale", min_crop_scale)
    if augmentation in ("crop_flip", "crop"):
        crop = RandomResizedCrop(size, random, scale=(min_crop_scale, 1.0))
        flip = [RandomHorizontalFlip(random)] if augmentation == "crop_flip" else []
        return Compose([to_rgb, crop, *flip])
    pipeline = eval_transforms(size)
    if augmentation == "affine":
        pipeline.transforms.append(RandomAffine(random))
    return pipeline


__all__ = [
    "TRAIN_AUGMENTATIONS",
    "CenterCrop",
    "Compose",
    "RandomAffine",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "RandomSource",
    "ResizeToCover",
    "eval_transforms",
    "to_rgb",
    "train_transforms",
]
