"""From `image` / `label` splits to the `pixel_values` / `labels` batches a `Trainer` feeds the model.

The split's own transform (augmentation for train, resize and centre crop for validation) runs first on PIL images;
the image processor saved with the model then rescales and normalises, exactly as `pipeline` will at inference.
Everything runs on the fly: nothing is cached, and each epoch draws fresh augmentations. The training split is an
`AugmentedSplit`, which keys each example's augmentation by its position and the epoch (see `RandomSource`), so a
resumed run trains on exactly the images the uninterrupted one would have; deterministic splits stay
`datasets.Dataset`s with an on-the-fly transform (`with_transform`).
"""

from collections.abc import Callable, Mapping
from functools import partial

import torch
from datasets import Dataset, DatasetDict
from PIL import Image

from .loading import IMAGE, LABEL
from .transforms import RandomSource

ImageTransform = Callable[[Image.Image], Image.Image]


def preprocess(batch: dict, transform: ImageTransform, image_processor: Callable) -> dict:
    """A batch of `image` / `label` -> `pixel_values` `[batch, 3, height, width]` and `labels`."""
    images = [transform(image) for image in batch[IMAGE]]
    pixel_values = image_processor(images, return_tensors="pt")["pixel_values"]
    return {"pixel_values": pixel_values, "labels": batch[LABEL]}


class AugmentedSplit(torch.utils.data.Dataset):
    """A split of `image` / `label` examples served as `pixel_values` / `labels`, randomly augmented per epoch.

    Before augmenting the example at position `i` it selects `random`'s generator for (epoch, `i`), so every
    example's augmentation depends only on the run's seed, the epoch and the example, never on the order, the
    batches skipped when resuming, the process count or the DataLoader workers. Batches are fetched whole
    (`__getitems__`), so the image processor runs once per batch as it does under `with_transform`.

    `set_epoch(epoch)` must be called before each epoch: `TriLevelTrainer` does so for its training set (as
    `datasets.IterableDataset.set_epoch` is called); with another training loop, call it yourself.

    Args:
        data: the split, with `image` (PIL) and `label` columns.
        transform: the augmentation, whose random transforms draw from `random`.
        image_processor: rescales and normalises a list of images into `pixel_values`.
        random: the source `transform`'s random transforms hold.
    """

    def __init__(self, data: Dataset, transform: ImageTransform, image_processor: Callable, random: RandomSource):
        self.data, self.transform, self.image_processor, self.random = data, transform, image_processor, random

    def __len__(self) -> int:
        return len(self.data)

    @property
    def column_names(self) -> list[str]:
        return ["pixel_values", "labels"]

    def set_epoch(self, epoch: int) -> None:
        self.random.set_epoch(epoch)

    def __getitem__(self, position: int) -> dict:
        return self.__getitems__([position])[0]

    def __getitems__(self, positions: list[int]) -> list[dict]:
        positions = [position + len(self) if position < 0 else position for position in positions]
        batch = self.data[positions]
        images = []
        try:
            for position, image in zip(positions, batch[IMAGE], strict=True):
                self.random.select_example(position)
                images.append(self.transform(image))
        finally:
            self.random.select_example(None)
        pixel_values = self.image_processor(images, return_tensors="pt")["pixel_values"]
        return [
            {"pixel_values": pixels, "labels": label} for pixels, label in zip(pixel_values, batch[LABEL], strict=True)
        ]


def attach_transforms(
    dataset: DatasetDict,
    image_processor: Callable,
    transforms: Mapping[str, ImageTransform],
    random: RandomSource | None = None,
) -> dict[str, Dataset | AugmentedSplit]:
    """Each split of `dataset` preprocessed on the fly with `transforms[split]` and `image_processor`.

    With `random` (the source the training transform draws from), the `train` split becomes an `AugmentedSplit`,
    augmented per (epoch, example), and the result a plain dict of splits; the other splits, and `train` without
    `random`, use `with_transform` (without `random`, the result is a `DatasetDict`).
    """
    missing = sorted(set(dataset) - set(transforms))
    if missing:
        raise ValueError(f"`transforms` has no transform for the split(s) {missing}; it has {sorted(transforms)}.")
    splits = {}
    for split, data in dataset.items():
        if split == "train" and random is not None:
            splits[split] = AugmentedSplit(data, transforms[split], image_processor, random)
        else:
            splits[split] = data.with_transform(
                partial(preprocess, transform=transforms[split], image_processor=image_processor)
            )
    return splits if random is not None else DatasetDict(splits)


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack the per-example `pixel_values` tensors and `labels` ints that the transformed splits yield."""
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example["labels"] for example in examples], dtype=torch.long),
    }


__all__ = ["AugmentedSplit", "attach_transforms", "collate", "preprocess"]
