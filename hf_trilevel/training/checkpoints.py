"""Which `checkpoint-*` folders a run can resume from: only complete ones.

A kill (OOM, preemption, Ctrl-C twice) can land while the Trainer is writing a checkpoint, leaving a folder with
weights but no optimizer, or a half-written `trainer_state.json`. transformers' `get_last_checkpoint` (behind
`resume_from_checkpoint=True`) picks the highest-numbered folder whatever it holds, so such a run resumes from
nothing (a missing `trainer_state.json` silently restarts at step 0) or stops with a raw `FileNotFoundError`.

What makes a checkpoint complete follows from the order in which `Trainer._save_checkpoint` writes it: the model
(and, through `TriLevelTrainer.save_model`, every training technique's state), then the optimizer, scheduler and
RNG states, then `trainer_state.json`, and only then the rotation that deletes older checkpoints. So a folder whose
`trainer_state.json` parses holds everything that was written before it, in whatever layout (safetensors, FSDP
shards, DeepSpeed folders) the run used; and because the rotation runs after that file is written, the newest
complete checkpoint is never deleted for a newer incomplete one (`tests/test_trainer_contract.py` pins that order).
Files closed before the kill are intact: a SIGKILL loses no written data (an operating-system crash, which can, is
out of scope). One gap, transformers': with several processes each writes its own `rng_state_<rank>.pth` and
process 0 writes `trainer_state.json` without waiting for the others, so a kill in between leaves a checkpoint that
resumes with a fresh random state on those processes (the Trainer logs it); nothing in this package's training
draws from that state (augmentation and pruning are keyed), dropout would.
"""

import json
import logging
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .weight_files import folder_weights_problem, safetensors_problem

logger = logging.getLogger(__name__)

TRAINER_STATE_NAME = "trainer_state.json"  # transformers.trainer.TRAINER_STATE_NAME (pinned by test_trainer_contract)
CHECKPOINT_FOLDER = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why `folder` cannot be resumed from (naming the missing or broken file), or None when it is complete.

    Beyond a parsable `trainer_state.json`, every `*.json` in it must parse and every `*.safetensors` (the model,
    its shards, the training techniques' state such as `weight_sparsity.safetensors`) must read whole: a checkpoint
    copied, synced or restored only in part fails those. Only headers are read (`hf_trilevel.training.weight_files`),
    so checking every checkpoint of a run costs milliseconds.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return f"{str(folder)!r} is not a directory"
    state_file = folder / TRAINER_STATE_NAME
    if not state_file.is_file():
        return (
            f"{str(folder)!r} has no {TRAINER_STATE_NAME}, the file the Trainer writes last: it is not a complete "
            "Trainer checkpoint (its save was interrupted, or it is a model folder: load that with "
            "`model_name_or_path`)"
        )
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"{str(state_file)!r} is incomplete or corrupt ({error}): its save was interrupted"
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return f"{str(state_file)!r} has no `global_step`: it is not a Trainer state"
    return _file_problem(folder)


def _file_problem(folder: Path) -> str | None:
    """The first unreadable `*.json` or `*.safetensors` file directly in `folder`, or a broken shard index."""
    for path in sorted(folder.glob("*.json")):
        if path.name == TRAINER_STATE_NAME or not path.is_file():
            continue
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            return f"{str(path)!r} is incomplete or corrupt ({error})"
    for path in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(path) if path.is_file() else None
        if problem is not None:
            return problem
    return folder_weights_problem(folder)  # a sharded model's index must name shards that hold its tensors


def checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """The `checkpoint-<step>` folders in `output_dir`, newest (highest step) first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [
        (int(match[1]), path)
        for path in output_dir.iterdir()
        if (match := CHECKPOINT_FOLDER.match(path.name)) and path.is_dir()
    ]
    return [path for _, path in sorted(found, reverse=True)]


def latest_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The highest-step complete checkpoint in `output_dir` (None if there is none), skipping incomplete ones.

    What `resume_from_checkpoint=True` / `latest` should mean: each skipped folder is logged with its problem.
    """
    for folder in checkpoint_folders(output_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        logger.warning("not resuming from %s: %s.", folder.name, problem)
    return None


def check_resumable(checkpoint: str | Path, argument: str = "resume_from_checkpoint") -> None:
    """Refuse an incomplete checkpoint with a message naming the missing file and the newest complete alternative."""
    problem = checkpoint_problem(checkpoint)
    if problem is None:
        return
    message = f"`{argument}` {str(checkpoint)!r} cannot be resumed: {problem}."
    alternative = latest_complete_checkpoint(Path(checkpoint).parent)
    if alternative is not None:
        message += f" The newest complete checkpoint there is {alternative!r}."
    raise ValueError(message)


def remove_checkpoints(output_dir: str | Path, keep: Iterable[str | Path | None] = ()) -> list[str]:
    """Delete the `checkpoint-*` folders in `output_dir`, except those holding a path in `keep`; return their names.

    For a fresh run that was given consent to replace an earlier one in the same folder: left in place, the earlier
    run's higher-numbered checkpoints would be what `resume_from_checkpoint=True` picks after a crash of the new run,
    silently continuing the wrong run. `keep` names what the new run starts from (`model_name_or_path`, a config, an
    image processor): a checkpoint that holds one is the new run's input, not the earlier run's leftover.
    """
    sources = [Path(path).resolve() for path in keep if path is not None and Path(path).exists()]
    removed = []
    for folder in checkpoint_folders(output_dir)[::-1]:
        resolved = folder.resolve()
        if any(source == resolved or resolved in source.parents for source in sources):
            continue
        shutil.rmtree(folder)
        removed.append(folder.name)
    return removed


__all__ = [
    "check_resumable",
    "checkpoint_folders",
    "checkpoint_problem",
    "latest_complete_checkpoint",
    "remove_checkpoints",
]
