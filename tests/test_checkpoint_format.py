"""Checkpoint format: the key names transformers' own ViT writes, readable by ViT, and exact Trainer resumes."""

import torch
from safetensors import safe_open
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments, ViTForImageClassification

from hf_trilevel import TriLevelViTForImageClassification

from .helpers import images, tiny_model, tiny_vit


def saved_keys(folder) -> set[str]:
    with safe_open(folder / "model.safetensors", "pt") as checkpoint:
        return set(checkpoint.keys())


def test_saved_key_names_are_those_transformers_vit_writes(tmp_path):
    tiny_model(token_keep_rate=0.5).save_pretrained(tmp_path / "ours")
    tiny_vit().save_pretrained(tmp_path / "vit")
    assert saved_keys(tmp_path / "ours") == saved_keys(tmp_path / "vit")


def test_transformers_vit_loads_our_folder_with_the_same_logits(tmp_path):
    ours = tiny_model()  # every keep rate at 1.0: the dense ViT computation
    ours.save_pretrained(tmp_path)
    vit, info = ViTForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        torch.testing.assert_close(vit.eval()(images(2)).logits, ours(images(2)).logits, rtol=0, atol=1e-6)


def test_our_folder_round_trips_through_from_pretrained_exactly(tmp_path):
    original = tiny_model(token_keep_rate=0.5, attention_keep_rate=0.5)
    original.save_pretrained(tmp_path)
    loaded = TriLevelViTForImageClassification.from_pretrained(tmp_path)
    for name, tensor in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


class RandomImages(Dataset):
    """Eight fixed images with labels; no augmentation, so every run sees exactly the same batches."""

    def __init__(self):
        self.pixel_values, self.labels = images(8, seed=3), torch.arange(8) % 5

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}


def train(output_dir, max_steps: int, seed: int, resume_from_checkpoint=None) -> tuple[dict, list[float]]:
    model = tiny_model(seed=seed, token_keep_rate=0.5, attention_keep_rate=0.5, token_fusion=True).train()
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        save_strategy="steps",
        save_steps=2,
        logging_steps=1,
        report_to=[],
        dataloader_num_workers=0,
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=RandomImages())
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    losses = {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}, losses


def test_trainer_resume_from_a_step_checkpoint_equals_the_uninterrupted_run(tmp_path):
    weights, losses = train(tmp_path / "full", max_steps=4, seed=0)
    # A differently initialised model: only a real restore of checkpoint-2 can make it end on the same weights.
    resumed_weights, resumed_losses = train(
        tmp_path / "full", max_steps=4, seed=7, resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2")
    )
    assert [resumed_losses[step] for step in (3, 4)] == [losses[step] for step in (3, 4)]
    for name, tensor in weights.items():
        assert torch.equal(resumed_weights[name], tensor), name
