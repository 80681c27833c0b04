"""The smallest `Trainer` extension that lets `ExamplePruningCallback` work.

The stock `Trainer` hands callbacks neither the batch nor the loss, builds its own sampler, and assumes every epoch
has the same number of steps. Example pruning needs per-example losses, a sampler that serves the kept set, and
epochs whose (planned) sizes differ. `ExamplePruningTrainerMixin` adds exactly that and nothing else; without an
`ExamplePruningCallback` among the callbacks it behaves like the class it is mixed into.
"""

import json
import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .callbacks import ExamplePruningCallback
from .configuration_trilevel_vit import TriLevelViTConfig
from .data_pruning import ExamplePruner, PrunedEpochSampler, find_pruning_sampler
from .model_card import trainer_model_card

EXAMPLE_INDEX = "example_index"
STATE_TENSORS = "example_pruning.safetensors"
STATE_METADATA = "example_pruning.json"
EPOCH_BUFFERS = "example_pruning_epoch_rank{rank}.safetensors"
MODEL_CARD_NAME = "README.md"
TRAINING_ARGS_PICKLE = "training_args.bin"  # what transformers writes
TRAINING_ARGS_JSON = "training_args.json"  # what we write instead


class IndexedDataset(Dataset):
    """A view of a dataset whose items also carry their position, the key of every per-example statistic.

    Works with `datasets.Dataset` (including `set_transform` / `with_transform` pipelines, fetched a batch at a
    time through `__getitems__`) and with any map-style torch dataset of dicts.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], EXAMPLE_INDEX: index}

    def __getitems__(self, indices: list[int]) -> list[dict]:
        fetch_many = getattr(self.dataset, "__getitems__", None)
        items = fetch_many(indices) if fetch_many is not None else [self.dataset[i] for i in indices]
        return [{**item, EXAMPLE_INDEX: index} for item, index in zip(items, indices, strict=True)]


class IndexCollator:
    """Runs the user's collator on the features without `example_index`, then adds the indices as a tensor."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features: list[dict]) -> dict:
        indices = torch.tensor([feature[EXAMPLE_INDEX] for feature in features], dtype=torch.long)
        batch = self.collator([{k: v for k, v in f.items() if k != EXAMPLE_INDEX} for f in features])
        batch[EXAMPLE_INDEX] = indices
        return batch


class ExamplePruningTrainerMixin:
    """Per-example losses, the pruning sampler, planned epoch lengths and resumable pruning state for a Trainer."""

    def _example_pruning_callback(self) -> ExamplePruningCallback | None:
        callbacks = [cb for cb in self.callback_handler.callbacks if isinstance(cb, ExamplePruningCallback)]
        if len(callbacks) > 1:
            raise ValueError("pass at most one ExamplePruningCallback to the trainer.")
        return callbacks[0] if callbacks else None

    @property
    def example_pruner(self) -> ExamplePruner | None:
        callback = self._example_pruning_callback()
        return callback.pruner if callback is not None else None

    # -- data: indexed examples, served by the pruning sampler ------------------------------------------------
    def get_train_dataloader(self):
        callback = self._example_pruning_callback()
        if callback is None:
            return super().get_train_dataloader()
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        if "label" not in _column_names(self.train_dataset) and "labels" not in _column_names(self.train_dataset):
            raise ValueError(
                "ExamplePruningCallback needs a labelled training set (a `label` or `labels` column): statistics "
                f"are per-example losses and correctness; found columns {_column_names(self.train_dataset)}."
            )
        callback.setup(self.args, len(self.train_dataset), self.args.device)
        user_collator = self.data_collator
        self.data_collator = IndexCollator(user_collator)
        try:
            return self._get_dataloader(
                dataset=IndexedDataset(self.train_dataset),
                description="Training",
                batch_size=self._train_batch_size,
                sampler_fn=self._get_train_sampler,
                is_training=True,
            )
        finally:
            self.data_collator = user_collator

    def _get_train_sampler(self, train_dataset=None):
        pruner = self.example_pruner
        if pruner is None:
            return super()._get_train_sampler(train_dataset)
        return PrunedEpochSampler(pruner)

    # -- exact step counts for epochs of planned, possibly different, sizes ------------------------------------
    def set_initial_training_values(self, args, dataloader):
        values = super().set_initial_training_values(args, dataloader)
        pruner = self.example_pruner
        if pruner is None:
            return values
        _, _, num_examples, _, total_batch_size, _, _ = values
        sampler = find_pruning_sampler(dataloader)
        batches = []
        for epoch in range(len(pruner.sizes)):
            sampler.measured_epoch = epoch
            batches.append(len(dataloader))
        sampler.measured_epoch = None
        accumulation = args.gradient_accumulation_steps
        self._planned_update_steps = [math.ceil(b / accumulation) for b in batches]
        max_steps = sum(self._planned_update_steps)
        return (
            len(pruner.sizes),
            self._planned_update_steps[0],
            num_examples,
            sum(pruner.sizes),
            total_batch_size,
            batches[0],
            max_steps,
        )

    def _run_epoch(self, *args, **kwargs):
        pruner = self.example_pruner
        if pruner is not None:
            epoch = kwargs["epoch"]
            if pruner.plan_epoch != epoch:
                raise RuntimeError(f"example pruning planned epoch {pruner.plan_epoch}, but epoch {epoch} is starting.")
            batches = len(kwargs["train_dataloader"])
            kwargs["steps_in_epoch"] = batches
            kwargs["num_update_steps_per_epoch"] = math.ceil(batches / self.args.gradient_accumulation_steps)
            summary = pruner.summary()
            self.log({f"example_pruning/{key}": value for key, value in summary.items()})
        return super()._run_epoch(*args, **kwargs)

    # -- per-example losses ------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pruner = self.example_pruner
        if pruner is None or EXAMPLE_INDEX not in inputs:
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        example_index = inputs.pop(EXAMPLE_INDEX)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        # The same loss the model computes for single-label classification (sum over the batch divided by
        # num_items_in_batch when the Trainer counts items, so gradient accumulation stays exact), kept per example.
        per_example = F.cross_entropy(
            logits.float(), labels, reduction="none", label_smoothing=self.args.label_smoothing_factor
        )
        if model.training:
            pruner.statistics.record(example_index, per_example.detach(), logits.detach().argmax(-1) == labels)
        weights = pruner.loss_weights(example_index.to(per_example.device))
        if weights is not None:
            per_example = per_example * weights
        loss = per_example.sum() / num_items_in_batch if num_items_in_batch is not None else per_example.mean()
        return (loss, outputs) if return_outputs else loss

    # -- resumable state ---------------------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        pruner = self.example_pruner
        if pruner is None:
            return
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        os.makedirs(folder, exist_ok=True)
        tensors = pruner.state_tensors()
        epoch_keys = [f"statistics.{name}" for name in pruner.statistics.EPOCH]
        save_file(
            {k: tensors[k] for k in epoch_keys},
            os.path.join(folder, EPOCH_BUFFERS.format(rank=self.args.process_index)),
        )
        if self.args.should_save:
            save_file({k: v for k, v in tensors.items() if k not in epoch_keys}, os.path.join(folder, STATE_TENSORS))
            with open(os.path.join(folder, STATE_METADATA), "w") as file:
                json.dump(pruner.state_metadata(), file, indent=2)

    def _init_training_state(
        self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
    ):
        epochs_trained, steps_into_epoch = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        pruner = self.example_pruner
        if pruner is None or resume_from_checkpoint is None or self.state.global_step == 0:
            return epochs_trained, steps_into_epoch
        self._load_pruning_state(pruner, resume_from_checkpoint)
        remaining = self.state.global_step
        epoch = 0
        while epoch < len(self._planned_update_steps) and remaining >= self._planned_update_steps[epoch]:
            remaining -= self._planned_update_steps[epoch]
            epoch += 1
        if self.args.ignore_data_skip:
            remaining = 0
        return epoch, remaining * self.args.gradient_accumulation_steps

    def _load_pruning_state(self, pruner: ExamplePruner, checkpoint: str) -> None:
        metadata_path = os.path.join(checkpoint, STATE_METADATA)
        if not os.path.isfile(metadata_path):
            raise ValueError(
                f"{checkpoint} has no example pruning state ({STATE_METADATA}); it was not saved by a run with "
                "ExamplePruningCallback, so the pruning decisions cannot be resumed."
            )
        with open(metadata_path) as file:
            metadata = json.load(file)
        tensors = load_file(os.path.join(checkpoint, STATE_TENSORS))
        # Epoch buffers are summed over ranks at the epoch's end, so the saved ranks' buffers, summed into rank 0,
        # resume correctly on any number of processes.
        buffers = [
            load_file(os.path.join(checkpoint, name))
            for name in sorted(os.listdir(checkpoint))
            if name.startswith("example_pruning_epoch_rank")
        ]
        for key in (f"statistics.{name}" for name in pruner.statistics.EPOCH):
            total = sum(buffer[key] for buffer in buffers)
            tensors[key] = total if self.args.process_index == 0 else torch.zeros_like(total)
        pruner.load_state(tensors, metadata)


def check_hub_strategy(args) -> None:
    """Refuse Hub pushes that would upload pickles.

    With `push_to_hub` and checkpoints, transformers pushes from every checkpoint (`hub_strategy="every_save"`,
    its default) and then `torch.save`s the training arguments into the pushed folder; the checkpoint strategies
    also push the optimizer, scheduler and RNG pickles. Pushing once at the end (`hub_strategy="end"`) or saving no
    checkpoints pushes only the self-contained folder.
    """
    if args.push_to_hub and args.save_strategy != "no" and args.hub_strategy != "end":
        raise ValueError(
            f"--hub_strategy {_value(args.hub_strategy)} with --save_strategy {_value(args.save_strategy)} would push "
            "transformers' "
            "pickled training_args.bin (and, for checkpoint strategies, optimizer/scheduler pickles) to the Hub; "
            "use --hub_strategy end, or --save_strategy no."
        )


def _value(option: object) -> str:
    """An enum option as the user typed it (`"epoch"`, not `SaveStrategy.EPOCH`)."""
    return str(getattr(option, "value", option))


def _column_names(dataset) -> list[str]:
    names = getattr(dataset, "column_names", None)
    if names is not None:
        return list(names)
    first = dataset[0]
    return list(first) if isinstance(first, dict) else []


class TriLevelTrainer(ExamplePruningTrainerMixin, Trainer):
    """`transformers.Trainer` plus what `ExamplePruningCallback` needs and TriLevel model cards; a drop-in."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_hub_strategy(self.args)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Save as `Trainer` does, but write the training arguments as `training_args.json`, not a pickle.

        `Trainer._save` adds `training_args.bin` (`torch.save`) to every saved folder and checkpoint, and
        `push_to_hub` uploads it. Nothing a user loads or pushes should need unpickling; resuming never reads it.
        """
        super()._save(output_dir, state_dict=state_dict)
        folder = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            pickled = os.path.join(folder, TRAINING_ARGS_PICKLE)
            if os.path.isfile(pickled):
                os.remove(pickled)
            with open(os.path.join(folder, TRAINING_ARGS_JSON), "w") as file:
                file.write(self.args.to_json_string())

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> None:
        """Write the TriLevel model card, `README.md`, into `args.output_dir` (main process only).

        Same signature as `transformers.Trainer.create_model_card`, which `push_to_hub` calls before uploading, so
        the pushed card is this one: Hub metadata with the measured accuracy in `model-index`, the checkpoint's
        sparsity settings, FLOPs against dense, training time, example-pruning settings, usage and citations (see
        `hf_trilevel.model_card`). `dataset_tags` / `dataset` name the evaluation data (Hub id / readable name);
        without them a `datasets` builder name is used if there is one. `tasks` is accepted for compatibility:
        the card is always for image classification. A model that is not a TriLevel one gets transformers' card.
        """
        if not self.is_world_process_zero():
            return
        card_arguments = {
            "language": language, "license": license, "tags": tags, "model_name": model_name,
            "finetuned_from": finetuned_from, "dataset_tags": dataset_tags, "dataset": dataset,
            "dataset_args": dataset_args,
        }  # fmt: skip
        if not isinstance(getattr(self.accelerator.unwrap_model(self.model), "config", None), TriLevelViTConfig):
            super().create_model_card(tasks=tasks, **card_arguments)
            return
        card = trainer_model_card(self, **card_arguments)
        os.makedirs(self.args.output_dir, exist_ok=True)
        card.save(os.path.join(self.args.output_dir, MODEL_CARD_NAME))
