"""Run by tests/test_fsdp.py under `torchrun --nproc_per_node 2` (gloo on CPU): train the same tiny TriLevel ViT with
each training technique twice, once with DDP and once with FSDP2 (accelerate's `fully_shard`, through
`TrainingArguments(fsdp=True, fsdp_config={"version": 2})`), at the same global batch, and write per run the logged
losses, the final weights and, for FSDP2, what the prepared model's parameters looked like.

accelerate (1.16) enables FSDP only for accelerator devices: on a CPU-only run (`use_cpu`, gloo) it sets up plain
multi-CPU DDP and drops the FSDP plugin without a word. `sharded_on_cpu` below makes accelerate honour the plugin on
CPU (torch's `fully_shard` itself runs on CPU over gloo); everything else is the real Trainer -> accelerate -> FSDP2
path a GPU run takes. A run that must be refused writes the error instead.

The FSDP2 runs in `RESUMED` also write checkpoints; each is then resumed from one of them in a fresh folder and
trained to the end, to be compared with the uninterrupted run. Last, one FSDP run is set up without the patch, to
record what accelerate does on CPUs and the warning the trainer logs about it.
"""

import json
import logging
import shutil
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType
from distributed_pruning import collate, to_pixels  # the sibling job script's helpers
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor, Shard
from transformers import TrainerCallback, TrainingArguments

from hf_trilevel import (
    DenseSparseTraining,
    ExamplePruning,
    KeepRateSchedule,
    SelectorTemperatureSchedule,
    TriLevelTrainer,
    TriLevelViTConfig,
    TriLevelViTForImageClassification,
    WeightSparsity,
)
from hf_trilevel.image_data import load_digits_dataset
from hf_trilevel.training.checkpoints import checkpoint_problem

SHAPE = {
    "image_size": 16, "patch_size": 4, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 64, "num_labels": 10,
}  # fmt: skip
# accelerate 1.16's default wrap policy shards `ViTEmbeddings` (a `_no_split_modules` entry) and then tries to shard the
# patch embedding inside it again, which fails for any ViT; wrapping the layers only avoids it (docs/distributed.md).
FSDP2_CONFIG = {"version": 2, "transformer_layer_cls_to_wrap": ["TriLevelViTLayer"]}
PRUNED = {"token_keep_rate": 0.5, "token_prune_layers": [0, 1]}


def teacher() -> TriLevelViTForImageClassification:
    torch.manual_seed(1)
    return TriLevelViTForImageClassification(TriLevelViTConfig(**SHAPE))


# name -> (config overrides, techniques factory)
RUNS = {
    "plain": ({}, list),
    "example_pruning_forgetting": ({}, lambda: [ExamplePruning("forgetting", keep_fraction=0.75, swap_epochs=[1])]),
    "example_pruning_loss": ({}, lambda: [ExamplePruning("loss", full_data_fraction=0.5)]),
    "example_pruning_random": ({}, lambda: [ExamplePruning("random", keep_fraction=0.75)]),
    "keep_rate_schedule": (PRUNED, lambda: [KeepRateSchedule(warmup_fraction=0.25, decay_fraction=0.5)]),
    "learned_selector": (  # with a keep-rate warm-up: the scorers get no gradient in the dense steps
        {**PRUNED, "token_selector": "learned"},
        lambda: [KeepRateSchedule(warmup_fraction=0.5, decay_fraction=0.25), SelectorTemperatureSchedule()],
    ),
    "adaptive_selector": (
        {**PRUNED, "token_selector": "adaptive", "token_keep_rate": 0.9, "token_keep_mass": 0.9},
        list,
    ),
    "dense_sparse_self": ({**PRUNED, "token_keep_rate": 1.0}, lambda: [DenseSparseTraining([1.0, 0.5])]),
    "dense_sparse_teacher": (
        {**PRUNED, "token_keep_rate": 1.0},
        lambda: [DenseSparseTraining([1.0, 0.5], distillation="teacher", teacher=teacher())],
    ),
    "weight_sparsity": ({}, lambda: [WeightSparsity(update_interval=2)]),
    "example_pruning_loss_3_epochs": ({}, lambda: [ExamplePruning("loss", full_data_fraction=0.25)]),
}
REFUSED = {"weight_sparsity"}  # run with FSDP2 only, to see the refusal
RESUMED_ONLY = {"example_pruning_loss_3_epochs"}  # run with FSDP2 only, to be resumed
EPOCHS = {"example_pruning_loss_3_epochs": 3}  # the others train 2


@dataclass(frozen=True)
class Resumed:
    """An FSDP2 run that also writes checkpoints every `step` steps (in the FSDP `state_dict_type` given), and is
    resumed from `checkpoint-<step>`."""

    step: int
    state_dict_type: str = "FULL_STATE_DICT"  # transformers' default


# 4 steps an epoch (3 for forgetting's 48 kept examples). The loss policy prunes only with a pruned epoch between its
# first and its last, full, one: 3 epochs (4 + 3 + 4 steps), epoch 1's kept set chosen by every example's loss in
# epoch 0, half of which were computed before checkpoint-2 was written.
RESUMED = {
    "plain": Resumed(6),  # one step into epoch 1
    # No technique with checkpoint state: TriLevelTrainer.save_model creates the folder transformers left unwritten.
    "keep_rate_schedule": Resumed(6, "SHARDED_STATE_DICT"),
    "example_pruning_forgetting": Resumed(4),  # one step into epoch 1, after the swap
    "example_pruning_loss_3_epochs": Resumed(2, "SHARDED_STATE_DICT"),  # torch.distributed.checkpoint folders
}


@contextmanager
def sharded_on_cpu():
    """Let accelerate's state take the FSDP plugin on a CPU-only multi-process run (see the module docstring)."""
    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init
    try:
        yield
    finally:
        AcceleratorState.__init__ = original


class ShardingProbe(TrainerCallback):
    """Records, at the first step, how the prepared model holds its parameters (the Trainer's wrapped model)."""

    def __init__(self):
        self.trainer = None
        self.seen = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.seen is None:
            self.seen = parameter_layout(self.trainer.model_wrapped)


def parameter_layout(model) -> dict:
    layout = {}
    for name, parameter in model.named_parameters():
        sharded = isinstance(parameter, DTensor)
        layout[name] = {
            "dtensor": sharded,
            "placements": [str(p) for p in parameter.placements] if sharded else [],
            "shard_dim0": sharded and any(isinstance(p, Shard) and p.dim == 0 for p in parameter.placements),
            "local_numel": parameter.to_local().numel() if sharded else parameter.numel(),
            "numel": parameter.numel(),
            "rows": parameter.shape[0] if parameter.dim() else 1,
        }
    return layout


def full_weights(model) -> dict[str, torch.Tensor]:
    """Every parameter gathered whole (every rank must call it: gathering a DTensor is a collective)."""
    weights = {}
    for name, parameter in model.named_parameters():
        value = parameter.full_tensor() if isinstance(parameter, DTensor) else parameter
        weights[name] = value.detach().clone().contiguous()
    return weights


def build(name: str, mode: str, run_dir: str, dataset, callbacks=(), on_cpu=sharded_on_cpu) -> TriLevelTrainer:
    """The trainer of one run, its model drawn from seed 0; an FSDP2 run in `RESUMED` also writes checkpoints."""
    overrides, techniques = RUNS[name]
    torch.manual_seed(0)
    model = TriLevelViTForImageClassification(TriLevelViTConfig(**SHAPE, **overrides))
    sharding, saving = {}, {"save_strategy": "no"}
    if mode == "fsdp2":
        sharding = {"fsdp": True, "fsdp_config": FSDP2_CONFIG}
        if name in RESUMED:
            resumed = RESUMED[name]
            sharding["fsdp_config"] = {**FSDP2_CONFIG, "state_dict_type": resumed.state_dict_type}
            saving = {"save_strategy": "steps", "save_steps": resumed.step}
    with on_cpu():
        args = TrainingArguments(
            output_dir=run_dir, num_train_epochs=EPOCHS.get(name, 2), per_device_train_batch_size=4,
            gradient_accumulation_steps=2, learning_rate=3e-3, report_to="none", remove_unused_columns=False,
            disable_tqdm=True, logging_steps=1, dataloader_pin_memory=False, seed=0, use_cpu=True, **saving,
            **sharding,
        )  # fmt: skip
        return TriLevelTrainer(
            model=model, args=args, train_dataset=dataset, data_collator=collate, callbacks=[*techniques(), *callbacks]
        )


def run(name: str, mode: str, output_dir: str, dataset) -> dict:
    probe = ShardingProbe()
    trainer = build(name, mode, f"{output_dir}/{mode}/{name}", dataset, [probe])
    initial = {key: value.detach().clone() for key, value in trainer.model.named_parameters()}
    probe.trainer = trainer
    report = {"distributed_type": str(trainer.accelerator.distributed_type), "world_size": dist.get_world_size()}
    try:
        trainer.train()
    except ValueError as error:
        return {
            **report,
            "refused": str(error),
            "error_type": type(error).__name__,
            "steps": trainer.state.global_step,
            "model_class": type(trainer.model).__name__,  # still the plain class: nothing was sharded
        }
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    weights = full_weights(trainer.model)
    if dist.get_rank() == 0:
        save_file(weights, f"{output_dir}/{mode}-{name}.safetensors")
    if name == "plain":  # the Trainer's own save, which gathers the shards into one checkpoint
        trainer.save_model(f"{output_dir}/{mode}-saved")
    return {
        **report,
        "losses": [entry["loss"] for entry in logged],
        "log": training_log(trainer),
        "terms": sorted({key for entry in logged for key in entry if key.startswith("loss/")}),
        "steps": trainer.state.global_step,
        "moved": max(float((weights[key] - initial[key]).abs().max()) for key in weights),
        "layout": probe.seen,
        "model_class": type(trainer.model).__name__,
    }


class StepCounter(TrainerCallback):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def resume(name: str, output_dir: str, dataset) -> dict:
    """The FSDP2 run `name` stopped right after writing `checkpoint-<step>`, then resumed to the end.

    The stopped run's folder is the uninterrupted run's `checkpoint-<step>` alone (nothing after that step is in it,
    and the run up to it is the same), and the resumed run is the same command with `resume_from_checkpoint=True`.
    """
    source = Path(output_dir, "fsdp2", name, f"checkpoint-{RESUMED[name].step}")
    run_dir = Path(output_dir, "fsdp2-resumed", name)
    if dist.get_rank() == 0:
        shutil.copytree(source, run_dir / source.name)
    dist.barrier()
    counter = StepCounter()
    trainer = build(name, "fsdp2", str(run_dir), dataset, [counter])
    report = {"files": checkpoint_files(source), "problem": checkpoint_problem(source)}
    try:
        trainer.train(resume_from_checkpoint=True)
    except Exception as error:  # a refusal or a failed load, on every rank: the test shows it
        return {**report, "error": f"{type(error).__name__}: {error}", "steps": trainer.state.global_step}
    weights = full_weights(trainer.model)
    if dist.get_rank() == 0:
        save_file(weights, f"{output_dir}/fsdp2-resumed-{name}.safetensors")
    return {**report, "log": training_log(trainer), "steps": trainer.state.global_step, "trained": counter.steps}


def fsdp_dropped(output_dir: str, dataset) -> dict:
    """What accelerate itself does with `--fsdp` on CPUs (no `sharded_on_cpu`), and the warnings the trainer logs
    when it builds the training data (`hf_trilevel.training.sharding.warn_if_fsdp_dropped`)."""
    trainer = build("plain", "fsdp2", f"{output_dir}/fsdp2-dropped", dataset, on_cpu=nullcontext)
    caught = Caught()
    sharding_logger = logging.getLogger("hf_trilevel.training.sharding")
    sharding_logger.addHandler(caught)
    try:
        trainer.get_train_dataloader()
        trainer.get_train_dataloader()  # a second time: the warning is logged once
    finally:
        sharding_logger.removeHandler(caught)
    return {
        "distributed_type": str(trainer.accelerator.distributed_type),
        "fsdp_plugin": getattr(trainer.accelerator.state, "fsdp_plugin", None) is not None,
        "warnings": [record.getMessage() for record in caught.records if record.levelno == logging.WARNING],
    }


class Caught(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def training_log(trainer) -> list[dict]:
    """The log entries of every step (loss, loss terms, gradient norm, learning rate, epoch) and every technique's
    epoch summary; the end-of-training summary, with its timings, left out."""
    return [entry for entry in trainer.state.log_history if "train_runtime" not in entry]


def checkpoint_files(folder: Path) -> list[str]:
    """Every file and folder in a checkpoint, by its path inside it (a folder's ends with `/`)."""
    return sorted(str(path.relative_to(folder)) + ("/" if path.is_dir() else "") for path in folder.rglob("*"))


def main(output_dir: str, modes: list[str], names: list[str]) -> None:
    dataset = load_digits_dataset(image_size=16)["train"].select(range(64)).with_transform(to_pixels)
    report = {
        mode: {
            name: run(name, mode, output_dir, dataset)
            for name in names
            if mode == "fsdp2" or name not in REFUSED | RESUMED_ONLY
        }
        for mode in modes
    }
    if "fsdp2" in modes:
        report["fsdp2-resumed"] = {name: resume(name, output_dir, dataset) for name in names if name in RESUMED}
        report["fsdp2-dropped"] = fsdp_dropped(output_dir, dataset)
    with open(f"{output_dir}/rank{dist.get_rank()}.json", "w") as file:
        json.dump(report, file)
    dist.barrier()
    dist.destroy_process_group()  # without it gloo processes sometimes abort at exit


if __name__ == "__main__":  # OUTPUT_DIR [MODES [RUNS]], comma-separated; default: every run, DDP then FSDP2
    main(
        sys.argv[1],
        sys.argv[2].split(",") if len(sys.argv) > 2 else ["ddp", "fsdp2"],
        sys.argv[3].split(",") if len(sys.argv) > 3 else list(RUNS),
    )
