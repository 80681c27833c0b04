"""What an image-classification training script checks and builds before `Trainer.train()`, kept out of the script.

`examples/run_image_classification.py` stays a top-to-bottom main in the shape of transformers' own example; the
reusable parts live here: reading flags or a JSON file of them, refusing settings that would fail late (nothing to
do, an output folder that holds an earlier run, launched processes the Trainer would not connect), building the
counting the examples a run trained, and the multi-process teardown. Building the TriLevel config, model and image
processor from a checkpoint, a config or a shape is `hf_trilevel.recipe.model`.

Errors are `ValueError`s that name the function's arguments (or `TrainingArguments` fields) in backticks, as the
rest of the library does; `name_flags` rewrites those names into a script's flags (`image_column` ->
`--image_column_name`) for its usage message.
"""

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from transformers import HfArgumentParser, TrainingArguments

from ..training.checkpoints import check_resumable, latest_complete_checkpoint
from ..training.trainer import check_hub_strategy

# Files that mark a folder as holding the results of an earlier run.
SAVED_RUN_FILES = (
    "config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "trainer_state.json",
    "all_results.json",
    "train_results.json",
    "eval_results.json",
)


def name_flags(message: str, flags: Mapping[str, str]) -> str:
    """`message` with each backticked argument name in `flags` replaced by its flag: `` `image_column` `` ->
    `--image_column_name` for `flags={"image_column": "image_column_name"}`. Other names stay as they are."""
    return re.sub(r"`(\w+)`", lambda match: f"--{flags[match[1]]}" if match[1] in flags else match[0], message)


# --- arguments --------------------------------------------------------------------------------------------------------


def parse_flags_or_json(
    parser: HfArgumentParser, argv: list[str], fill_defaults: Callable[[dict], dict] | None = None
) -> tuple:
    """Flags, or a single `.json` file of them, into the parser's dataclasses (`ValueError` for unknown names).

    Both forms start from the parser's defaults (`parser.set_defaults` included), so a JSON file gets a script's
    tuned recipe too (transformers' `parse_json_file` would use the dataclass defaults instead). `fill_defaults`
    then completes values that depend on other values.
    """
    if len(argv) == 1 and argv[0].endswith(".json"):
        path = Path(argv[0])
        if not path.is_file():
            raise ValueError(f"the arguments file {argv[0]!r} does not exist.")
        try:
            given = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"the arguments file {argv[0]!r} is not valid JSON: {error}") from error
        if not isinstance(given, dict):
            raise ValueError(f"the arguments file {argv[0]!r} must hold a JSON object of argument names and values.")
        values = {**vars(parser.parse_args([])), **given}
    else:
        namespace, unknown = parser.parse_known_args(argv)
        if unknown:
            raise ValueError(f"unrecognized arguments: {' '.join(unknown)}")
        values = vars(namespace)
    return parser.parse_dict(fill_defaults(values) if fill_defaults else values)


def launched_on_several_processes() -> bool:
    """True under `accelerate launch --num_processes N` / `torchrun --nproc_per_node N` with N > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def check_training_arguments(training_args: TrainingArguments, *, model_name_or_path: str | None = None) -> None:
    """Refuse `TrainingArguments` that would fail deep inside the Trainer, or silently do the wrong thing.

    Nothing to do; evaluation without a trained model (`model_name_or_path`); `remove_unused_columns` (the on-the-fly
    transform reads the `image` column, which the Trainer would drop); Hub pushes of pickles; and several launched
    processes that the Trainer would not connect (each would train its own copy).
    """
    check_hub_strategy(training_args)
    if not (training_args.do_train or training_args.do_eval):
        raise ValueError("`do_train` and `do_eval` are both False: there is nothing to do.")
    if not training_args.do_train and model_name_or_path is None:
        raise ValueError("`do_train` False evaluates a trained model: give it with `model_name_or_path`.")
    if training_args.remove_unused_columns:
        raise ValueError(
            "`remove_unused_columns` must stay False: the on-the-fly transform reads the `image` column, "
            "which the Trainer would otherwise drop."
        )
    if launched_on_several_processes() and training_args.world_size == 1:
        raise ValueError(
            f"{os.environ['WORLD_SIZE']} processes were launched but the Trainer does not distribute them (no GPU, "
            "`use_cpu` False), so each would train its own copy. Pass `use_cpu` for DDP over gloo on CPU."
        )


LATEST_CHECKPOINT = ("True", "true", "latest")


def resolve_resume_checkpoint(resume_from_checkpoint: str | None, output_dir: str) -> str | None:
    """The checkpoint folder to resume from: `True` / `latest` mean the newest complete `checkpoint-*` there.

    transformers' own example accepts `--resume_from_checkpoint True`; resolving it here, before any data is
    loaded, turns "no checkpoint there" into a clear error instead of a failure after the model is built. Folders
    whose save was interrupted are skipped (`hf_trilevel.training.checkpoints`), and a named incomplete one is refused
    with
    the missing file.
    """
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint not in LATEST_CHECKPOINT:
        if Path(resume_from_checkpoint).is_dir():
            check_resumable(resume_from_checkpoint)
        return resume_from_checkpoint
    latest = latest_complete_checkpoint(output_dir)
    if latest is None:
        raise ValueError(
            f"`resume_from_checkpoint` {resume_from_checkpoint!r} asks for the newest checkpoint in `output_dir` "
            f"{output_dir!r}, but it holds no complete checkpoint-* folder; pass a checkpoint folder or train from "
            "scratch."
        )
    return latest


def check_output_dir(
    output_dir: str, *, do_train: bool = True, overwrite_output_dir: bool = False, resume_from_checkpoint: str | None
) -> None:
    """Refuse to train into a folder that holds an earlier run's model or results without consent.

    `resume_from_checkpoint` continues the run in that folder, so it counts as consent; its path must exist. An
    `output_dir` that is a file, or lies inside one, is refused whatever the consent (nothing could be saved).
    """
    check_output_dir_is_a_folder(output_dir)
    if resume_from_checkpoint is not None and not Path(resume_from_checkpoint).is_dir():
        raise ValueError(
            f"`resume_from_checkpoint` {resume_from_checkpoint!r} is not a directory (e.g. OUTPUT/checkpoint-500)."
        )
    if not do_train or overwrite_output_dir or resume_from_checkpoint is not None:
        return
    found = saved_run_files(Path(output_dir))
    if found:
        raise ValueError(
            f"`output_dir` {output_dir!r} already holds {', '.join(found[:4])}: pass `overwrite_output_dir` to "
            "replace them, `resume_from_checkpoint` to continue a run saved there, or choose another `output_dir`."
        )


def check_output_dir_is_a_folder(output_dir: str) -> None:
    """`output_dir` and its nearest existing parent must be folders, or the first save fails with `FileExistsError`."""
    path = Path(output_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"`output_dir` {output_dir!r} is a file, not a folder; choose a folder to save the run in.")
    parent = next((folder for folder in path.parents if folder.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(
            f"`output_dir` {output_dir!r} is inside {str(parent)!r}, which is a file; choose a folder to save the "
            "run in."
        )


def saved_run_files(output_dir: Path) -> list[str]:
    """Names in `output_dir` that an earlier run saved (model, results, Trainer checkpoints)."""
    if not output_dir.is_dir():
        return []
    found = [name for name in SAVED_RUN_FILES if (output_dir / name).exists()]
    return found + sorted(path.name for path in output_dir.glob("checkpoint-*") if path.is_dir())


# --- results ----------------------------------------------------------------------------------------------------------


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


# --- processes --------------------------------------------------------------------------------------------------------


def end_distributed(wait_for_all: bool = True) -> None:
    """Tear the process group down, after a barrier when every rank finished normally.

    Without the teardown gloo processes intermittently abort at exit (SIGABRT). Without the barrier, a rank that
    finishes first (rank 0 still writes the model card) can hang in it. After an error there is no barrier: the
    other ranks may be stuck in a collective, and the launcher stops them when this process exits.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if wait_for_all:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


__all__ = [
    "SAVED_RUN_FILES",
    "check_output_dir",
    "check_output_dir_is_a_folder",
    "check_training_arguments",
    "end_distributed",
    "examples_trained_per_epoch",
    "launched_on_several_processes",
    "name_flags",
    "parse_flags_or_json",
    "saved_run_files",
]
