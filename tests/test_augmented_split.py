"""`AugmentedSplit`: each example's augmentation depends only on the seed, the epoch and its position.

That is what lets a resumed run (which skips batches and replays no earlier epoch), a run on another number of
processes, or one with DataLoader workers (persistent ones included) train on exactly the same images.
"""

import torch
from transformers import ViTImageProcessorPil

from hf_trilevel.image_data import AugmentedSplit, RandomSource, attach_transforms, eval_transforms, train_transforms
from hf_trilevel.image_data.digits import load_digits_dataset
from hf_trilevel.training.indexed_dataset import IndexedDataset

NUM_EXAMPLES = 12


def augmented_split(seed: int = 0) -> AugmentedSplit:
    data = load_digits_dataset(image_size=16)["train"].select(range(NUM_EXAMPLES))
    random = RandomSource(seed)
    processor = ViTImageProcessorPil(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    transforms = {"train": train_transforms("affine", (16, 16), random), "validation": eval_transforms((16, 16))}
    return attach_transforms({"train": data}, processor, transforms, random)["train"]


def pixels_by_position(split: AugmentedSplit, epoch: int, loader: torch.utils.data.DataLoader | None = None) -> dict:
    split.set_epoch(epoch)
    if loader is None:
        return {position: item["pixel_values"] for position, item in enumerate(split.__getitems__(range(len(split))))}
    found = {}
    for batch in loader:
        found.update({item["example_index"]: item["pixel_values"] for item in batch})
    return found


def test_train_split_is_augmented_per_epoch_and_other_splits_stay_datasets():
    split = augmented_split()
    assert isinstance(split, AugmentedSplit) and len(split) == NUM_EXAMPLES
    assert split.column_names == ["pixel_values", "labels"]
    epoch_0, epoch_1 = pixels_by_position(split, 0), pixels_by_position(split, 1)
    assert sum(not torch.equal(epoch_0[p], epoch_1[p]) for p in range(NUM_EXAMPLES)) == NUM_EXAMPLES
    assert all(torch.equal(a, b) for a, b in zip(epoch_0.values(), pixels_by_position(split, 0).values(), strict=True))
    assert split[3]["labels"] == split.data[3]["label"]


def test_shuffled_persistent_workers_draw_what_the_main_process_draws_for_each_epoch():
    reference = augmented_split()
    expected = {epoch: pixels_by_position(reference, epoch) for epoch in (0, 1, 2)}
    split = augmented_split()
    loader = torch.utils.data.DataLoader(
        IndexedDataset(split),
        batch_size=5,
        shuffle=True,
        num_workers=2,
        persistent_workers=True,  # the workers' copies see set_epoch through shared memory
        collate_fn=list,
        generator=torch.Generator().manual_seed(0),
    )
    for epoch in (0, 1, 2):
        served = pixels_by_position(split, epoch, loader)
        assert sorted(served) == list(range(NUM_EXAMPLES))
        assert all(torch.equal(served[p], expected[epoch][p]) for p in range(NUM_EXAMPLES)), epoch


def test_another_seed_draws_other_augmentations():
    first, other = pixels_by_position(augmented_split(0), 0), pixels_by_position(augmented_split(1), 0)
    assert any(not torch.equal(first[p], other[p]) for p in range(NUM_EXAMPLES))


class EpochRecordingSplit(AugmentedSplit):
    """Records the epoch every training batch was augmented for."""

    def __getitems__(self, positions):
        self.epochs_seen.append(self.random.epoch)
        return super().__getitems__(positions)


def test_the_trainer_tells_the_split_each_epoch_behind_example_pruning(tmp_path):
    from transformers import TrainingArguments

    from hf_trilevel import ExamplePruning, TriLevelTrainer

    from .test_pruning_trainer import collate, tiny_classifier

    plain = augmented_split()
    split = EpochRecordingSplit(plain.data, plain.transform, plain.image_processor, plain.random)
    split.epochs_seen = []
    arguments = TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=4, report_to="none",
        remove_unused_columns=False, save_strategy="no", disable_tqdm=True, dataloader_pin_memory=False,
    )  # fmt: skip
    trainer = TriLevelTrainer(
        model=tiny_classifier(), args=arguments, train_dataset=split, data_collator=collate,
        callbacks=[ExamplePruning("forgetting", keep_fraction=0.75)],
    )  # fmt: skip
    trainer.train()
    # accelerate's DataLoader.set_epoch never reaches a dataset behind IndexedDataset: TriLevelTrainer must.
    assert sorted(set(split.epochs_seen)) == [0, 1, 2] and split.epochs_seen == sorted(split.epochs_seen)
