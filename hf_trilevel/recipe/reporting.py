"""What a run tells its user: notices on stderr from the main process, one paragraph on what is about to run, the
model card's data-set names, and the final lines with the accuracy, the FLOPs and the realised sparsity."""

import logging
import sys
from pathlib import Path

from transformers import PreTrainedModel, TrainingArguments

from ..evaluation.patches import num_patches
from ..modeling.configuration_trilevel_vit import TriLevelViTConfig
from .arguments import DataArguments, ModelArguments
from .model import selector_text
from .results import kept_token_keys

PACKAGE_LOGGER = "hf_trilevel"


def configure_logging(training_args: TrainingArguments, script_logger: str) -> None:
    """The script's and the package's notices on stderr, prefixed by the script's name, from the main process only
    (every process reaches the same ones). Records still propagate, so a caller's own handlers see them too."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"[{script_logger}] %(levelname)s: %(message)s"))
    for name in (script_logger, PACKAGE_LOGGER):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(logging.INFO if training_args.process_index == 0 else logging.ERROR)


def describe(model: PreTrainedModel, dataset: dict, augmentation: str, training_args: TrainingArguments) -> str:
    """One paragraph on what is about to run: model, sparsity, data, augmentation, processes."""
    config = model.config
    sizes = " / ".join(f"{len(data)} {split}" for split, data in dataset.items())
    text = (
        f"TriLevel ViT: {model.num_parameters():,} parameters, {config.num_hidden_layers} layers, "
        f"hidden {config.hidden_size}, {num_patches(config.image_size, config.patch_size)} patches; "
        f"token_keep_rate={config.token_keep_rate} at layers {config.token_prune_layers} "
        f"(fusion {'on' if config.token_fusion else 'off'}, {selector_text(config)}), "
        f"attention_keep_rate={config.attention_keep_rate}; "
        f"{config.num_labels} classes, {sizes} images; augmentation {augmentation}."
    )
    if training_args.world_size > 1:
        backend = " on CPU over gloo (--use_cpu)" if training_args.use_cpu else ""
        text += f" {training_args.world_size} processes, {training_args.parallel_mode.value}{backend}."
    if config.token_keep_rate == 1.0 and config.attention_keep_rate == 1.0:
        text += " Token and attention sparsity are off (keep rates 1.0); see --token_keep_rate."
    return text


def model_card_kwargs(model_args: ModelArguments, data_args: DataArguments) -> dict:
    """What transformers' example passes to `push_to_hub` / `create_model_card`."""
    kwargs = {
        "finetuned_from": model_args.model_name_or_path,
        "tasks": "image-classification",
        "dataset": dataset_title(data_args),
        "tags": ["image-classification", "vision", "trilevel-vit"],
    }
    if data_args.dataset_name and not data_args.uses_digits() and not Path(data_args.dataset_name).exists():  # Hub id
        kwargs["dataset_tags"] = data_args.dataset_name
    return kwargs


def dataset_title(data_args: DataArguments) -> str:
    """The data set's name as the model card shows it."""
    if data_args.uses_redundant_digits():
        return "scikit-learn digits, redundant variant (typical images repeated as near-copies)"
    if data_args.uses_digits():
        return "scikit-learn digits"
    return data_args.dataset_name or "imagefolder"


def results_text(metrics: dict[str, float], config: TriLevelViTConfig, output_dir: str) -> str:
    """The run's last lines: validation accuracy (and top-5), forward FLOPs per image against the dense model (the
    measured counts when images keep different numbers of tokens), non-zero weights, kept tokens, the folder."""
    lines = []
    if "eval_accuracy" in metrics:
        top5 = f"  (top-5: {metrics['eval_top5_accuracy']:.4f})" if "eval_top5_accuracy" in metrics else ""
        lines.append(f"\nvalidation accuracy: {metrics['eval_accuracy']:.4f}{top5}")
        gflops, limit = metrics["eval_gflops_per_image"], metrics["flops_speedup_limit"]
        if "eval_measured_gflops_per_image" in metrics:  # per-image counts: the config gives an upper bound
            gflops, limit = metrics["eval_measured_gflops_per_image"], metrics["eval_measured_flops_speedup_limit"]
        lines.append(f"forward GFLOPs per image: {gflops:.4g} ({limit:.2f}x fewer than dense)")
        if "weight_density" in metrics:
            lines.append(f"non-zero share of the 2-D weights: {metrics['weight_density']:.3f}")
        kept = [metrics[key] for key in kept_token_keys(config) if key in metrics]
        if kept:
            counts = " -> ".join(f"{count:.4g}" for count in kept)
            total = num_patches(config.image_size, config.patch_size)
            lines.append(f"patch tokens kept per image after each pruning layer (mean): {counts} of {total}")
    lines.append(f"saved to {output_dir}")
    return "\n".join(lines)


__all__ = ["configure_logging", "dataset_title", "describe", "model_card_kwargs", "results_text"]
