"""`hf-trilevel bench train --time-to-accuracy`: train dense ViT and TriLevel settings on the bundled digits.

Every run uses one recipe (model shape, optimizer, schedule, epochs, seed, batch order) and differs only in the
sparsity asked for: dense runs are transformers' `ViTForImageClassification` under the stock `Trainer`; TriLevel runs
are `TriLevelViTForImageClassification` with the same initial weights, under `TriLevelTrainer` when example pruning
is on. Learned scores (`--token-selector learned`) train with `SelectorTemperatureSchedule` (10 -> 0.1), from a
scorer whose output starts at zero. Runs go one after another, never side by side. The clock counts training only:
each epoch's time is taken between the epoch's begin and end callbacks, before the per-epoch evaluation. Reported
per run: accuracy after the last epoch, the best accuracy, training time, and the training time until validation
accuracy first reached the target: by default dense ViT's own final accuracy of the same seed minus
`--target-below-dense` points (0.3), the question a user asks ("how much sooner do I get dense's accuracy?"), or a
fixed `--target-accuracy`. With several `--seeds` every setting runs once per seed, and a summary gives the mean and
spread over seeds and how many seeds reached the target.
"""

import argparse
import sys
import tempfile
import time
from dataclasses import asdict

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from transformers import (
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
)

from ...evaluation.metrics import compute_metrics
from ...example_pruning.technique import ExamplePruning
from ...image_data import REDUNDANT_DIGITS, load_digits_dataset, load_redundant_digits_dataset
from ...modeling.configuration_trilevel_vit import TriLevelViTConfig
from ...modeling.modeling_trilevel_vit import TriLevelViTForImageClassification
from ...modeling.value_checks import check_fraction, check_int, check_number
from ...token_training.selector_temperature import SelectorTemperatureSchedule
from ...training.trainer import TriLevelTrainer
from ..errors import CommandError, checked_option
from .accuracy_runs import AccuracyRun, EpochRecord, format_runs, format_summary, set_targets, target_text
from .models import load_shared_weights
from .options import check_divides, checked_device
from .report import check_writable, report_payload, write_report
from .settings import DENSE_NAME, Setting, check_example_keep_fractions, selector_config, settings

# The digits recipe of examples/run_image_classification.py: a small ViT on 32x32 images with 4x4 patches.
DIGITS_SHAPE = {"image_size": 32, "patch_size": 4, "hidden_size": 128, "num_hidden_layers": 6,
                "num_attention_heads": 4, "intermediate_size": 256, "num_labels": 10}  # fmt: skip
# Flags of `bench train` that the digits recipe fixes (ten classes, its own layers to prune at, freshly initialised
# weights); given with --time-to-accuracy they are refused.
IGNORED_FLAGS = {"--num-labels": "num_labels", "--token-prune-layers": "token_prune_layers", "--model": "model"}
# Shape flags that replace the recipe's fields (a smaller model makes many seeds affordable on a CPU).
SHAPE_FLAGS = ("image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "intermediate_size")  # fmt: skip
RECIPE = {"learning_rate": 1e-3, "weight_decay": 0.05, "warmup_steps": 0.1, "lr_scheduler_type": "cosine",
          "per_device_train_batch_size": 64, "per_device_eval_batch_size": 256}  # fmt: skip


class TrainingClock(TrainerCallback):
    """Training seconds per epoch (evaluation excluded) and the accuracy evaluated after each epoch.

    With `label`, each evaluation also prints one progress line on stderr (the Trainer's own printer is removed).
    """

    def __init__(self, label: str | None = None) -> None:
        self.label = label
        self.train_seconds = 0.0
        self.curve: list[EpochRecord] = []
        self._epoch_start: float | None = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._epoch_start = self._now()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.train_seconds += self._now() - self._epoch_start

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()  # queued kernels belong to the epoch that launched them
        return time.perf_counter()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and "eval_accuracy" in metrics:
            record = EpochRecord(round(state.epoch or 0), self.train_seconds, metrics["eval_accuracy"])
            self.curve.append(record)
            if self.label is not None:
                print(
                    f"{self.label}: epoch {record.epoch}/{round(args.num_train_epochs)}, accuracy "
                    f"{record.accuracy:.2%}, {record.train_seconds:.1f} s training",
                    file=sys.stderr,
                    flush=True,
                )


class TensorExamples(TorchDataset):
    """Preprocessed examples held as tensors: serving a batch costs an index, not an Arrow-to-tensor conversion,
    so the clock measures the model rather than the input pipeline."""

    def __init__(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> None:
        self.pixel_values, self.labels = pixel_values, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}


DATASETS = {"digits": load_digits_dataset, REDUNDANT_DIGITS: load_redundant_digits_dataset}
# The policies a data budget alone configures: random's and forgetting's keep fraction, loss's budget.
EXAMPLE_POLICIES = ("forgetting", "random", "loss")


def example_pruning_callback(policy: str, budget: float) -> ExamplePruning:
    """`policy` serving `budget` of the run's examples: every policy at a budget costs the same data. A user's own
    policy (`package.module:ClassName`) is built with `keep_fraction=budget`."""
    if policy == "loss":
        return ExamplePruning("loss", budget=budget)
    return ExamplePruning(policy, keep_fraction=budget)


def example_policy(value: str) -> str:
    """`--example-policy`: a built-in name, or a user's PruningPolicy as package.module:ClassName."""
    if value in EXAMPLE_POLICIES or ":" in value:
        return value
    raise argparse.ArgumentTypeError(
        f"must be one of {', '.join(EXAMPLE_POLICIES)} or package.module:ClassName, got {value!r}"
    )


def digits_tensors(
    image_size: int, max_train_samples: int | None, dataset: str = "digits"
) -> tuple[TensorExamples, TensorExamples]:
    """The digits (or their redundant variant) as normalised float tensors, computed once so every run sees
    identical inputs; `max_train_samples` takes a seeded random subset (fixed seed 0, in data order), so a quick run
    of the redundant set holds copies too (its originals come first)."""
    digits = DATASETS[dataset](image_size)

    def to_tensors(split) -> TensorExamples:
        pixels = np.stack([np.asarray(image, dtype=np.float32) for image in split["image"]])
        pixels = (pixels / 255.0 - 0.5) / 0.5  # ViT's default normalisation, mean = std = 0.5
        return TensorExamples(torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()), torch.tensor(split["label"]))

    train = digits["train"]
    if max_train_samples is not None:
        subset = np.random.default_rng(0).permutation(len(train))[: min(max_train_samples, len(train))]
        train = train.select(np.sort(subset))
    return to_tensors(train), to_tensors(digits["validation"])


def train_once(
    setting: Setting,
    example_keep_fraction: float,
    args: argparse.Namespace,
    shape: dict,
    data: tuple,
    label: str | None = None,
    seed: int = 0,
    policy: str = "forgetting",
) -> AccuracyRun:
    """One run of `setting` at `seed`; its time to target is filled in by `set_targets` once dense's is known."""
    train, validation = data
    dense = setting == Setting() and example_keep_fraction == 1.0
    torch.manual_seed(seed)
    reference = ViTForImageClassification(ViTConfig(**shape))
    if dense:
        model = reference
        name = DENSE_NAME
    else:
        model = TriLevelViTForImageClassification(
            TriLevelViTConfig(**shape, **setting.config_kwargs(), **selector_config(args))
        )
        load_shared_weights(model, reference.state_dict())  # a learned selector's scorer keeps its own init
        pruned = f", {policy} examples {example_keep_fraction:g}" if example_keep_fraction < 1.0 else ""
        name = setting.name + pruned
    clock = TrainingClock(label)
    callbacks: list[TrainerCallback] = []
    pruning = example_pruning_callback(policy, example_keep_fraction) if example_keep_fraction < 1.0 else None
    if pruning is not None:
        callbacks.append(pruning)
    if not dense and model.config.uses_learned_scores():  # SViTE+'s Gumbel temperature, 10 -> 0.1 over the run
        callbacks.append(SelectorTemperatureSchedule())
    callbacks.append(clock)  # last: its epoch end comes after the pruner's end-of-epoch work, which it must count
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = TrainingArguments(
            output_dir=output_dir, num_train_epochs=args.epochs, seed=seed, eval_strategy="epoch",
            save_strategy="no", logging_strategy="no", report_to="none", remove_unused_columns=False,
            use_cpu=args.device == "cpu", bf16=args.dtype == "bfloat16", fp16=args.dtype == "float16",
            disable_tqdm=True, dataloader_pin_memory=False, **RECIPE,
        )  # fmt: skip
        trainer_class = TriLevelTrainer if example_keep_fraction < 1.0 else Trainer
        trainer = trainer_class(
            model=model, args=training_args, train_dataset=train, eval_dataset=validation,
            compute_metrics=compute_metrics, callbacks=callbacks,
        )  # fmt: skip
        trainer.remove_callback(PrinterCallback)  # progress comes from `clock`, one line per epoch
        trainer.train()
    accuracies = [record.accuracy for record in clock.curve]
    return AccuracyRun(
        name, setting.token_keep_rate, setting.attention_keep_rate, example_keep_fraction, accuracies[-1],
        max(accuracies), clock.train_seconds, None, clock.curve, seed, policy=None if pruning is None else policy,
        examples_seen=len(train) * args.epochs if pruning is None else pruning.pruner.examples_presented(),
    )  # fmt: skip


def add_time_to_accuracy_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "time to accuracy (--time-to-accuracy: bundled digits, 6-layer ViT on 32x32 images with 4x4 patches; the "
        "shape options above replace this shape's fields; --example-keep-fractions below 1 use --example-policy)"
    )
    group.add_argument("--time-to-accuracy", action="store_true", help="train on the digits instead of timing steps")
    group.add_argument("--epochs", type=int, default=30)
    group.add_argument(
        "--target-accuracy", type=float, default=None, help="a fixed target in (0, 1] instead of dense's accuracy"
    )
    group.add_argument(
        "--target-below-dense",
        type=float,
        default=0.3,
        help="target: dense ViT's final accuracy of the same seed minus this many points, in [0, 100] (0.3)",
    )
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--seeds", type=int, nargs="+", default=None, help="one run per setting and seed (--seed)")
    group.add_argument("--max-train-samples", type=int, default=None, help="train on fewer digits (quick runs)")
    group.add_argument(
        "--dataset",
        choices=list(DATASETS),
        default="digits",
        help=f"{REDUNDANT_DIGITS}: the digits with typical training images repeated as near-copies (10x)",
    )
    group.add_argument(
        "--example-policy",
        type=example_policy,
        nargs="+",
        default=["forgetting"],
        metavar="POLICY",
        help="the policies of --example-keep-fractions below 1, each at every fraction (the share of the run's "
        f"examples served; loss: its budget): {', '.join(EXAMPLE_POLICIES)}, or your own PruningPolicy as "
        "package.module:ClassName taking keep_fraction; random is the control importance must beat",
    )


def run_time_to_accuracy(args: argparse.Namespace) -> int:
    shape = dict(DIGITS_SHAPE)
    for name in SHAPE_FLAGS:
        if getattr(args, name) is not None:
            shape[name] = getattr(args, name)
    trilevel_settings = settings(args)
    _check(args, shape)
    check_writable(args.json)
    data = digits_tensors(shape["image_size"], args.max_train_samples, args.dataset)
    check_example_policies(args, num_examples=len(data[0]))  # a budget too tight for this data: before dense trains
    runs = []
    fractions = list(dict.fromkeys(args.example_keep_fractions))
    policies = list(dict.fromkeys(args.example_policy))
    plan = [(Setting(), 1.0, policies[0])] + [
        (setting, fraction, policy)
        for setting in trilevel_settings
        for fraction in fractions
        for policy in (policies if fraction < 1.0 else policies[:1])
        if not (setting == Setting() and fraction == 1.0)
    ]
    for setting, _, _ in plan:  # every config is checked before the first run trains for minutes
        try:
            TriLevelViTConfig(**shape, **setting.config_kwargs(), **selector_config(args))
        except ValueError as error:
            raise CommandError(str(error)) from None
    seeds = list(dict.fromkeys(args.seeds)) if args.seeds else [args.seed]
    total = len(plan) * len(seeds)
    for seed in seeds:  # all settings of one seed, then the next: a machine slowing down hits every setting alike
        for setting, fraction, policy in plan:
            name = "dense ViT" if (setting, fraction) == (Setting(), 1.0) else setting.name
            examples = f"{policy} examples {fraction:g}" if fraction < 1.0 else "all examples"
            label = f"run {len(runs) + 1}/{total} ({name}, {examples}, seed {seed})"
            progress = None if args.no_progress else label
            runs.append(train_once(setting, fraction, args, shape, data, progress, seed, policy))
    set_targets(runs, args)
    target = target_text(args)
    print(
        f"{args.dataset} ({len(data[0])} train / {len(data[1])} validation images), "
        f"{shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, {args.epochs} epochs, "
        f"seeds {seeds}, {args.device} {args.dtype}"
    )
    for seed in seeds:
        print(f"\nseed {seed}:")
        print(format_runs([run for run in runs if run.seed == seed], target))
    if len(seeds) > 1:
        print(f"\nover {len(seeds)} seeds (mean ± sd):")
        print(format_summary(runs, target))
    if args.json:
        device = torch.device(args.device)
        payload = report_payload("train --time-to-accuracy", args, device, shape=shape, recipe=RECIPE)
        write_report(args.json, payload | {"runs": [asdict(run) for run in runs]})
    return 0


def check_example_policies(args: argparse.Namespace, num_examples: int | None = None) -> None:
    """Build every policy at every budget and check it against the run (and, given, the data size): an unknown setting
    or module, or a budget the run leaves out of reach, is refused by its flags before anything trains."""
    for policy in args.example_policy:
        for fraction in (f for f in args.example_keep_fractions if f < 1.0):
            try:
                built = example_pruning_callback(policy, fraction).policy
                if num_examples is None:
                    built.check_epochs(args.epochs)
                else:
                    built.prepare(num_examples, args.epochs)
            except ValueError as error:
                flags = f"--example-policy {policy} --example-keep-fractions {fraction:g}"
                raise CommandError(f"{flags}: {error}") from None


def _check(args: argparse.Namespace, shape: dict) -> None:
    device = checked_device(args.device)
    if device.type == "cpu" and args.dtype == "float16":
        raise CommandError("--dtype float16 needs --device cuda with --time-to-accuracy; use bfloat16 on CPU.")
    checked_option(check_int, "--epochs", args.epochs)
    if args.target_accuracy is not None:
        checked_option(check_fraction, "--target-accuracy", args.target_accuracy)
    checked_option(check_number, "--target-below-dense", args.target_below_dense, 0.0, 100.0, low_open=False)
    for seed in args.seeds or [args.seed]:
        checked_option(check_int, "--seeds" if args.seeds else "--seed", seed, 0, 2**32 - 1)
    if args.max_train_samples is not None:
        checked_option(check_int, "--max-train-samples", args.max_train_samples, low=10)
    check_example_keep_fractions(args.example_keep_fractions)
    check_example_policies(args)
    checked_option(check_int, "--image-size", shape["image_size"], 8, 1024)  # the digits loader's range
    for name in SHAPE_FLAGS[1:]:
        checked_option(check_int, f"--{name.replace('_', '-')}", shape[name])
    check_divides(shape)
    ignored = [flag for flag, name in IGNORED_FLAGS.items() if getattr(args, name) is not None]
    if ignored:
        raise CommandError(f"{', '.join(ignored)} do not apply to --time-to-accuracy (the digits recipe fixes them).")
