"""Dataset positions carried through the data pipeline: the key of every per-example statistic.

A technique that sets `needs_example_index` (example pruning) gets, in every training batch, each example's
position in the training set under `example_index`, added around the user's dataset and collator so neither needs to
know about it.
"""

import torch
from torch.utils.data import Dataset

EXAMPLE_INDEX = "example_index"


class IndexedDataset(Dataset):
    """A view of a dataset whose items also carry their position, the key of every per-example statistic.

    Works with `datasets.Dataset` (including `set_transform` / `with_transform` pipelines, fetched a batch at a
    time through `__getitems__`) and with any map-style torch dataset of dicts.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], EXAMPLE_INDEX: index}

    def __getitems__(self, indices: list[int]) -> list[dict]:
        fetch_many = getattr(self.dataset, "__getitems__", None)
        items = fetch_many(indices) if fetch_many is not None else [self.dataset[i] for i in indices]
        return [{**item, EXAMPLE_INDEX: index} for item, index in zip(items, indices, strict=True)]


class IndexCollator:
    """Runs the user's collator on the features without `example_index`, then adds the indices as a tensor."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features: list[dict]) -> dict:
        indices = torch.tensor([feature[EXAMPLE_INDEX] for feature in features], dtype=torch.long)
        batch = self.collator([{k: v for k, v in f.items() if k != EXAMPLE_INDEX} for f in features])
        batch[EXAMPLE_INDEX] = indices
        return batch


__all__ = ["EXAMPLE_INDEX", "IndexCollator", "IndexedDataset"]
