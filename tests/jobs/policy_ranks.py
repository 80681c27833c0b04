"""Run by tests/test_pruning_ranks.py under `torchrun --nproc_per_node 2`: train with user pruning policies, two of
which draw from the global RNG (seeded differently on each rank) and one from the seed it is given, and write, per
rank, the error each run stopped with (or None) and the kept-set digests it logged."""

import sys

import torch
import torch.distributed as dist
from distributed_pruning import collate, tiny_model, to_pixels, write_report_and_finish  # the sibling job's helpers
from transformers import TrainingArguments

from hf_trilevel import (
    ExamplePruning,
    PruningPolicy,
    TriLevelTrainer,
)
from hf_trilevel.example_pruning import EpochPlan
from hf_trilevel.image_data import load_digits_dataset
from hf_trilevel.training.generators import keyed_generator


class HalfPolicy(PruningPolicy):
    """Half of the data each epoch, drawn from the seed it is given; with `global_from`, drawn from the global RNG
    from that epoch on (what the docs forbid)."""

    name = "half"

    def __init__(self, global_from: int | None = None):
        self.global_from = global_from

    def epoch_sizes(self, num_examples, num_epochs):
        return [num_examples // 2] * num_epochs

    def plan_epoch(self, epoch, previous, statistics, num_examples, seed):
        if self.global_from is not None and epoch >= self.global_from:
            order = torch.randperm(num_examples)  # the global RNG: differs between the ranks here
        else:
            order = torch.randperm(num_examples, generator=keyed_generator(seed, epoch, 77))
        return EpochPlan(order[: num_examples // 2].sort().values)


class DrawnSizesPolicy(HalfPolicy):
    """Epoch sizes drawn from the global RNG: the ranks would train different numbers of steps."""

    def epoch_sizes(self, num_examples, num_epochs):
        self.size = 16 + int(torch.randint(0, 16, ()))
        return [self.size] * num_epochs

    def plan_epoch(self, epoch, previous, statistics, num_examples, seed):
        return EpochPlan(torch.arange(self.size))


def run(policy: PruningPolicy, output_dir: str, dataset) -> dict:
    trainer = TriLevelTrainer(
        model=tiny_model(),
        args=TrainingArguments(
            output_dir=output_dir, num_train_epochs=3, per_device_train_batch_size=8, learning_rate=1e-3,
            report_to="none", remove_unused_columns=False, save_strategy="no", disable_tqdm=True,
            dataloader_pin_memory=False, seed=0, use_cpu=True,
        ),
        train_dataset=dataset, data_collator=collate, callbacks=[ExamplePruning(policy)],
    )  # fmt: skip
    torch.manual_seed(1000 + dist.get_rank())  # a user's global RNG, not the same on every rank
    error = None
    try:
        trainer.train()
    except ValueError as raised:
        error = str(raised)
    return {
        "error": error,
        "global_step": trainer.state.global_step,
        "digests": [h["example_pruning/digest"] for h in trainer.state.log_history if "example_pruning/digest" in h],
    }


def main(output_dir: str) -> None:
    dataset = load_digits_dataset(image_size=16)["train"].select(range(64)).with_transform(to_pixels)
    report = {
        "global_from_the_start": run(HalfPolicy(global_from=0), f"{output_dir}/start", dataset),
        "global_from_epoch_1": run(HalfPolicy(global_from=1), f"{output_dir}/later", dataset),
        "drawn_sizes": run(DrawnSizesPolicy(), f"{output_dir}/sizes", dataset),
        "keyed": run(HalfPolicy(), f"{output_dir}/keyed", dataset),
    }
    write_report_and_finish(output_dir, report)


if __name__ == "__main__":
    main(sys.argv[1])
