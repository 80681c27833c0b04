"""Run by tests/test_distributed_dense_sparse.py under `torchrun --nproc_per_node 2`: dense/sparse training with
distillation on two gloo processes, once with DDP's defaults and once with gradient checkpointing (DDP without
`find_unused_parameters`, the strict case for two forwards before one backward); writes, per rank, a digest of the
weights and the logged loss terms."""

import hashlib
import sys

import torch
import torch.distributed as dist
from distributed_pruning import collate, to_pixels, write_report_and_finish  # the sibling job script's helpers
from transformers import TrainingArguments

from hf_trilevel import DenseSparseTraining, TriLevelTrainer, TriLevelViTConfig, TriLevelViTForImageClassification
from hf_trilevel.image_data import load_digits_dataset

RUNS = {
    "self_importance": {
        "config": {"token_selector": "class_attention", "attention_keep_rate": 0.5},
        "technique": {"schedule": "dense_and_one", "distillation": "self", "importance_weight": 0.5},
        "gradient_checkpointing": False,
    },
    "learned_checkpointed": {
        "config": {"token_selector": "learned"},
        "technique": {"schedule": "every_rate", "distillation": "self"},
        "gradient_checkpointing": True,
    },
}


def run(name: str, output_dir: str, dataset) -> dict:
    settings = RUNS[name]
    torch.manual_seed(0)
    config = TriLevelViTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=10, token_keep_rate=0.5, token_prune_layers=[0, 1], **settings["config"],
    )  # fmt: skip
    trainer = TriLevelTrainer(
        model=TriLevelViTForImageClassification(config),
        args=TrainingArguments(
            output_dir=output_dir, num_train_epochs=2, per_device_train_batch_size=16, learning_rate=3e-3,
            report_to="none", remove_unused_columns=False, save_strategy="no", disable_tqdm=True, logging_steps=1,
            dataloader_pin_memory=False, seed=0, use_cpu=True,
            gradient_checkpointing=settings["gradient_checkpointing"],
        ),
        train_dataset=dataset, data_collator=collate,
        callbacks=[DenseSparseTraining([1.0, 0.5, 0.25], **settings["technique"])],
    )  # fmt: skip
    trainer.train()
    parameters = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    return {
        "parameters": hashlib.sha1(parameters.numpy().tobytes()).hexdigest(),
        "terms": sorted({key for entry in logged for key in entry if key.startswith("loss/")}),
        "steps": len(logged),
        "keep_rates": trainer.model.config.dense_sparse_keep_rates,
        "world_size": dist.get_world_size(),
    }


def main(output_dir: str) -> None:
    dataset = load_digits_dataset(image_size=16)["train"].select(range(96)).with_transform(to_pixels)
    write_report_and_finish(output_dir, {name: run(name, f"{output_dir}/{name}", dataset) for name in RUNS})


if __name__ == "__main__":
    main(sys.argv[1])
