"""Run by tests/test_distributed_selectors.py under `torchrun --nproc_per_node 2`: train the learned and adaptive
token selectors on two gloo processes and write, per rank, a digest of the weights and what the schedule logged."""

import hashlib
import sys

import torch
import torch.distributed as dist
from distributed_pruning import collate, to_pixels, write_report_and_finish  # the sibling job script's helpers
from transformers import TrainingArguments

from hf_trilevel import (
    SelectorTemperatureSchedule,
    TriLevelTrainer,
    TriLevelViTConfig,
    TriLevelViTForImageClassification,
)
from hf_trilevel.image_data import load_digits_dataset

SELECTORS = {
    "learned": {"token_selector": "learned", "token_prune_layers": [0, 1]},
    "adaptive": {"token_selector": "adaptive", "token_importance": "learned", "token_keep_mass": 0.7},
}


def run(name: str, output_dir: str, dataset) -> dict:
    torch.manual_seed(0)
    config = TriLevelViTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=10, token_keep_rate=0.7, token_fusion=True, **SELECTORS[name],
    )  # fmt: skip
    trainer = TriLevelTrainer(
        model=TriLevelViTForImageClassification(config),
        args=TrainingArguments(
            output_dir=output_dir, num_train_epochs=2, per_device_train_batch_size=16, learning_rate=3e-3,
            report_to="none", remove_unused_columns=False, save_strategy="no", disable_tqdm=True, logging_steps=1,
            dataloader_pin_memory=False, seed=0, use_cpu=True,
        ),
        train_dataset=dataset, data_collator=collate, callbacks=[SelectorTemperatureSchedule(10.0, 0.1)],
    )  # fmt: skip
    trainer.train()
    parameters = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    scorer = [
        p.detach().abs().sum().item() for n, p in trainer.model.named_parameters() if ".scorer.output.weight" in n
    ]
    return {
        "parameters": hashlib.sha1(parameters.numpy().tobytes()).hexdigest(),
        "scorer_output_weight_sums": scorer,
        "temperatures": [h["token_selector_temperature"] for h in trainer.state.log_history if "loss" in h],
        "world_size": dist.get_world_size(),
    }


def main(output_dir: str) -> None:
    dataset = load_digits_dataset(image_size=16)["train"].select(range(96)).with_transform(to_pixels)
    write_report_and_finish(output_dir, {name: run(name, f"{output_dir}/{name}", dataset) for name in SELECTORS})


if __name__ == "__main__":
    main(sys.argv[1])
