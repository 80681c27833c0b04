"""Run by tests/test_distributed_pruning.py under `torchrun --nproc_per_node 2`: train with example pruning on
two gloo processes and write, per rank, what each epoch served and what the pruning state looked like."""

import hashlib
import json
import sys

import numpy as np
import torch
import torch.distributed as dist
from transformers import TrainingArguments

from hf_trilevel import (
    ExamplePruning,
    TrainingTechnique,
    TriLevelTrainer,
    TriLevelViTConfig,
    TriLevelViTForImageClassification,
)
from hf_trilevel.example_pruning.pruner import digest
from hf_trilevel.image_data import load_digits_dataset
from hf_trilevel.training.indexed_dataset import EXAMPLE_INDEX


def to_pixels(batch):
    images = [torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1 for im in batch["image"]]
    return {"pixel_values": torch.stack(images), "labels": batch["label"]}


def collate(features):
    return {
        "pixel_values": torch.stack([f["pixel_values"] for f in features]),
        "labels": torch.tensor([f["labels"] for f in features]),
    }


class RecordingTrainer(TriLevelTrainer):
    def compute_loss(self, model, inputs, *args, **kwargs):
        if model.training:
            epoch = next(t.pruner for t in self.techniques() if t.name == "example_pruning").plan_epoch
            self.served.setdefault(epoch, []).extend(inputs[EXAMPLE_INDEX].tolist())
            self.plans[epoch] = next(
                t.pruner for t in self.techniques() if t.name == "example_pruning"
            ).plan.indices.tolist()
        return super().compute_loss(model, inputs, *args, **kwargs)


def tiny_model(**overrides) -> TriLevelViTForImageClassification:
    """The 2-layer, 32-wide model every run of these jobs trains, initialised from seed 0 on every rank."""
    torch.manual_seed(0)
    config = TriLevelViTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=10, **overrides,
    )  # fmt: skip
    return TriLevelViTForImageClassification(config)


def run(policy: str, output_dir: str, dataset) -> dict:
    callback = ExamplePruning(policy, **({"swap_epochs": [1, 2]} if policy == "forgetting" else {}))
    trainer = RecordingTrainer(
        model=tiny_model(token_keep_rate=0.5),
        args=TrainingArguments(
            output_dir=output_dir,
            num_train_epochs=4,
            per_device_train_batch_size=16,
            learning_rate=1e-3,
            report_to="none",
            remove_unused_columns=False,
            save_strategy="no",
            disable_tqdm=True,
            dataloader_pin_memory=False,
            seed=0,
            use_cpu=True,  # use_cpu: DDP over gloo on GPU-less machines
        ),
        train_dataset=dataset,
        data_collator=collate,
        callbacks=[callback],
    )
    trainer.served, trainer.plans = {}, {}
    trainer.train()
    statistics = callback.pruner.statistics
    parameters = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    return {
        "world_size": dist.get_world_size(),
        "parallel_mode": str(trainer.args.parallel_mode),
        "parameters": hashlib.sha1(parameters.numpy().tobytes()).hexdigest(),
        "served": trainer.served,
        "plans": trainer.plans,
        "digests": [h["example_pruning/digest"] for h in trainer.state.log_history if "example_pruning/digest" in h],
        "statistics": digest(statistics.forgetting_events) + digest(statistics.presentations),
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
    }


class Observer(TrainingTechnique):
    """Needs per-example losses and changes nothing, so the composed loss must train like the Trainer's own."""

    name = "observer"

    def observe(self, batch) -> None:
        pass


def composed_against_stock(output_dir: str, dataset) -> float:
    """Largest parameter difference between the stock loss and the composed per-example loss, on 2 processes."""
    parameters = []
    for label, callbacks in (("stock", []), ("composed", [Observer()])):
        trainer = TriLevelTrainer(
            model=tiny_model(),
            args=TrainingArguments(
                output_dir=f"{output_dir}/{label}", num_train_epochs=2, per_device_train_batch_size=8,
                gradient_accumulation_steps=2, learning_rate=1e-3, report_to="none", remove_unused_columns=False,
                save_strategy="no", disable_tqdm=True, dataloader_pin_memory=False, seed=0, use_cpu=True,
            ),
            train_dataset=dataset, data_collator=collate, callbacks=callbacks,
        )  # fmt: skip
        trainer.train()
        parameters.append(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]))
    return float((parameters[0] - parameters[1]).abs().max())


def main(output_dir: str) -> None:
    dataset = load_digits_dataset(image_size=16)["train"].select(range(128)).with_transform(to_pixels)
    report = {policy: run(policy, f"{output_dir}/{policy}", dataset) for policy in ("forgetting", "loss", "random")}
    report["composed_against_stock"] = composed_against_stock(output_dir, dataset)
    write_report_and_finish(output_dir, report)


def write_report_and_finish(output_dir: str, report: dict) -> None:
    """Write this rank's `rank{r}.json`, wait for every rank, and end the process group (the other jobs use it too)."""
    with open(f"{output_dir}/rank{dist.get_rank()}.json", "w") as file:
        json.dump(report, file)
    dist.barrier()
    dist.destroy_process_group()  # without it gloo processes sometimes abort at exit


if __name__ == "__main__":
    main(sys.argv[1])
