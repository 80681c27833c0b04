"""The recipe's checks across argument groups, run before any data loads: a bad setting stops with a message naming
its flag instead of failing late (nothing to do, an output folder that holds an earlier run, launched processes the
Trainer would not connect, a sparsity field the checkpoint's config refuses).

Each argument group checks its own fields in `__post_init__`; what needs two groups, the file system or a
checkpoint's config is here. Errors are `ValueError`s naming the flags in backticks.
"""

import os
from collections.abc import Sequence
from pathlib import Path

from transformers import PretrainedConfig, TrainingArguments

from ..modeling import family_of_config
from ..modeling.token_selectors import BUILT_IN_TOKEN_SELECTORS
from ..training.checkpoints import (
    check_resumable,
    checkpoint_folders,
    checkpoint_problem,
    latest_complete_checkpoint,
)
from ..training.trainer import check_hub_strategy
from ..weight_sparsity.arguments import WeightSparsityArguments
from .arguments import SELECTOR_SETTINGS, ModelArguments, RunArguments
from .model import check_config_overrides
from .processes import launched_on_several_processes
from .slimmed_folder import SLIMMED_MODEL_TYPES
from .weight_checks import check_checkpoint_weights

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
LATEST_CHECKPOINT = ("True", "true", "latest")


def check_arguments(
    model_args: ModelArguments,
    run_args: RunArguments,
    training_args: TrainingArguments,
    technique_args: Sequence,
) -> None:
    """Refuse settings that would fail deep inside the techniques, the model, the data or the Trainer.

    Also resolves `resume_from_checkpoint` `latest` (or `True`) into the newest complete checkpoint folder, so a
    missing one is refused here.
    """
    for arguments in technique_args:
        arguments.check_training_arguments(training_args)
    check_slim_output_dir(slim_output_dir(technique_args), overwrite_output_dir=run_args.overwrite_output_dir)
    check_training_arguments(training_args, model_name_or_path=model_args.model_name_or_path)
    check_output_dir_is_a_folder(training_args.output_dir)  # before `latest` looks inside it
    training_args.resume_from_checkpoint = resolve_resume_checkpoint(
        training_args.resume_from_checkpoint, training_args.output_dir
    )
    check_output_dir(
        training_args.output_dir,
        do_train=training_args.do_train,
        overwrite_output_dir=run_args.overwrite_output_dir,
        resume_from_checkpoint=training_args.resume_from_checkpoint,
    )
    # The config's own checks of the fields given here (an unknown selector, a mass outside (0, 1], a learned selector
    # without pruning layers) against the config they change, so they fail before any data loads, not after.
    config = check_config_overrides(
        model_args.config_overrides(),
        model_name_or_path=model_args.model_name_or_path,
        config_name=model_args.config_name,
        scratch=model_args.scratch_config(),
        model_family=model_args.model_family,
        **model_args.hub_kwargs(),
    )
    check_slim_family(slim_output_dir(technique_args), config)
    # The checkpoint folder's weights (headers only) against that config: a cut-short file, or shapes other than the
    # model's. The classifier is compared once the data's labels are known (`load_trilevel_model`).
    check_checkpoint_weights(
        model_args.model_name_or_path,
        config,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        compare_classifier=False,
        config_argument="config_name" if model_args.config_name else None,
    )
    check_selector_settings(model_args, config.token_selector)


def check_selector_settings(model_args: ModelArguments, selector: str) -> None:
    """Refuse a selector setting given as a flag (`token_keep_mass`, `token_importance`, ...) that the run's token
    selector ignores, naming the flag, the selector and the selectors that read it.

    `selector` is the final config's (`check_config_overrides`): `token_selector` if given, else `config_name`'s or
    the checkpoint's, else the config's default; so a flag meant for an adaptive checkpoint passes and the same flag
    given to a class-attention one is refused. A selector the user registered may read any config field, so it is
    trusted with all of them.
    """
    overrides = model_args.config_overrides()
    given = [name for name in SELECTOR_SETTINGS if name in overrides]
    if not given or selector not in BUILT_IN_TOKEN_SELECTORS:
        return
    if "token_selector" in overrides:
        origin = "given"
    elif model_args.config_name or model_args.model_name_or_path:
        argument = "config_name" if model_args.config_name else "model_name_or_path"
        origin = f"from `{argument}` {model_args.config_name or model_args.model_name_or_path!r}"
    else:
        origin = "the default"
    for name in given:
        readers = SELECTOR_SETTINGS[name]
        if selector not in readers:
            raise ValueError(
                f"`{name}` has no effect with token_selector {selector!r} ({origin}): only token_selector "
                f"{' and '.join(readers)} reads it. Pass `token_selector` {' or '.join(readers)}, or drop `{name}`."
            )


def slim_output_dir(technique_args: Sequence) -> str | None:
    """Where the slimmed copy of a structured run goes (`--slim_output_dir`), or None."""
    found = (arguments for arguments in technique_args if isinstance(arguments, WeightSparsityArguments))
    return next((arguments.slim_output_dir for arguments in found if arguments.enabled()), None)


def check_slim_output_dir(slim_dir: str | None, *, overwrite_output_dir: bool) -> None:
    """A slim folder that holds files is written into only with `overwrite_output_dir`, as `output_dir` is."""
    if slim_dir is None or overwrite_output_dir:
        return
    path = Path(slim_dir)
    if path.is_dir() and any(path.iterdir()):
        raise ValueError(
            f"`slim_output_dir` {slim_dir!r} already holds files; pass `overwrite_output_dir` to write into it."
        )


def check_slim_family(slim_dir: str | None, config: PretrainedConfig) -> None:
    """`slim_output_dir` saves the slimmed copy through `hf_trilevel.recipe.slimmed_folder`, which (like
    `hf-trilevel slim` and the card of a saved folder) handles TriLevel ViT folders only so far; another family's run
    is refused before it trains rather than after, when the copy could not be written."""
    if slim_dir is not None and config.model_type not in SLIMMED_MODEL_TYPES:
        family = family_of_config(config).name
        raise ValueError(
            f"`slim_output_dir` saves slimmed copies of {', '.join(map(repr, SLIMMED_MODEL_TYPES))} models only so "
            f"far; this run's model is a {config.model_type!r} ({family}) one. Drop `slim_output_dir` (the structured "
            "run's masked model is still saved) and slim it from Python with `hf_trilevel.slim(model)`."
        )


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


def resolve_resume_checkpoint(resume_from_checkpoint: str | None, output_dir: str) -> str | None:
    """The checkpoint folder to resume from: `True` / `latest` mean the newest complete `checkpoint-*` there.

    transformers' own example accepts `--resume_from_checkpoint True`; resolving it here, before any data is
    loaded, turns "no checkpoint there" into a clear error instead of a failure after the model is built. Folders
    whose save was interrupted are skipped (`hf_trilevel.training.checkpoints`), and a named incomplete one is refused
    with the missing file.
    """
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint not in LATEST_CHECKPOINT:
        if Path(resume_from_checkpoint).is_dir():
            check_resumable(resume_from_checkpoint)
        return resume_from_checkpoint
    latest = latest_complete_checkpoint(output_dir)
    if latest is None:
        incomplete = [folder.name for folder in checkpoint_folders(output_dir)]
        found = f" (only incomplete ones: {', '.join(incomplete)})" if incomplete else ""
        fresh = " (with `overwrite_output_dir`, which replaces them)" if incomplete else ""
        raise ValueError(
            f"`resume_from_checkpoint` {resume_from_checkpoint!r} asks for the newest checkpoint in `output_dir` "
            f"{output_dir!r}, but it holds no complete checkpoint-* folder{found}; pass a checkpoint folder or train "
            f"from scratch{fresh}."
        )
    return latest


def check_output_dir(
    output_dir: str, *, do_train: bool = True, overwrite_output_dir: bool = False, resume_from_checkpoint: str | None
) -> None:
    """Refuse to train into a folder that holds an earlier run's model or results without consent.

    `resume_from_checkpoint` continues the run in that folder, so it counts as consent; its path must exist. An
    `output_dir` that is a file, or lies inside one, is refused whatever the consent (nothing could be saved). The
    message names the checkpoints there that cannot be resumed (an interrupted save) and offers resuming only when a
    complete one exists.
    """
    check_output_dir_is_a_folder(output_dir)
    if resume_from_checkpoint is not None and not Path(resume_from_checkpoint).is_dir():
        raise ValueError(
            f"`resume_from_checkpoint` {resume_from_checkpoint!r} is not a directory (e.g. OUTPUT/checkpoint-500)."
        )
    if not do_train or overwrite_output_dir or resume_from_checkpoint is not None:
        return
    found = saved_run_files(Path(output_dir))
    if not found:
        return
    # Resuming is offered only where it can work: from a complete checkpoint (`hf_trilevel.training.checkpoints`).
    complete, incomplete = None, []
    for folder in checkpoint_folders(output_dir):
        problem = checkpoint_problem(folder)
        if problem is not None:
            incomplete.append((folder.name, problem))
        elif complete is None:
            complete = folder.name
    message = f"`output_dir` {output_dir!r} already holds {', '.join(found[:4])}: pass `overwrite_output_dir` to "
    message += "replace them"
    if complete is not None:
        message += f", `resume_from_checkpoint` latest to continue the run saved there (from {complete})"
    message += ", or choose another `output_dir`."
    if incomplete:
        names = ", ".join(name for name, _ in incomplete)
        verb = "is an incomplete checkpoint" if len(incomplete) == 1 else "are incomplete checkpoints"
        message += f" {names} {verb} that cannot be resumed: {incomplete[0][1]}."
    raise ValueError(message)


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


__all__ = [
    "SAVED_RUN_FILES",
    "check_arguments",
    "check_output_dir",
    "check_output_dir_is_a_folder",
    "check_selector_settings",
    "check_slim_family",
    "check_slim_output_dir",
    "check_training_arguments",
    "resolve_resume_checkpoint",
    "saved_run_files",
    "slim_output_dir",
]
