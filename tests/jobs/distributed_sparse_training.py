"""Run by tests/test_distributed_sparse_training.py under `torchrun --nproc_per_node 2`: weight sparsity on two gloo
processes, unstructured (with a checkpoint at step 3, resumed in a second run) and structured; writes, per rank,
digests of the masks and weights, the mask updates made and the resumed run's digests."""

import hashlib
import sys

import torch
import torch.distributed as dist
from distributed_pruning import collate, to_pixels, write_report_and_finish  # the sibling job script's helpers
from transformers import TrainingArguments

from hf_trilevel import TriLevelTrainer, TriLevelViTConfig, TriLevelViTForImageClassification, WeightSparsity
from hf_trilevel.image_data import load_digits_dataset


def digest(tensors) -> str:
    flat = torch.cat([tensor.detach().float().flatten() for tensor in tensors])
    return hashlib.sha1(flat.numpy().tobytes()).hexdigest()


def run(sparsity: str, output_dir: str, dataset, resume: str | None = None) -> dict:
    torch.manual_seed(0)
    config = TriLevelViTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=10, token_keep_rate=0.5, token_prune_layers=[0, 1],
    )  # fmt: skip
    technique = WeightSparsity(sparsity, update_interval=1)
    trainer = TriLevelTrainer(
        model=TriLevelViTForImageClassification(config),
        args=TrainingArguments(
            output_dir=output_dir, num_train_epochs=2, per_device_train_batch_size=16, learning_rate=3e-3,
            report_to="none", remove_unused_columns=False, save_strategy="steps", save_steps=3, disable_tqdm=True,
            logging_steps=1, dataloader_pin_memory=False, seed=0, use_cpu=True, weight_decay=0.1,
        ),
        train_dataset=dataset, data_collator=collate, callbacks=[technique],
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    return {
        "masks": digest(technique.state_tensors().values()),
        "parameters": digest(trainer.model.parameters()),
        "updates": technique.updates,
        "steps": trainer.state.global_step,
        "world_size": dist.get_world_size(),
    }


def main(output_dir: str) -> None:
    dataset = load_digits_dataset(image_size=16)["train"].select(range(96)).with_transform(to_pixels)
    report = {
        sparsity: run(sparsity, f"{output_dir}/{sparsity}", dataset) for sparsity in ("unstructured", "structured")
    }
    report["resumed"] = run("unstructured", f"{output_dir}/resumed", dataset,
                            resume=f"{output_dir}/unstructured/checkpoint-3")  # fmt: skip
    write_report_and_finish(output_dir, report)


if __name__ == "__main__":
    main(sys.argv[1])
