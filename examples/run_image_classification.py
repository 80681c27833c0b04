"""Train or fine-tune a Tri-Level ViT for image classification with `transformers.Trainer`, offline by default.

The arguments are those of transformers' `examples/pytorch/image-classification/run_image_classification.py` plus
the Tri-Level ones (token and attention sparsity, token merging, example pruning, dense/sparse training, weight
sparsity), as flags or one JSON file of them; docs/flags.md lists every flag with its default and range, and examples
of use. Every family in `hf_trilevel.modeling.FAMILY_CLASSES` trains (ViT, DeiT, DINOv2, ...): a checkpoint's or
config's family comes from its `config.json` (TriLevel or plain transformers type); a model trained from scratch is a
ViT unless `--model_family` names another.

With no arguments (about 2 minutes on 2 CPU cores) it trains a small TriLevel ViT from scratch on the digits bundled
with scikit-learn, prints the validation accuracy and saves a self-contained folder (weights, config, the model's
code, the image processor, results, a model card) that loads anywhere with
`pipeline("image-classification", model="outputs/digits-trilevel", trust_remote_code=True)`.

    python examples/run_image_classification.py                        # the digits -> outputs/digits-trilevel
    python examples/run_image_classification.py args.json              # the same arguments from a JSON file
    accelerate launch --multi_gpu --num_processes 2 examples/run_image_classification.py --example_pruning forgetting

Bad input stops the run before training, with exit status 2 and a message naming the flag.
"""

import logging
import sys
from pathlib import Path

from transformers import PreTrainedModel, TrainingArguments, set_seed

from hf_trilevel import DenseSparseTraining, TriLevelTrainer
from hf_trilevel.evaluation.flops import layer_tokens
from hf_trilevel.evaluation.metrics import build_compute_metrics
from hf_trilevel.evaluation.patches import num_patches
from hf_trilevel.image_data import RandomSource, attach_transforms, collate, eval_transforms, train_transforms
from hf_trilevel.model_card import trainer_model_card
from hf_trilevel.modeling import family_of_config
from hf_trilevel.modeling.configuration_trilevel_vit import TriLevelViTConfig
from hf_trilevel.modeling.value_checks import as_pair
from hf_trilevel.recipe.arguments import DataArguments, ModelArguments
from hf_trilevel.recipe.checks import check_arguments, slim_output_dir
from hf_trilevel.recipe.data import label_names, limit_splits, load_digits, load_user_dataset
from hf_trilevel.recipe.model import (
    build_image_processor,
    load_trilevel_model,
    merge_text,
    selector_text,
)
from hf_trilevel.recipe.outputs import remove_earlier_results, save_slimmed_model, write_operating_point_table
from hf_trilevel.recipe.parsing import build_parser, parse_flags_or_json, resolve_defaults
from hf_trilevel.recipe.processes import end_distributed
from hf_trilevel.recipe.results import examples_seen_metrics, kept_token_keys, realised_sparsity_metrics
from hf_trilevel.training.arguments import TechniqueContext
from hf_trilevel.training.errors import TrainingRefused

logger = logging.getLogger("run_image_classification")


def main(argv: list[str] | None = None) -> tuple[TriLevelTrainer, dict[str, float]]:
    """Check everything, train, evaluate, save and write the model card; return the trainer and the metrics."""
    parser = build_parser()
    try:
        # Every argument group checks its own flags as it is parsed; the checks across groups, the output folder
        # and the checkpoint's config come next, so a bad setting stops here, before any data loads.
        model_args, data_args, *technique_args, run_args, training_args = parse_flags_or_json(
            parser, sys.argv[1:] if argv is None else argv, resolve_defaults
        )
        configure_logging(training_args, logger.name)
        check_arguments(model_args, run_args, training_args, technique_args)

        # Data, config and techniques; the main process fills the datasets cache first.
        with training_args.main_process_first(desc="loading the data"):
            dataset = None
            if not data_args.uses_digits():
                dataset = load_user_dataset(data_args, cache_dir=model_args.cache_dir, token=model_args.token)
            config = model_args.build_config(label_names(dataset))
            if dataset is None:  # the digits are drawn at the model's resolution
                dataset = load_digits(data_args, config.image_size)
            dataset = limit_splits(dataset, data_args, training_args)
            num_train_examples = len(dataset["train"]) if "train" in dataset else None
            context = TechniqueContext(
                config, training_args, num_train_examples, technique_args, model_args.hub_kwargs()
            )
            techniques = [args.build(context) for args in technique_args]

        # Model and image processor; the processor resizes to the model's resolution, as `pipeline` will.
        image_processor, notice = build_image_processor(
            config,
            model_args.image_processor_name,
            model_args.model_name_or_path,
            trust_remote_code=model_args.trust_remote_code,
            **model_args.hub_kwargs(),
        )
        if notice:
            logger.warning(notice)
        set_seed(training_args.seed)
        model = load_trilevel_model(
            config,
            model_args.model_name_or_path,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            **model_args.hub_kwargs(),
        )
    except ValueError as error:
        parser.error(str(error))  # the usage line, the message naming the flag, exit status 2

    # Transforms: augmentation drawn per (epoch, example) from the run's seed, so a resumed run sees the same images.
    augmentation = data_args.training_augmentation()
    size = as_pair(config.image_size)
    random = RandomSource(training_args.seed)
    transforms = {
        "train": train_transforms(augmentation, size, random, data_args.min_crop_scale),
        "validation": eval_transforms(size),
    }
    dataset = attach_transforms(dataset, image_processor, transforms, random)
    if training_args.process_index == 0:
        print(describe(model, dataset, augmentation, training_args))

    trainer = TriLevelTrainer(  # a transformers.Trainer that runs the training techniques
        model=model,
        args=training_args,
        train_dataset=dataset.get("train") if training_args.do_train else None,
        eval_dataset=dataset.get("validation"),
        data_collator=collate,
        processing_class=image_processor,  # save_model() then also writes preprocessor_config.json
        compute_metrics=build_compute_metrics(),  # top-1 and top-5 accuracy, an `evaluate` metric shipped offline
        callbacks=[technique for technique in techniques if technique is not None],
        card_writer=trainer_model_card,  # the TriLevel card: method, measured results, usage; push_to_hub uploads it
    )

    metrics = {}
    if training_args.do_train:
        if training_args.resume_from_checkpoint is None:
            remove_earlier_results(trainer, model_args)
        try:
            train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        except TrainingRefused as error:  # refused before the first step (a resume that differs, a technique's check)
            parser.error(str(error))
        trainer.save_model()  # TriLevelTrainer writes training_args.json, not the training_args.bin pickle
        train_metrics = {**train_result.metrics, "train_samples": len(dataset["train"])}
        train_metrics.update(examples_seen_metrics(trainer, len(dataset["train"])))
        trainer.log_metrics("train", train_metrics)
        trainer.save_metrics("train", train_metrics)
        trainer.save_state()
        metrics.update(train_metrics)

    if training_args.do_eval:
        eval_metrics = {**trainer.evaluate(), "eval_samples": len(dataset["validation"])}
        eval_metrics.update(realised_sparsity_metrics(trainer, dataset["validation"]))
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)

    dense_sparse = any(isinstance(technique, DenseSparseTraining) for technique in techniques)
    if training_args.do_train and dense_sparse and "validation" in dataset:
        write_operating_point_table(trainer, dataset["validation"])  # before the card, which shows it

    card_kwargs = model_card_kwargs(model_args, data_args)
    if training_args.push_to_hub:
        trainer.push_to_hub(**card_kwargs)
    elif training_args.do_train:
        trainer.create_model_card(**card_kwargs)
    if training_args.do_train and slim_output_dir(technique_args) is not None:
        save_slimmed_model(trainer, slim_output_dir(technique_args), card_kwargs)
    if trainer.is_world_process_zero():
        print(results_text(metrics, model.config, training_args.output_dir))
    return trainer, metrics


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
        f"TriLevel {family_of_config(config).name}: {model.num_parameters():,} parameters, "
        f"{config.num_hidden_layers} layers, "
        f"hidden {config.hidden_size}, {num_patches(config.image_size, config.patch_size)} patches; "
        f"token_keep_rate={config.token_keep_rate} at layers {config.token_prune_layers} "
        f"(fusion {'on' if config.token_fusion else 'off'}, {selector_text(config)}), "
        f"attention_keep_rate={config.attention_keep_rate}, {merge_text(config)}; "
        f"{config.num_labels} classes, {sizes} images; augmentation {augmentation}."
    )
    if training_args.world_size > 1:
        backend = " on CPU over gloo (--use_cpu)" if training_args.use_cpu else ""
        text += f" {training_args.world_size} processes, {training_args.parallel_mode.value}{backend}."
    if config.token_keep_rate == 1.0 and config.attention_keep_rate == 1.0 and not config.merges_tokens():
        text += " Token and attention sparsity are off (keep rates 1.0); see --token_keep_rate or --token_merge_r."
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
        total = num_patches(config.image_size, config.patch_size)
        if kept:
            counts = " -> ".join(f"{count:.4g}" for count in kept)
            merged = " (after its drop and merge)" if config.merges_tokens() else ""
            lines.append(f"patch tokens kept per image after each pruning layer{merged} (mean): {counts} of {total}")
        if config.merges_tokens():  # merging goes on past the last pruning layer
            left = layer_tokens(config)[-1].after_merge
            lines.append(f"patch tokens left after the last layer's merge: {left} of {total}")
    lines.append(f"saved to {output_dir}")
    return "\n".join(lines)


if __name__ == "__main__":
    succeeded = False
    try:
        main()
        succeeded = True
    finally:
        end_distributed(wait_for_all=succeeded)
