"""The composed training loss: per-example task loss, technique weights, extra terms; and the log of each term.

`composed_loss` is what `TriLevelTrainer.compute_loss` runs when a technique needs per-example losses:

    per-example loss (model's loss function) -> x product of techniques' weights -> reduced like the Trainer
    + the model's `auxiliary_loss` (token selectors) + every technique's `extra_losses`

Every term is returned by name (`task`, `token_selector`, a technique's own names) so the trainer can log it.
"""

from collections.abc import Callable, Sequence

import torch

from .losses import per_example_loss, reduce_per_example_loss
from .technique import TrainingBatch, TrainingTechnique

TASK_TERM = "task"
SELECTOR_TERM = "token_selector"


def model_output(outputs: object, name: str) -> object:
    """A field of a model output (a `ModelOutput`, a dict or an object), or None."""
    if isinstance(outputs, dict):
        return outputs.get(name)
    return getattr(outputs, name, None)


def composed_loss(
    model: torch.nn.Module,
    inputs: dict,
    techniques: Sequence[TrainingTechnique],
    *,
    config,
    example_index: torch.Tensor | None,
    num_items_in_batch: torch.Tensor | int | None,
    num_processes: int,
    label_smoothing: float,
    per_example_loss_func: Callable | None = None,
    data_collator: Callable | None = None,
) -> tuple[torch.Tensor, object, dict[str, torch.Tensor]]:
    """One training micro-batch: `(loss, outputs, terms)`, where `loss` is the sum of the `terms`.

    The model runs without labels (so it computes no loss of its own); the task loss is then computed per example,
    weighted, and reduced with the Trainer's conventions (`reduce_per_example_loss`). Batch-mean extra terms are
    multiplied by the micro-batch's share of the step, so they are weighted like the task loss under gradient
    accumulation and several processes. `data_collator`, the one that built `inputs`, is named when the batch
    has no `labels`.
    """
    inputs = dict(inputs)
    labels = inputs.pop("labels", None)
    if labels is None:
        raise ValueError(missing_labels_message(techniques, inputs, data_collator))
    for technique in techniques:
        inputs.update(technique.forward_kwargs())

    def task_loss(outputs: object) -> torch.Tensor:
        if per_example_loss_func is not None:
            return per_example_loss_func(outputs, labels)
        return per_example_loss(model_output(outputs, "logits"), labels, config, label_smoothing)

    def forward(**changes) -> object:
        return model(**{**inputs, **changes})

    outputs = model(**inputs)
    losses = task_loss(outputs)
    batch = TrainingBatch(
        inputs, labels, outputs, losses, example_index=example_index, forward=forward, task_loss=task_loss
    )
    for technique in techniques:
        technique.observe(batch)
    for technique in techniques:
        weights = technique.loss_weights(batch)
        if weights is not None:
            batch.example_weights = weights if batch.example_weights is None else batch.example_weights * weights
    weighted = losses if batch.example_weights is None else losses * batch.example_weights
    task, batch.step_share = reduce_per_example_loss(weighted, labels, num_items_in_batch, num_processes)
    terms = {TASK_TERM: task}
    auxiliary = model_output(outputs, "auxiliary_loss")
    if auxiliary is not None:
        terms[SELECTOR_TERM] = auxiliary * batch.step_share
    for technique in techniques:
        for name, value in technique.extra_losses(batch).items():
            if name in terms:
                raise ValueError(f"loss term {name!r} of {technique.name!r} is already taken; name it differently.")
            terms[name] = value * batch.step_share
    return sum(terms.values()), outputs, terms


def missing_labels_message(techniques: Sequence[TrainingTechnique], inputs: dict, data_collator=None) -> str:
    """Why a training batch without `labels` stops a run whose techniques need per-example losses, and the fix."""
    names = ", ".join(technique.name for technique in techniques)
    collator = "the data collator" if data_collator is None else f"the data collator `{_qualified_name(data_collator)}`"
    hint = (
        " It has `label`: name it `labels`, as transformers' collators do."
        if "label" in inputs
        else " Make the collator pass each example's label through as `labels`."
    )
    return (
        f"{names} needs per-example losses, but {collator} returned a training batch without `labels` (its keys: "
        f"{sorted(inputs)}).{hint}"
    )


def _qualified_name(collator) -> str:
    target = collator if hasattr(collator, "__qualname__") else type(collator)
    return f"{getattr(target, '__module__', '')}.{target.__qualname__}".lstrip(".")


class LossTermLog:
    """Running sums of each loss term on the device, drained into the Trainer's training logs.

    `record` only adds detached device tensors (no host synchronisation per step); `drain` converts once per
    logging step and reports each term's sum per optimizer step since the previous log, so the terms add up to the
    logged `loss` when the Trainer normalises by `num_items_in_batch`. Values are this process's.
    """

    def __init__(self, start_step: int = 0) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._last_step = start_step

    def record(self, terms: dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            value = value.detach().float()
            self._sums[name] = self._sums[name] + value if name in self._sums else value

    def record_outputs(self, outputs: object) -> None:
        """Log the model's own auxiliary loss when the Trainer computed the loss (it is already inside `loss`)."""
        auxiliary = model_output(outputs, "auxiliary_loss")
        if auxiliary is not None:
            self.record({SELECTOR_TERM: auxiliary})

    def drain(self, global_step: int) -> dict[str, float]:
        steps = max(global_step - self._last_step, 1)
        self._last_step = global_step
        logs = {f"loss/{name}": round(float(value) / steps, 6) for name, value in self._sums.items()}
        self._sums = {}
        return logs


__all__ = ["SELECTOR_TERM", "TASK_TERM", "LossTermLog", "composed_loss", "missing_labels_message", "model_output"]
