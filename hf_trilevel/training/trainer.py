"""`TriLevelTrainer`: a drop-in `transformers.Trainer` that composes training techniques through one seam.

Techniques (`hf_trilevel.training.technique.TrainingTechnique`, passed as ordinary callbacks) shape the loss, serve
the training set and keep state in checkpoints; this class is the only place that talks to the Trainer for them.
With no technique that needs per-example losses it computes the loss exactly as `Trainer` does.

Private Trainer members this module relies on, each because no public hook exists (tests/test_trainer_contract.py
pins their signatures, so a transformers release that changes one fails with a message naming it):

* `_init_training_state` -- where a resumed run's epoch and step are computed (`global_step //
  steps_per_epoch`, which is wrong when epochs have planned, different sizes) and where the Trainer reads
  `trainer_state.json`; techniques' state is restored here too, before the first epoch's sampler is drawn.
* `_run_epoch` -- receives one `steps_in_epoch` for every epoch; planned epochs need their own. It is also where
  a training set with `set_epoch` (`hf_trilevel.image_data.AugmentedSplit`) is told the epoch: the Trainer's own
  `DataLoader.set_epoch` reaches the dataset only for some sampler layouts (accelerate), not in DDP.
* `_train_batch_size` (read only) -- the batch size `auto_find_batch_size` settled on.

One module for one class: every Trainer override is here so that the private members above are touched in one
place; what the overrides delegate to lives beside it (checkpoints, technique_manifest, sharding, loss_terms,
balanced_batches, indexed_dataset).
"""

import math
import os
from collections.abc import Callable
from functools import partial

import datasets
from huggingface_hub import ModelCard
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, seed_worker

from .balanced_batches import ProcessBalancedBatchSampler
from .checkpoints import check_resumable, latest_complete_checkpoint
from .errors import TrainingRefused
from .indexed_dataset import EXAMPLE_INDEX, IndexCollator, IndexedDataset
from .loss_terms import LossTermLog, composed_loss
from .sharding import check_sharded_training, warn_if_fsdp_dropped
from .technique import (
    TrainingTechnique,
    find_planned_sampler,
    load_technique_state,
    planned_samples,
    save_technique_state,
)
from .technique_manifest import check_resumed_techniques, config_record, write_technique_manifest

MODEL_CARD_NAME = "README.md"
TRAINING_ARGS_PICKLE = "training_args.bin"  # what transformers writes
TRAINING_ARGS_JSON = "training_args.json"  # what we write instead
INITIAL_TRAINING_VALUES = (
    "num_train_epochs",
    "num_update_steps_per_epoch",
    "num_examples",
    "num_train_samples",
    "total_train_batch_size",
    "steps_in_epoch",
    "max_steps",
)


CardWriter = Callable[..., ModelCard]  # `(trainer, **card_arguments) -> ModelCard`, see `TriLevelTrainer`


class TriLevelTrainer(Trainer):
    """`transformers.Trainer` plus the training-technique seam, pickle-free saves and a model card of your choice.

    Args:
        per_example_loss_func: optional `(outputs, labels) -> [batch]` losses, used instead of the model's loss
            function when a technique needs per-example losses (`compute_loss_func` returns a reduced loss, so it
            cannot serve them).
        card_writer: optional `(trainer, **card_arguments) -> huggingface_hub.ModelCard`, the card
            `create_model_card` saves and `push_to_hub` uploads (`card_arguments`: `create_model_card`'s keyword
            arguments less `tasks`); for TriLevel models `hf_trilevel.model_card.trainer_model_card` (method, results,
            every technique's section). Without one, transformers' own card. Passed in: training imports no card code.
        *args, **kwargs: as for `transformers.Trainer`.
    """

    def __init__(self, *args, per_example_loss_func=None, card_writer: CardWriter | None = None, **kwargs):
        if card_writer is not None and not callable(card_writer):
            raise ValueError(
                "`card_writer` must be a callable `(trainer, **card_arguments) -> ModelCard`, e.g. "
                f"hf_trilevel.model_card.trainer_model_card; got {type(card_writer).__name__}."
            )
        super().__init__(*args, **kwargs)
        check_hub_strategy(self.args)
        self.card_writer = card_writer
        self.per_example_loss_func = per_example_loss_func
        self.loss_terms = LossTermLog()
        self._planned_update_steps: list[int] | None = None
        self._config_record: dict | None = None  # set by `train`

    # -- resuming only from complete checkpoints ----------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """`Trainer.train`, resuming only from a complete checkpoint (`hf_trilevel.training.checkpoints`).

        `resume_from_checkpoint=True` means the newest *complete* `checkpoint-*` in `output_dir`, skipping folders
        whose save was interrupted (transformers would pick the highest-numbered folder whatever it holds); a named
        checkpoint that is incomplete is refused naming the missing file, and one trained with other techniques or
        settings (`hf_trilevel.training.technique_manifest`) naming the setting, before any training. Everything
        refused before the first step raises `TrainingRefused` (a `ValueError`).
        """
        if resume_from_checkpoint is True:
            latest = latest_complete_checkpoint(self.args.output_dir)
            if latest is None:
                raise TrainingRefused(
                    f"`resume_from_checkpoint` True: `output_dir` {self.args.output_dir!r} holds no complete "
                    "checkpoint-* folder to resume from; pass a checkpoint folder, or None to train from scratch."
                )
            resume_from_checkpoint = latest
        elif resume_from_checkpoint:
            try:
                check_resumable(resume_from_checkpoint)
            except ValueError as error:
                raise TrainingRefused(str(error)) from None
        # The model's config as this run built it, before any technique changes it (keep rates, temperatures): what
        # every checkpoint records, and what a resumed run must build again.
        self._config_record = config_record(getattr(self.model, "config", None))
        if resume_from_checkpoint:
            check_resumed_techniques(resume_from_checkpoint, self.techniques(), self.args.seed, self._config_record)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # -- the techniques ---------------------------------------------------------------------------------------
    def techniques(self) -> list[TrainingTechnique]:
        """The training techniques among the callbacks, in callback order; their names must be unique."""
        found = [cb for cb in self.callback_handler.callbacks if isinstance(cb, TrainingTechnique)]
        names = [technique.name for technique in found]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"pass at most one training technique named {duplicates[0]!r} to the trainer.")
        return found

    def technique_settings(self) -> dict[str, dict]:
        """Plain-data settings of every technique, keyed by its name (what the model card shows)."""
        return {t.name: settings for t in self.techniques() if (settings := t.card_settings()) is not None}

    def technique_metrics(self) -> dict[str, float | int]:
        """Every technique's `summary_metrics()` (what the run's results and card report), merged in callback order."""
        metrics: dict[str, float | int] = {}
        for technique in self.techniques():
            metrics.update(technique.summary_metrics())
        return metrics

    # -- data: technique samplers and example positions --------------------------------------------------------
    def get_train_dataloader(self) -> DataLoader:
        techniques = self.techniques()
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        num_examples = len(self.train_dataset) if hasattr(self.train_dataset, "__len__") else None
        setters = [type(technique).__name__ for technique in techniques if technique.sets_keep_rates]
        if len(setters) > 1:
            raise ValueError(
                f"{' and '.join(setters)} all set the model's keep rates every step; pass one of them (a keep-rate "
                "warm-up goes to DenseSparseTraining as `warmup_fraction` / `decay_fraction`)."
            )
        try:
            warn_if_fsdp_dropped(self.accelerator, self.args)  # FSDP asked for, DDP run (accelerate on CPU)
            check_sharded_training(techniques, self.accelerator, self.args)  # FSDP / DeepSpeed (training.sharding)
            for technique in techniques:
                technique.setup(self.args, num_examples, self.args.device)
        except ValueError as error:  # a technique's own check of the run: refused before the first step
            raise TrainingRefused(str(error)) from error
        self._check_per_example_losses(techniques)
        samplers = [(t.name, s) for t in techniques if (s := t.train_sampler(num_examples)) is not None]
        if len(samplers) > 1:
            raise ValueError(
                f"only one technique may serve the training set; got samplers from {[n for n, _ in samplers]}."
            )
        needs_index = any(technique.needs_example_index for technique in techniques)
        if not samplers and not needs_index:
            return super().get_train_dataloader()
        dataset = IndexedDataset(self.train_dataset) if needs_index else self.train_dataset
        if samplers and not self.accelerator.split_batches:  # the same global batches at any process count, no
            # example repeated (balanced_batches.py); split_batches shards each batch itself and needs a fixed size
            batching = {
                "batch_sampler": ProcessBalancedBatchSampler(
                    samplers[0][1], self._train_batch_size, self.args.world_size, self.args.dataloader_drop_last
                )
            }
        else:
            batching = {"batch_size": self._train_batch_size, "drop_last": self.args.dataloader_drop_last}
        loader = DataLoader(
            dataset,
            **batching,
            collate_fn=IndexCollator(self.data_collator) if needs_index else self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers and self.args.dataloader_num_workers > 0,
            prefetch_factor=self.args.dataloader_prefetch_factor,
            multiprocessing_context=getattr(self.args, "dataloader_multiprocessing_context", None),
            worker_init_fn=partial(
                seed_worker, num_workers=self.args.dataloader_num_workers, rank=self.args.process_index
            ),
        )
        return self.accelerator.prepare(loader)

    def _check_per_example_losses(self, techniques: list[TrainingTechnique]) -> None:
        needing = [t.name for t in techniques if t.needs_per_example_loss()]
        if not needing:
            return
        columns = _column_names(self.train_dataset)
        if "label" not in columns and "labels" not in columns:
            raise ValueError(
                f"{needing[0]} needs a labelled training set (a `label` or `labels` column): its statistics are "
                f"per-example losses; found columns {columns}."
            )
        if self.compute_loss_func is not None and self.per_example_loss_func is None:
            raise ValueError(
                f"{needing[0]} needs per-example losses, but `compute_loss_func` returns a reduced loss; pass "
                "`per_example_loss_func=(outputs, labels) -> [batch] losses` to TriLevelTrainer instead."
            )

    # -- exact step counts for epochs of planned, possibly different, sizes ------------------------------------
    def set_initial_training_values(self, args, dataloader):
        values = super().set_initial_training_values(args, dataloader)
        self._planned_update_steps = None
        sampler = find_planned_sampler(dataloader)
        if sampler is None:
            return values
        if len(values) != len(INITIAL_TRAINING_VALUES):
            raise RuntimeError(
                f"transformers' Trainer.set_initial_training_values returned {len(values)} values, expected "
                f"{INITIAL_TRAINING_VALUES}; this transformers release is not supported by TriLevelTrainer's planned "
                "epochs (tests/test_trainer_contract.py)."
            )
        named = dict(zip(INITIAL_TRAINING_VALUES, values, strict=True))
        batches = []
        for epoch in range(sampler.planned_epochs):
            sampler.measured_epoch = epoch
            batches.append(len(dataloader))
        sampler.measured_epoch = None
        self._planned_update_steps = [math.ceil(b / args.gradient_accumulation_steps) for b in batches]
        named.update(
            num_train_epochs=len(batches),
            num_update_steps_per_epoch=self._planned_update_steps[0],
            num_train_samples=planned_samples(sampler),
            steps_in_epoch=batches[0],
            max_steps=sum(self._planned_update_steps),
        )
        return tuple(named[name] for name in INITIAL_TRAINING_VALUES)

    def _init_training_state(
        self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
    ):
        epochs_trained, steps_into_epoch = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        self.loss_terms = LossTermLog(start_step=self.state.global_step)
        if resume_from_checkpoint is None or self.state.global_step == 0:
            return epochs_trained, steps_into_epoch
        for technique in self.techniques():
            if technique.has_state():
                load_technique_state(technique, resume_from_checkpoint)
        if self._planned_update_steps is None:
            return epochs_trained, steps_into_epoch
        remaining, epoch = self.state.global_step, 0
        while epoch < len(self._planned_update_steps) and remaining >= self._planned_update_steps[epoch]:
            remaining -= self._planned_update_steps[epoch]
            epoch += 1
        for technique in self.techniques():
            technique.on_resume(epoch)
        if self.args.ignore_data_skip:
            remaining = 0
        return epoch, remaining * self.args.gradient_accumulation_steps

    def _run_epoch(self, *args, **kwargs):
        set_epoch = getattr(self.train_dataset, "set_epoch", None)
        if callable(set_epoch):  # e.g. an `AugmentedSplit`, whose augmentations are keyed by the epoch
            set_epoch(kwargs["epoch"])
        if self._planned_update_steps is not None:
            epoch, dataloader = kwargs["epoch"], kwargs["train_dataloader"]
            sampler = find_planned_sampler(dataloader)
            if sampler.current_epoch != epoch:
                raise RuntimeError(
                    f"the training set was planned for epoch {sampler.current_epoch}, but epoch {epoch} is starting."
                )
            kwargs["steps_in_epoch"] = len(dataloader)
            kwargs["num_update_steps_per_epoch"] = self._planned_update_steps[epoch]
            # Summaries are logged once per epoch, when it starts: a run resumed inside the epoch restored a log
            # history that already holds them.
            if self.state.global_step <= sum(self._planned_update_steps[:epoch]):
                for technique in self.techniques():
                    summary = technique.epoch_summary()
                    if summary:
                        self.log({f"{technique.name}/{key}": value for key, value in summary.items()})
        return super()._run_epoch(*args, **kwargs)

    # -- the loss seam -----------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's loss, then every technique's per-example weights, then their extra terms (each logged).

        Without a technique that needs per-example losses (and always in evaluation) this is `Trainer.compute_loss`.
        Otherwise see `hf_trilevel.training.loss_terms.composed_loss`: the sum over the step's examples is divided by
        the Trainer's `num_items_in_batch` and multiplied by the number of processes, as the Trainer does for a model
        that takes loss kwargs, so gradient accumulation and DDP stay exact.
        """
        techniques = [t for t in self.techniques() if t.needs_per_example_loss()] if model.training else []
        example_index = inputs.pop(EXAMPLE_INDEX, None)
        if not techniques:
            loss, outputs = super().compute_loss(
                model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
            if model.training:
                self.loss_terms.record_outputs(outputs)
            return (loss, outputs) if return_outputs else loss
        num_processes = self.accelerator.num_processes if self.args.average_tokens_across_devices else 1
        loss, outputs, terms = composed_loss(
            model,
            inputs,
            techniques,
            config=self.accelerator.unwrap_model(model).config,
            example_index=example_index,
            num_items_in_batch=num_items_in_batch,
            num_processes=num_processes,
            label_smoothing=self.args.label_smoothing_factor,
            per_example_loss_func=self.per_example_loss_func,
            data_collator=self.data_collator,
        )
        self.loss_terms.record(terms)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Log as `Trainer` does, adding each loss term's mean per optimizer step since the last training log, and
        every technique's `log_values`."""
        if "loss" in logs:
            logs = {**logs, **self.loss_terms.drain(self.state.global_step)}
            for technique in self.techniques():
                logs.update(technique.log_values(self.state.global_step))
        super().log(logs, start_time)

    # -- saving: technique state in checkpoints, no pickles ----------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save as `Trainer` does; in a checkpoint, also every technique's state; never a pickle.

        Technique state, and the record of which techniques ran with which settings (`trilevel_techniques.json`),
        are written here, before the Trainer writes `trainer_state.json` and rotates old checkpoints, so a checkpoint
        that has its Trainer state also has every technique's. `training_args.bin` (a `torch.save`
        pickle that `Trainer._save` adds everywhere and `push_to_hub` uploads) is replaced by `training_args.json`.
        """
        super().save_model(output_dir, _internal_call=_internal_call)
        folder = output_dir if output_dir is not None else self.args.output_dir
        if _internal_call and self.args.should_save:
            os.makedirs(folder, exist_ok=True)  # a checkpoint under FSDP's SHARDED_STATE_DICT: nothing saved here yet
        if self.args.should_save:
            pickled = os.path.join(folder, TRAINING_ARGS_PICKLE)
            if os.path.isfile(pickled):
                os.remove(pickled)
            if os.path.isdir(folder):
                with open(os.path.join(folder, TRAINING_ARGS_JSON), "w", encoding="utf-8") as file:
                    file.write(self.args.to_json_string())
        if (
            _internal_call
            and os.path.basename(os.path.normpath(folder)) == f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        ):
            for technique in self.techniques():
                if technique.has_state():
                    save_technique_state(technique, folder, self.args.should_save)
            if self.args.should_save:
                write_technique_manifest(folder, self.techniques(), self.args.seed, self._config_record)

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
        """Write the model card, `README.md`, into `args.output_dir` (main process only): `card_writer`'s, or
        transformers' own without one.

        Same signature as `transformers.Trainer.create_model_card`, which `push_to_hub` calls before uploading, so
        the pushed card is this one. `tasks` goes to transformers' card only: a card writer knows its model's task.
        """
        if not self.is_world_process_zero():
            return
        card_arguments = {
            "language": language, "license": license, "tags": tags, "model_name": model_name,
            "finetuned_from": finetuned_from, "dataset_tags": dataset_tags, "dataset": dataset,
            "dataset_args": dataset_args,
        }  # fmt: skip
        if self.card_writer is None:
            super().create_model_card(tasks=tasks, **card_arguments)
            return
        card = self.card_writer(self, **card_arguments)
        os.makedirs(self.args.output_dir, exist_ok=True)
        card.save(os.path.join(self.args.output_dir, MODEL_CARD_NAME))


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
    if isinstance(dataset, datasets.IterableDataset):
        return []
    first = dataset[0]
    return list(first) if isinstance(first, dict) else []


__all__ = ["TRAINING_ARGS_JSON", "CardWriter", "TriLevelTrainer", "check_hub_strategy"]
