"""Run by tests/test_deit_family.py under `torchrun --nproc_per_node 2`: a TriLevel DeiT with its distillation token
trained on two gloo processes, once plain and once with dense/sparse training and gradient checkpointing (DDP
without `find_unused_parameters`: both heads and the distillation token must get gradients every step); writes, per
rank, a digest of the weights and the prefix tokens of every training forward's final sequence."""

import hashlib
import math
import sys

import torch
import torch.distributed as dist
from distributed_pruning import collate, to_pixels, write_report_and_finish  # the sibling job script's helpers
from transformers import TrainingArguments

from hf_trilevel import (
    DenseSparseTraining,
    TriLevelDeiTConfig,
    TriLevelDeiTForImageClassificationWithTeacher,
    TriLevelTrainer,
)
from hf_trilevel.image_data import load_digits_dataset

RUNS = {
    "deit": {"techniques": [], "gradient_checkpointing": False},
    "deit_dense_sparse_checkpointed": {
        "techniques": [lambda: DenseSparseTraining([1.0, 0.5], distillation="self")],
        "gradient_checkpointing": True,
    },
}


def run(name: str, output_dir: str, dataset) -> dict:
    settings = RUNS[name]
    torch.manual_seed(0)
    config = TriLevelDeiTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=10, token_keep_rate=0.5, token_prune_layers=[0], token_fusion=True,
    )  # fmt: skip
    model = TriLevelDeiTForImageClassificationWithTeacher(config)
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    final_tokens = []

    def record(module, args, output):  # the final sequence: class, distillation, kept patches, fused token
        if model.training:
            final_tokens.append(args[0].shape[1])

    model.deit.layernorm.register_forward_hook(record)
    trainer = TriLevelTrainer(
        model=model,
        args=TrainingArguments(
            output_dir=output_dir, num_train_epochs=2, per_device_train_batch_size=16, learning_rate=3e-3,
            report_to="none", remove_unused_columns=False, save_strategy="no", disable_tqdm=True, logging_steps=1,
            dataloader_pin_memory=False, seed=0, use_cpu=True,
            gradient_checkpointing=settings["gradient_checkpointing"],
        ),
        train_dataset=dataset, data_collator=collate, callbacks=[build() for build in settings["techniques"]],
    )  # fmt: skip
    trainer.train()
    parameters = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "parameters": hashlib.sha1(parameters.numpy().tobytes()).hexdigest(),
        "changed": not torch.equal(parameters, before),
        "finite": all(math.isfinite(loss) for loss in logged),
        "steps": len(logged),
        "final_tokens": sorted(set(final_tokens)),
        "world_size": dist.get_world_size(),
    }


def main(output_dir: str) -> None:
    dataset = load_digits_dataset(image_size=16)["train"].select(range(96)).with_transform(to_pixels)
    write_report_and_finish(output_dir, {name: run(name, f"{output_dir}/{name}", dataset) for name in RUNS})


if __name__ == "__main__":
    main(sys.argv[1])
