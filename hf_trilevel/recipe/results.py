"""What a run reports beside the Trainer's own metrics: the examples it trained on, and at evaluation the realised
sparsity (FLOPs, kept tokens per pruning layer, non-zero weights) that `eval_results.json` and the model card quote."""

from ..evaluation.metrics import sparsity_metrics
from ..evaluation.token_counts import (
    KEPT_TOKENS_METRIC,
    collect_kept_token_counts,
    fixed_kept_token_counts,
    kept_token_metrics,
)
from ..modeling.configuration_trilevel_vit import TriLevelViTConfig
from ..training.trainer import TriLevelTrainer
from ..weight_sparsity.masks import nonzero_fraction
from ..weight_sparsity.technique import WeightSparsity


def examples_trained_per_epoch(num_examples: int, batch_size: int, num_processes: int, drop_last: bool) -> int:
    """Examples one epoch of `num_examples` trains on, summed over `num_processes`, for the Trainer's dataloader.

    Without `drop_last` every example trains once (accelerate's `even_batches` repeats a few to fill the last round
    of batches; repeats are not new examples). With it, the last partial batch is dropped, and accelerate's sharding
    (`BatchSamplerShard`) then drops the last incomplete round of `num_processes` batches: only full rounds train.
    `batch_size` is the per-process batch size.
    """
    if not drop_last:
        return num_examples
    rounds = num_examples // batch_size // num_processes
    return rounds * batch_size * num_processes


def examples_seen_metrics(trainer: TriLevelTrainer, num_train_examples: int) -> dict[str, float]:
    """How many examples the run trained on (over every process), and their share of `epochs x data`.

    What was trained, not what was planned: with `--dataloader_drop_last` each epoch's last partial batch (and
    accelerate's last incomplete round of batches over the processes) is not trained. Example pruning counts the
    examples it observed; without it the count follows from the dataloader's batching.
    """
    technique_metrics = trainer.technique_metrics()
    if "examples_seen" in technique_metrics:
        return {key: technique_metrics[key] for key in ("examples_seen", "example_fraction_seen")}
    args, epochs = trainer.args, trainer.state.epoch or 0.0
    per_epoch = examples_trained_per_epoch(
        num_train_examples, args.train_batch_size, args.world_size, args.dataloader_drop_last
    )
    seen = round(epochs * per_epoch)
    total = epochs * num_train_examples
    return {"examples_seen": seen, "example_fraction_seen": seen / total if total else 0.0}


def measured_kept_tokens(trainer: TriLevelTrainer, eval_dataset) -> dict[str, float]:
    """`eval_kept_tokens_layer_<i>` (the mean patch tokens an image keeps after pruning layer `i`) and the FLOPs per
    image those counts give (`eval_measured_gflops_per_image`, `eval_measured_flops_speedup_limit`).

    The adaptive selector's counts differ per image: they are measured on the validation set from the model's
    `kept_token_counts`, in one extra pass sharded like the Trainer's evaluation, gathered over the processes and
    under the Trainer's autocast. Fixed-count selectors keep the schedule in every image, so no pass is needed.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    counts = fixed_kept_token_counts(model.config)
    if counts is None:
        counts = collect_kept_token_counts(
            model,
            trainer.get_eval_dataloader(eval_dataset),
            gather=trainer.accelerator.gather_for_metrics,
            context=trainer.autocast_smart_context_manager,
        )
    return kept_token_metrics(model.config, counts)


def kept_token_keys(config: TriLevelViTConfig) -> list[str]:
    """The metric names `measured_kept_tokens` writes, in pruning-layer order."""
    return ["eval_" + KEPT_TOKENS_METRIC.format(layer=layer) for layer in config.token_prune_layers]


def realised_sparsity_metrics(trainer: TriLevelTrainer, eval_dataset) -> dict[str, float]:
    """The sparsity the evaluated model realises: FLOPs and token shares from its config (`sparsity_metrics`), the
    kept tokens measured on `eval_dataset`, and with weight sparsity `weight_density`, the share of non-zero
    entries in the weights it masks."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    metrics = sparsity_metrics(model.config)
    if any(isinstance(technique, WeightSparsity) for technique in trainer.techniques()):
        metrics["weight_density"] = nonzero_fraction(model)
    return {**metrics, **measured_kept_tokens(trainer, eval_dataset)}


__all__ = [
    "examples_seen_metrics",
    "examples_trained_per_epoch",
    "kept_token_keys",
    "measured_kept_tokens",
    "realised_sparsity_metrics",
]
