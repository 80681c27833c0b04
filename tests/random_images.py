"""A few random labelled images as a map-style dataset, for Trainer runs that must finish in a second or two."""

import torch
from torch.utils.data import Dataset


class RandomImages(Dataset):
    """`size` random `[3, image_size, image_size]` images with labels in [0, num_labels), fixed by `seed`."""

    def __init__(self, size: int, seed: int, image_size: int = 32, num_labels: int = 5):
        generator = torch.Generator().manual_seed(seed)
        self.pixel_values = torch.randn(size, 3, image_size, image_size, generator=generator)
        self.labels = torch.randint(0, num_labels, (size,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}


def collate(features: list[dict]) -> dict:
    return {key: torch.stack([feature[key] for feature in features]) for key in ("pixel_values", "labels")}
