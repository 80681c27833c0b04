"""Train a Tri-Level ViT from scratch on scikit-learn's handwritten digits with `transformers.Trainer`, offline.

What it does, with no arguments (about 2-3 minutes on 2 CPU cores):

1. builds the 1797 real 8x8 digits bundled with scikit-learn as 32x32 RGB images (`hf_trilevel.digits`), split
   80/20 stratified into train and validation;
2. preprocesses them with a `ViTImageProcessorPil` (resize to the model's image size, rescale by 1/255, normalise
   with mean = std = 0.5), with small random rotations, scalings and shifts on the training split;
3. trains a small `TriLevelViTForImageClassification` (6 layers, 4x4 patches, i.e. 64 patch tokens) from random
   initialisation with token sparsity (30% of the patch tokens dropped at each of three pruning layers) and
   attention sparsity (half of each query's attention connections kept) switched on;
4. evaluates after every epoch and prints the final `validation accuracy: ...`;
5. saves a self-contained folder (weights, config, the model's code, the image processor, `eval_results.json`,
   `all_results.json`) that loads anywhere with
   `pipeline("image-classification", model="outputs/digits-trilevel", trust_remote_code=True)`.

Command lines::

    python examples/run_image_classification.py                      # tuned recipe -> outputs/digits-trilevel
    python examples/run_image_classification.py --num_train_epochs 1 --max_train_samples 64 \\
        --max_eval_samples 32 --output_dir /tmp/digits-smoke          # smoke test, seconds
    python examples/run_image_classification.py --token_keep_rate 0.5 --token_fusion \\
        --attention_keep_rate 0.25 --token_prune_layers 2 4           # sparser model
    python examples/run_image_classification.py --help               # every option, incl. all TrainingArguments

Every `TrainingArguments` flag works; flags that are not given take this script's tuned defaults
(`TRAINING_DEFAULTS`) instead of transformers' generic ones.
"""

import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from datasets import DatasetDict
from PIL import Image
from transformers import (
    HfArgumentParser,
    TrainingArguments,
    ViTImageProcessorPil,
    set_seed,
)

from hf_trilevel import (
    ExamplePruningCallback,
    KeepRateScheduleCallback,
    TriLevelTrainer,
    TriLevelViTConfig,
    TriLevelViTForImageClassification,
)
from hf_trilevel.digits import load_digits_dataset
from hf_trilevel.metrics import compute_metrics


@dataclass
class ModelArguments:
    """Size and sparsity of the TriLevel ViT trained from scratch."""

    image_size: int = field(default=32, metadata={"help": "Side of the square input images, in pixels."})
    patch_size: int = field(default=4, metadata={"help": "Side of a patch; must divide image_size."})
    hidden_size: int = field(default=128, metadata={"help": "Width of the transformer."})
    num_hidden_layers: int = field(default=6, metadata={"help": "Number of transformer layers."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads; must divide hidden_size."})
    intermediate_size: int = field(default=256, metadata={"help": "Hidden width of each MLP."})
    token_keep_rate: float = field(
        default=0.7, metadata={"help": "Share of patch tokens kept at each pruning layer, in (0, 1]."}
    )
    token_prune_layers: list[int] | None = field(
        default=None,
        metadata={"help": "0-indexed pruning layers, e.g. `1 3 4`; default: a quarter, half and 3/4 of the depth."},
    )
    token_fusion: bool = field(
        default=False, metadata={"help": "Fuse the dropped tokens into one extra token instead of discarding them."}
    )
    attention_keep_rate: float = field(
        default=0.5, metadata={"help": "Share of attention connections kept per query, in (0, 1]; 1 is dense."}
    )


@dataclass
class DataArguments:
    """Which digits to train and evaluate on."""

    validation_fraction: float = field(
        default=0.2, metadata={"help": "Share of the 1797 digits held out for validation (stratified)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on at most this many examples (quick runs and tests)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on at most this many examples (quick runs and tests)."}
    )
    split_seed: int = field(
        default=0, metadata={"help": "Seed of the train/validation split; fixed apart from --seed so runs compare."}
    )
    augment: bool = field(
        default=True, metadata={"help": "Random small rotations, scalings and shifts of the training images."}
    )


@dataclass
class PruningArguments:
    """Example-level pruning and the token keep-rate warm-up."""

    example_pruning: str = field(
        default="none",
        metadata={
            "help": "Drop training examples by importance: none, forgetting (Tri-Level E-ViT) or loss (InfoBatch).",
            "choices": ["none", "forgetting", "loss"],
        },
    )
    keep_fraction: float = field(default=0.8, metadata={"help": "forgetting: share of the data kept every epoch."})
    swap_fraction: float = field(
        default=0.05, metadata={"help": "forgetting: share of the data swapped in and out at each swap epoch."}
    )
    swap_epochs: list[int] | None = field(
        default=None,
        metadata={"help": "forgetting: epochs that start with a swap; default every tenth until half-way."},
    )
    prune_ratio: float = field(
        default=0.5, metadata={"help": "loss: share of the lowest-loss half skipped each pruned epoch, in (0, 1)."}
    )
    full_data_fraction: float = field(
        default=0.125, metadata={"help": "loss: final share of the epochs trained on all the data."}
    )
    keep_rate_schedule: bool = field(
        default=False, metadata={"help": "Warm token_keep_rate up from 1.0 to its target (per-step cosine)."}
    )
    keep_rate_warmup_fraction: float = field(
        default=10 / 300, metadata={"help": "Share of training at token_keep_rate 1.0 before the decay starts."}
    )
    keep_rate_decay_fraction: float = field(
        default=100 / 300, metadata={"help": "Share of training over which the rate decays to its target."}
    )


def build_callbacks(pruning_args: PruningArguments) -> list:
    """The example-pruning and keep-rate callbacks the arguments ask for (settings are validated here)."""
    callbacks = []
    if pruning_args.example_pruning == "forgetting":
        settings = {"keep_fraction": pruning_args.keep_fraction, "swap_fraction": pruning_args.swap_fraction}
        callbacks.append(ExamplePruningCallback("forgetting", swap_epochs=pruning_args.swap_epochs, **settings))
    elif pruning_args.example_pruning == "loss":
        settings = {"prune_ratio": pruning_args.prune_ratio, "full_data_fraction": pruning_args.full_data_fraction}
        callbacks.append(ExamplePruningCallback("loss", **settings))
    if pruning_args.keep_rate_schedule:
        callbacks.append(
            KeepRateScheduleCallback(
                warmup_fraction=pruning_args.keep_rate_warmup_fraction,
                decay_fraction=pruning_args.keep_rate_decay_fraction,
            )
        )
    return callbacks


# The tuned recipe; transformers' own defaults (lr 5e-5, 3 epochs, checkpoints every 500 steps) suit fine-tuning,
# not training a small ViT from scratch. Any flag given on the command line wins.
TRAINING_DEFAULTS = {
    "output_dir": "outputs/digits-trilevel",
    "num_train_epochs": 30,
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 256,
    "learning_rate": 1e-3,
    "weight_decay": 0.05,
    "warmup_steps": 0.1,
    "lr_scheduler_type": "cosine",
    "eval_strategy": "epoch",
    "save_strategy": "no",
    "logging_steps": 50,
    "report_to": "none",
    "seed": 0,
    "remove_unused_columns": False,
    "dataloader_num_workers": 0,
    "dataloader_pin_memory": False,  # CPU training; avoids a warning per epoch
}


def build_parser() -> HfArgumentParser:
    """The three argument groups, with `TRAINING_DEFAULTS` replacing transformers' defaults for unset flags."""
    parser = HfArgumentParser((ModelArguments, DataArguments, PruningArguments, TrainingArguments))
    parser.set_defaults(**TRAINING_DEFAULTS)
    return parser


def check_arguments(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> None:
    """Raise `ValueError` for settings that would otherwise fail deep inside the model or the Trainer."""
    for name in ("image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
        if getattr(model_args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(model_args, name)}.")
    if model_args.image_size % model_args.patch_size:
        raise ValueError(
            f"--patch_size must divide --image_size, got patch_size={model_args.patch_size} and "
            f"image_size={model_args.image_size}."
        )
    if model_args.hidden_size % model_args.num_attention_heads:
        raise ValueError(
            f"--num_attention_heads must divide --hidden_size, got num_attention_heads="
            f"{model_args.num_attention_heads} and hidden_size={model_args.hidden_size}."
        )
    for name in ("max_train_samples", "max_eval_samples"):
        value = getattr(data_args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be a positive integer (or omitted for all examples), got {value}.")
    if training_args.remove_unused_columns:
        raise ValueError(
            "--remove_unused_columns must stay False: the on-the-fly transform reads the `image` column, "
            "which the Trainer would otherwise drop."
        )


def build_datasets(model_args: ModelArguments, data_args: DataArguments) -> DatasetDict:
    """The digits splits, truncated to `--max_train_samples` / `--max_eval_samples` if given."""
    digits = load_digits_dataset(model_args.image_size, data_args.validation_fraction, data_args.split_seed)
    for split, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        if limit is not None:
            digits[split] = digits[split].select(range(min(limit, len(digits[split]))))
    return digits


def build_image_processor(image_size: int) -> ViTImageProcessorPil:
    """ViT preprocessing at the model's resolution (a default processor would resize to 224 and be refused)."""
    return ViTImageProcessorPil(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


class RandomAffine:
    """Small random rotation, scaling and shift of a PIL image about its centre, filling with the black background.

    Randomness comes from this object's own `numpy.random.Generator`, seeded from the run's seed; no global state.
    """

    def __init__(
        self, seed: int, max_degrees: float = 10.0, max_scale: float = 0.1, max_shift_fraction: float = 0.1
    ) -> None:
        self.generator = np.random.default_rng(seed)
        self.max_degrees = max_degrees
        self.max_scale = max_scale
        self.max_shift_fraction = max_shift_fraction

    def __call__(self, image: Image.Image) -> Image.Image:
        angle = math.radians(self.generator.uniform(-self.max_degrees, self.max_degrees))
        scale = self.generator.uniform(1 - self.max_scale, 1 + self.max_scale)
        shift_x, shift_y = self.generator.uniform(-self.max_shift_fraction, self.max_shift_fraction, 2) * image.size
        # PIL wants the inverse map, output pixel -> input pixel: rotate back by `angle` and shrink by `scale`
        # around the shifted centre.
        centre_x, centre_y = image.width / 2, image.height / 2
        a, b = math.cos(angle) / scale, math.sin(angle) / scale
        d, e = -b, a
        target_x, target_y = centre_x + shift_x, centre_y + shift_y
        matrix = (a, b, centre_x - a * target_x - b * target_y, d, e, centre_y - d * target_x - e * target_y)
        return image.transform(
            image.size, Image.Transform.AFFINE, matrix, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0)
        )


def preprocess(batch: dict, image_processor: ViTImageProcessorPil, augment: RandomAffine | None) -> dict:
    """A batch of `image`/`label` -> `pixel_values` `[batch, 3, size, size]` and `labels`."""
    images = [image.convert("RGB") for image in batch["image"]]
    if augment is not None:
        images = [augment(image) for image in images]
    pixel_values = image_processor(images, return_tensors="pt")["pixel_values"]
    return {"pixel_values": pixel_values, "labels": batch["label"]}


def attach_transforms(
    digits: DatasetDict, image_processor: ViTImageProcessorPil, augment: RandomAffine | None
) -> DatasetDict:
    """Preprocess on the fly (`with_transform`: nothing cached, fresh augmentations every epoch)."""
    return DatasetDict(
        {
            "train": digits["train"].with_transform(
                partial(preprocess, image_processor=image_processor, augment=augment)
            ),
            "validation": digits["validation"].with_transform(
                partial(preprocess, image_processor=image_processor, augment=None)
            ),
        }
    )


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack the per-example `pixel_values` tensors and `labels` ints that the transformed datasets yield."""
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example["labels"] for example in examples], dtype=torch.long),
    }


def build_config(model_args: ModelArguments, label_names: list[str]) -> TriLevelViTConfig:
    """The model's config, label names included (they are saved with the checkpoint and used by pipelines)."""
    return TriLevelViTConfig(
        image_size=model_args.image_size,
        patch_size=model_args.patch_size,
        hidden_size=model_args.hidden_size,
        num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads,
        intermediate_size=model_args.intermediate_size,
        token_keep_rate=model_args.token_keep_rate,
        token_prune_layers=model_args.token_prune_layers,
        token_fusion=model_args.token_fusion,
        attention_keep_rate=model_args.attention_keep_rate,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: index for index, name in enumerate(label_names)},
    )


def describe(config: TriLevelViTConfig, num_parameters: int, datasets: DatasetDict) -> str:
    return (
        f"TriLevel ViT: {num_parameters:,} parameters, {config.num_hidden_layers} layers, "
        f"hidden {config.hidden_size}, {(config.image_size // config.patch_size) ** 2} patches; "
        f"token_keep_rate={config.token_keep_rate} at layers {config.token_prune_layers} "
        f"(fusion {'on' if config.token_fusion else 'off'}), attention_keep_rate={config.attention_keep_rate}; "
        f"{len(datasets['train'])} train / {len(datasets['validation'])} validation images."
    )


def replace_pickled_training_arguments(training_args: TrainingArguments) -> None:
    """Swap the `training_args.bin` pickle that `save_model` writes for `training_args.json`.

    The saved folder is what users load and push; nothing in it should need unpickling to inspect.
    """
    output_dir = Path(training_args.output_dir)
    (output_dir / "training_args.bin").unlink(missing_ok=True)
    (output_dir / "training_args.json").write_text(training_args.to_json_string())


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = build_parser()
    try:  # every bad setting stops here, before training, with a message naming the argument (exit status 2)
        model_args, data_args, pruning_args, training_args = parser.parse_args_into_dataclasses(args=argv)
        check_arguments(model_args, data_args, training_args)
        callbacks = build_callbacks(pruning_args)
        digits = build_datasets(model_args, data_args)
        config = build_config(model_args, digits["train"].features["label"].names)
    except ValueError as error:
        parser.error(str(error))

    set_seed(training_args.seed)
    model = TriLevelViTForImageClassification(config)
    image_processor = build_image_processor(model_args.image_size)
    augment = RandomAffine(training_args.seed) if data_args.augment else None
    datasets = attach_transforms(digits, image_processor, augment)
    if training_args.process_index == 0:
        print(describe(model.config, model.num_parameters(), datasets))

    trainer = TriLevelTrainer(  # a transformers.Trainer that can also feed ExamplePruningCallback
        model=model,
        args=training_args,
        train_dataset=datasets["train"],
        eval_dataset=datasets["validation"],
        data_collator=collate,
        processing_class=image_processor,  # save_model() then also writes preprocessor_config.json
        compute_metrics=compute_metrics,
        callbacks=callbacks,
    )
    train_result = trainer.train()
    trainer.save_model()
    replace_pickled_training_arguments(training_args)
    pruner = trainer.example_pruner
    if pruner is not None:
        train_result.metrics["examples_seen"] = sum(pruner.sizes)
        train_result.metrics["example_fraction_seen"] = sum(pruner.sizes) / (len(pruner.sizes) * pruner.num_examples)
    trainer.save_metrics("train", train_result.metrics)

    metrics = trainer.evaluate()
    trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        top5 = f"  (top-5: {metrics['eval_top5_accuracy']:.4f})" if "eval_top5_accuracy" in metrics else ""
        print(f"\nvalidation accuracy: {metrics['eval_accuracy']:.4f}{top5}")
        print(f"saved model, image processor and metrics to {training_args.output_dir}")
    return metrics


if __name__ == "__main__":
    try:
        main()
    finally:
        # Without this, gloo processes of a multi-process run intermittently abort at exit (SIGABRT).
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
