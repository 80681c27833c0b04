"""The trainer-side seam: one public way for a training technique to shape the loss, keep state and share numbers.

A technique is a `transformers.TrainerCallback` (so it gets every Trainer event, and works wherever callbacks do)
that `TriLevelTrainer` additionally asks four questions, each with a do-nothing default:

* **Loss.** For every training batch the trainer computes each example's loss from the model's
  own loss function (`hf_trilevel.training.losses`), then calls `observe(batch)` (record statistics),
  `loss_weights(batch)`
  (per-example weights; the product of every technique's weights is applied), and `extra_losses(batch)` (named
  terms added to the loss: distillation, selector losses). The task loss and every extra term are logged
  separately (`loss/task`, `loss/<term>`). Gradient accumulation and multi-process runs stay exact: see
  `TriLevelTrainer.compute_loss`.
* **Data.** `train_sampler(num_examples)` may serve the training set in its own order and size (example pruning);
  `needs_example_index` asks for every batch to carry each example's dataset position.
* **State.** `state_tensors()` / `state_metadata()` are written into every checkpoint as
  `<name>.safetensors` + `<name>.json`, before the Trainer's own state file, and `load_state(...)` receives them on
  `resume_from_checkpoint`. State must be the same on every rank when it is saved (reduce it first with
  `sum_across_processes`), so a run resumes at any world size.
* **Card and results.** `card_settings()` is the plain-data summary the model card shows; `summary_metrics()` the
  numbers the run reports after training (`TriLevelTrainer.technique_metrics()` merges them).

Nothing here overrides a Trainer method; `TriLevelTrainer` owns the few overrides there are.
"""

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import Sampler
from transformers import TrainerCallback

from .errors import TrainingRefused


def is_distributed() -> bool:
    """Whether torch.distributed runs more than one process here (then techniques' statistics must be reduced)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_across_processes(tensor: torch.Tensor) -> torch.Tensor:
    """A new tensor holding the element-wise sum of `tensor` over every process (a copy of it on one process).

    Every process must call it at the same point with tensors of the same shape, as with any collective.
    """
    total = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


@dataclass
class TrainingBatch:
    """What a technique sees of one batch, after the forward.

    Attributes:
        inputs: the model inputs (without labels or `example_index`).
        labels: the labels, `[batch]` or `[batch, num_labels]`.
        outputs: the model's output object (`logits`, and with TriLevel models `auxiliary_loss`, kept tokens, ...).
        per_example_loss: `[batch]` float32 losses from the model's loss function, before any weighting.
        example_index: `[batch]` dataset positions, when a technique set `needs_example_index`.
        step_share: the share of the optimizer step this micro-batch carries; multiply a batch-mean extra term by
            it so it is weighted like the task loss under gradient accumulation and several processes.
        example_weights: `[batch]` product of every technique's `loss_weights`, or None for all ones; set before
            `extra_losses` is asked, so a term computed per example can be weighted like the task loss.
        forward: runs the model again on these inputs exactly as the trainer ran it (the process-wrapped model,
            under the Trainer's autocast), with keyword arguments added or replaced; for techniques that need more
            passes of the same batch (dense/sparse training). Its outputs join the same backward pass.
        task_loss: `(outputs) -> [batch]` per-example task losses of another pass's outputs, computed as
            `per_example_loss` was (the model's loss function, label smoothing, `per_example_loss_func`).
    """

    inputs: dict
    labels: torch.Tensor
    outputs: object
    per_example_loss: torch.Tensor
    example_index: torch.Tensor | None = None
    step_share: float | torch.Tensor = 1.0
    example_weights: torch.Tensor | None = None
    forward: Callable[..., object] | None = None
    task_loss: Callable[[object], torch.Tensor] | None = None


class TrainingTechnique(TrainerCallback):
    """Base class of the training techniques `TriLevelTrainer` composes. Override what the technique needs."""

    #: Key of the technique's checkpoint files, log entries and model-card settings; unique among the callbacks.
    name: str = "technique"
    #: Whether every batch must carry `example_index` (the dataset position of each example).
    needs_example_index: bool = False
    #: Whether the technique sets the model's keep rates every step; a run takes at most one such technique.
    sets_keep_rates: bool = False
    #: Why the technique cannot train with sharded parameters (FSDP, DeepSpeed ZeRO-3), or None when it can; the
    #: trainer refuses such a run before training and names this reason.
    sharding_refusal: str | None = None

    def setup(self, args, num_examples: int | None, device: torch.device) -> None:
        """Called once before the train dataloader is built: check the run and plan (raise `ValueError` early)."""

    def needs_per_example_loss(self) -> bool:
        """Whether the trainer must compute per-example losses for this technique (default: if it overrides a hook)."""
        cls = type(self)
        return any(
            getattr(cls, hook) is not getattr(TrainingTechnique, hook)
            for hook in ("observe", "loss_weights", "extra_losses")
        )

    def forward_kwargs(self) -> dict:
        """Extra keyword arguments for the model's training forward (e.g. `output_token_importance=True`)."""
        return {}

    def observe(self, batch: TrainingBatch) -> None:
        """Record statistics of a batch (no host synchronisation, please: it runs every step)."""

    def loss_weights(self, batch: TrainingBatch) -> torch.Tensor | None:
        """Per-example loss weights `[batch]`, or None for all ones."""
        return None

    def extra_losses(self, batch: TrainingBatch) -> dict[str, torch.Tensor]:
        """Named scalar terms to add to the loss, already weighted (0-weight terms should simply be left out)."""
        return {}

    def train_sampler(self, num_examples: int) -> Sampler | None:
        """A sampler that replaces the Trainer's for the training set, or None."""
        return None

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors to save with every checkpoint; identical on every rank (reduce them first)."""
        return {}

    def state_metadata(self) -> dict:
        """JSON-serialisable state to save with every checkpoint."""
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
        """Restore what `state_tensors` / `state_metadata` saved, on resume (after `setup`)."""

    def resume_settings(self) -> dict:
        """Every setting a resumed run must share with the checkpoint it resumes, as plain JSON data.

        `TriLevelTrainer` records them, keyed by the technique's `name`, in every checkpoint
        (`hf_trilevel.training.technique_manifest`) and refuses a resume whose techniques or settings differ, before
        the first step: a technique dropped on resume would silently lose its state (masks, statistics), one added
        or changed halfway would train a run that is neither the old nor the new one. The default records only that
        the technique ran; override it to add the constructor arguments that shape training.
        """
        return {}

    def name_settings(self, spellings: dict[str, str | None], flags: str | None = None) -> "TrainingTechnique":
        """Tell the technique how its caller spells it, so messages name what the user typed; returns the technique.

        Args:
            spellings: `resume_settings` key -> the caller's name for it (a script's flag, without dashes), or None
                for a setting the caller has no flag for; keys left out keep their own name.
            flags: the command-line flags that built the technique, as the user gave them (e.g.
                `"--weight_sparsity structured --sparse_update_interval 2"`): a message about a resume without the
                technique quotes them.
        """
        self._setting_spellings = dict(spellings)
        self._flags = flags
        return self

    def setting_spelling(self, key: str) -> str | None:
        """How the caller spells setting `key`, None when it has no flag for it (see `name_settings`)."""
        return getattr(self, "_setting_spellings", {}).get(key, key)

    def flags(self) -> str | None:
        """The command-line flags that built the technique, if the caller gave them (see `name_settings`)."""
        return getattr(self, "_flags", None)

    def has_state(self) -> bool:
        """Whether this technique writes checkpoint state (then resuming requires it)."""
        return type(self).state_tensors is not TrainingTechnique.state_tensors

    def card_settings(self) -> dict | None:
        """Plain-data settings for the model card, or None to leave the technique out."""
        return None

    def summary_metrics(self) -> dict[str, float | int]:
        """Numbers the run reports after training, in its results and model card (e.g. `examples_seen`)."""
        return {}

    def epoch_summary(self) -> dict[str, float | int | str]:
        """Numbers to log (as `<name>/<key>`) when an epoch of planned size starts."""
        return {}

    def log_values(self, step: int) -> dict[str, float]:
        """Values to add to each training log entry; `step` is the optimizer step just logged.

        `TriLevelTrainer` adds them before the Trainer stores the entry, so they reach `log_history` (and
        `trainer_state.json`) as well as the reporters; what a callback adds in `on_log` arrives after the entry was
        stored and reaches the reporters only.
        """
        return {}

    def on_resume(self, epoch: int) -> None:
        """Called after `load_state` with the epoch the resumed run starts in (the state may be one epoch behind
        when the checkpoint was written at the last step of an epoch, before the epoch's end)."""


def state_paths(folder: str, name: str) -> tuple[str, str]:
    return os.path.join(folder, f"{name}.safetensors"), os.path.join(folder, f"{name}.json")


def save_technique_state(technique: TrainingTechnique, folder: str, is_main_process: bool) -> None:
    """Write a technique's state into a checkpoint folder (tensors gathered first, so every rank must call this)."""
    tensors = {key: value.detach().cpu().contiguous() for key, value in technique.state_tensors().items()}
    metadata = technique.state_metadata()
    if not is_main_process:
        return
    os.makedirs(folder, exist_ok=True)
    tensor_path, metadata_path = state_paths(folder, technique.name)
    save_file(tensors, tensor_path)
    with open(metadata_path, "w", encoding="utf-8") as file:
        json.dump(metadata, file, indent=2)


def load_technique_state(technique: TrainingTechnique, folder: str) -> None:
    """Give a technique the state it saved in a checkpoint folder.

    A missing, truncated or unparsable state file, and a `load_state` that refuses the state, raise
    `TrainingRefused` naming the file or the setting, before the first step.
    """
    tensor_path, metadata_path = state_paths(folder, technique.name)
    missing = [os.path.basename(path) for path in (tensor_path, metadata_path) if not os.path.isfile(path)]
    if missing:
        raise TrainingRefused(
            f"checkpoint {folder} has no {technique.name} state ({', '.join(missing)} missing): it was not saved by a "
            f"run with {type(technique).__name__}, or the save was interrupted; resume from another checkpoint or "
            "start without `resume_from_checkpoint`."
        )
    try:
        with open(metadata_path, encoding="utf-8") as file:
            metadata = json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _corrupt_state(technique, metadata_path, error) from None
    try:
        tensors = load_file(tensor_path)
    except (OSError, SafetensorError) as error:
        raise _corrupt_state(technique, tensor_path, error) from None
    try:
        technique.load_state(tensors, metadata)
    except ValueError as error:
        raise TrainingRefused(f"cannot resume {technique.name} from checkpoint {folder}: {error}") from error


def _corrupt_state(technique: TrainingTechnique, path: str, error: Exception) -> TrainingRefused:
    return TrainingRefused(
        f"cannot resume {technique.name} from {path!r}: the file is truncated or corrupt ({error}); resume from an "
        "earlier checkpoint."
    )


def find_planned_sampler(dataloader):
    """The sampler behind a train dataloader that plans its epochs (`planned_epochs`, `measured_epoch`), or None.

    accelerate keeps the sampler by reference inside its batch-sampler wrapper, so both layouts are searched.
    """
    batch_sampler = getattr(dataloader, "batch_sampler", None)
    for candidate in (
        getattr(batch_sampler, "sampler", None),
        getattr(getattr(batch_sampler, "batch_sampler", None), "sampler", None),
    ):
        if hasattr(candidate, "planned_epochs") and hasattr(candidate, "measured_epoch"):
            return candidate
    return None


def planned_samples(sampler) -> int:
    """Examples a planned sampler serves over all its epochs."""
    total = 0
    for epoch in range(sampler.planned_epochs):
        sampler.measured_epoch = epoch
        total += len(sampler)
    sampler.measured_epoch = None
    return total


__all__ = [
    "TrainingBatch",
    "TrainingTechnique",
    "find_planned_sampler",
    "is_distributed",
    "load_technique_state",
    "planned_samples",
    "save_technique_state",
    "sum_across_processes",
]
