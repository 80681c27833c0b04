"""From `image` / `label` splits to the `pixel_values` / `labels` batches a `Trainer` feeds the model.

The split's own transform (augmentation for train, resize and centre crop for validation) runs first on PIL images;
the image processor saved with the model then rescales and normalises, exactly as `pipeline` will at inference.
Everything runs on the fly (`with_transform`): nothing is cached, and each epoch draws fresh augmentations.
"""

from collections.abc import Callable, Mapping
from functools import partial

import torch
from datasets import DatasetDict
from PIL import Image

from .loading import IMAGE, LABEL

ImageTransform = Callable[[Image.Image], Image.Image]


def preprocess(batch: dict, transform: ImageTransform, image_processor: Callable) -> dict:
    """A batch of `image` / `label` -> `pixel_values` `[batch, 3, height, width]` and `labels`."""
    images = [transform(image) for image in batch[IMAGE]]
    pixel_values = image_processor(images, return_tensors="pt")["pixel_values"]
    return {"pixel_values": pixel_values, "labels": batch[LABEL]}


def attach_transforms(
    dataset: DatasetDict, image_processor: Callable, transforms: Mapping[str, ImageTransform]
) -> DatasetDict:
    """Each split of `dataset` preprocessed on the fly with `transforms[split]` and `image_processor`."""
    missing = sorted(set(dataset) - set(transforms))
    if missing:
        raise ValueError(f"`transforms` has no transform for the split(s) {missing}; it has {sorted(transforms)}.")
    return DatasetDict(
        {
            split: data.with_transform(
                partial(preprocess, transform=transforms[split], image_processor=image_processor)
            )
            for split, data in dataset.items()
        }
    )


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack the per-example `pixel_values` tensors and `labels` ints that the transformed splits yield."""
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example["labels"] for example in examples], dtype=torch.long),
    }


__all__ = ["attach_transforms", "collate", "preprocess"]
