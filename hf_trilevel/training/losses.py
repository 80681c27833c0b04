"""Per-example classification losses with exactly the semantics of the model's own loss function.

`TriLevelTrainer` needs the loss of every example separately: example pruning records it and re-weights it before
the batch is reduced. transformers' image-classification loss (`ForSequenceClassificationLoss`, chosen by the head's
class name) returns only a reduced number, so this module computes the same loss unreduced, for the same three
`config.problem_type`s and with the same rule for choosing one when it is unset, and with the Trainer's label
smoothing (`LabelSmoother`). `tests/test_losses.py` checks both against transformers on the same logits.

`reduce_per_example_loss` then turns weighted per-example losses into the number the Trainer back-propagates, with
the Trainer's own gradient-accumulation and multi-process conventions, so a run with every weight at 1 trains exactly
like the stock `Trainer`.
"""

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


def resolve_problem_type(config, labels: torch.Tensor) -> str:
    """`config.problem_type`, set on first use from `num_labels` and the label dtype, as transformers does."""
    if config.problem_type is None:
        if config.num_labels == 1:
            config.problem_type = "regression"
        elif config.num_labels > 1 and labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type not in PROBLEM_TYPES:
        raise ValueError(f"`config.problem_type` must be one of {list(PROBLEM_TYPES)}, got {config.problem_type!r}.")
    return config.problem_type


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor, config, label_smoothing: float = 0.0) -> torch.Tensor:
    """Loss of each example, `[batch]` float32; its mean is the model's own (mean-reduced) loss.

    * single-label: cross-entropy, with `label_smoothing` as `Trainer`'s `LabelSmoother` applies it; examples whose
      label is -100 get 0 (and the Trainer does not count them).
    * multi-label: binary cross-entropy with logits, averaged over the labels of the example (transformers disables
      label smoothing here too).
    * regression: squared error, averaged over the outputs of the example.
    """
    problem_type = resolve_problem_type(config, labels)
    logits = logits.float()
    labels = labels.to(logits.device)
    if problem_type == "single_label_classification":
        return F.cross_entropy(
            logits.view(-1, config.num_labels),
            labels.view(-1),
            reduction="none",
            ignore_index=IGNORE_INDEX,
            label_smoothing=label_smoothing,
        )
    if problem_type == "multi_label_classification":
        losses = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
    else:
        losses = F.mse_loss(
            logits.view(len(labels), -1), labels.to(logits.dtype).view(len(labels), -1), reduction="none"
        )
    return losses.view(len(losses), -1).mean(dim=1)


def counted_examples(labels: torch.Tensor, num_items_in_batch: torch.Tensor | int) -> torch.Tensor | float:
    """Examples behind the Trainer's `num_items_in_batch`, which counts label *elements* that are not -100.

    For single-label data that is the number of labelled examples; multi-label and multi-output labels have several
    elements per example, so the count is divided by their number.
    """
    per_example = labels[0].numel() if labels.dim() > 1 else 1
    return num_items_in_batch / per_example


def reduce_per_example_loss(
    losses: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None,
    num_processes: int,
) -> tuple[torch.Tensor, float | torch.Tensor]:
    """The batch loss the Trainer back-propagates, and the share of the whole step this micro-batch carries.

    With `num_items_in_batch` (the Trainer counts the examples of every micro-batch of the optimizer step, summed
    over processes when `average_tokens_across_devices`) the sum is divided by that count and multiplied by the
    number of processes, which DDP's gradient averaging divides out again: the gradient is exactly that of the mean
    over the whole step, however it is split into micro-batches and processes. Without it the micro-batch mean is
    returned and the Trainer divides by the accumulation steps, as it does for any model.

    The returned share is what a batch-mean extra term (a distillation or selector loss) must be multiplied by to be
    weighted the same way.
    """
    if num_items_in_batch is None:
        return losses.mean(), 1.0
    examples = counted_examples(labels, num_items_in_batch)
    if torch.is_tensor(examples):
        examples = examples.to(losses.device)
    share = len(losses) * num_processes / examples
    return losses.sum() * num_processes / examples, share


__all__ = ["counted_examples", "per_example_loss", "reduce_per_example_loss", "resolve_problem_type"]
