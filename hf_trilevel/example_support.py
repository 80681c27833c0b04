"""What an image-classification training script checks and builds before `Trainer.train()`, kept out of the script.

`examples/run_image_classification.py` stays a top-to-bottom main in the shape of transformers' own example; the
reusable parts live here: reading flags or a JSON file of them, refusing settings that would fail late (nothing to
do, an output folder that holds an earlier run, launched processes the Trainer would not connect), building the
TriLevel config, model and image processor from a checkpoint, a config or a shape, and the multi-process teardown.

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
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoImageProcessor, HfArgumentParser, PretrainedConfig, TrainingArguments, ViTImageProcessorPil

from .checkpoints import check_resumable, latest_complete_checkpoint
from .configuration_trilevel_vit import TriLevelViTConfig
from .image_data.loading import is_missing_local_path
from .modeling_trilevel_vit import TriLevelViTForImageClassification
from .trainer import check_hub_strategy
from .value_checks import as_pair

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
CHECKPOINT_MODEL_TYPES = (TriLevelViTConfig.model_type, "vit")  # what a TriLevel model can start from


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
    whose save was interrupted are skipped (`hf_trilevel.checkpoints`), and a named incomplete one is refused with
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


# --- model ------------------------------------------------------------------------------------------------------------


def read_vit_config(source: str, argument: str = "model_name_or_path", **hub_kwargs) -> dict:
    """The raw `config.json` of `source` (folder, file or Hub id), which must describe a ViT or TriLevel ViT.

    `argument` names `source` in error messages; `hub_kwargs` (`cache_dir`, `revision`, `token`) go to transformers.
    """
    if is_missing_local_path(source):
        raise ValueError(f"`{argument}` {source!r}: no such folder or file.")
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(source, **hub_kwargs)
    except (OSError, ValueError) as error:
        raise ValueError(f"`{argument}` {source!r}: cannot read its config: {error}") from error
    model_type = config_dict.get("model_type")
    if model_type is None:
        raise ValueError(f"`{argument}` {source!r} has no config.json with a `model_type`; is it a model folder?")
    if model_type not in CHECKPOINT_MODEL_TYPES:
        raise ValueError(
            f"`{argument}` {source!r} is a {model_type!r} model; TriLevel ViTs start from a TriLevel or a plain "
            "ViT/DeiT checkpoint (model_type 'trilevel_vit' or 'vit')."
        )
    return config_dict


def check_classifier_size(checkpoint: dict, num_labels: int, ignore_mismatched_sizes: bool) -> None:
    """A checkpoint's classifier (raw `config.json` dict) must fit the data's labels unless it may be replaced."""
    has_classifier = any("ForImageClassification" in name for name in checkpoint.get("architectures") or [])
    checkpoint_labels = len(checkpoint.get("id2label") or {}) or checkpoint.get("num_labels")
    if has_classifier and checkpoint_labels != num_labels and not ignore_mismatched_sizes:
        raise ValueError(
            f"`model_name_or_path` has a classifier for {checkpoint_labels} labels but the data has {num_labels}; "
            "pass `ignore_mismatched_sizes` to train a new classifier."
        )


def build_trilevel_config(
    label_names: list[str],
    *,
    model_name_or_path: str | None = None,
    config_name: str | None = None,
    scratch: Mapping[str, object] | None = None,
    overrides: Mapping[str, object] | None = None,
    ignore_mismatched_sizes: bool = False,
    **hub_kwargs,
) -> TriLevelViTConfig:
    """The model's config, with the data's label names (saved with the checkpoint, used by pipelines).

    From `config_name` if given, else from `model_name_or_path`'s config, else `TriLevelViTConfig(**scratch)`;
    `overrides` (e.g. keep rates given on a command line) win over all three. A checkpoint's classifier must fit
    `label_names` unless `ignore_mismatched_sizes`.
    """
    labels = {  # num_labels follows from id2label
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: index for index, name in enumerate(label_names)},
    }
    overrides = dict(overrides or {})
    if model_name_or_path is not None:
        checkpoint = read_vit_config(model_name_or_path, "model_name_or_path", **hub_kwargs)
        check_classifier_size(checkpoint, len(label_names), ignore_mismatched_sizes)
    if config_name is not None:
        read_vit_config(config_name, "config_name", **hub_kwargs)
    source = config_name or model_name_or_path
    if source is None:
        return TriLevelViTConfig(**{**(scratch or {}), **overrides}, **labels)
    argument = "config_name" if config_name is not None else "model_name_or_path"
    try:
        config = TriLevelViTConfig.from_pretrained(source, **hub_kwargs, **labels, **overrides)
    except StrictDataclassError as error:  # not a ValueError: the config's type checks (`@strict`)
        raise invalid_config_error(error, argument, source, **hub_kwargs) from error
    config.check_trilevel_fields()  # from_pretrained sets keyword arguments after the config validated itself
    return config


def check_config_overrides(
    overrides: Mapping[str, object],
    *,
    model_name_or_path: str | None = None,
    config_name: str | None = None,
    scratch: Mapping[str, object] | None = None,
    **hub_kwargs,
) -> None:
    """Refuse `overrides` (e.g. `token_selector`, `token_keep_mass` from a command line) that the config they change
    refuses, before a script loads its data: `build_trilevel_config` needs the data's label names, so without this
    check a bad field would only fail after the data loaded.

    The config is the one `build_trilevel_config` starts from (`config_name`, else `model_name_or_path`'s, else
    `scratch`), so combinations are checked too: `token_selector="learned"` against a checkpoint without pruning
    layers. Raises the config's `ValueError`, which names the field.
    """
    source = config_name or model_name_or_path
    if source is None:
        TriLevelViTConfig(**{**(scratch or {}), **overrides})
        return
    argument = "config_name" if config_name is not None else "model_name_or_path"
    read_vit_config(source, argument, **hub_kwargs)
    try:
        config = TriLevelViTConfig.from_pretrained(source, **hub_kwargs, **overrides)
    except StrictDataclassError as error:
        raise invalid_config_error(error, argument, source, **hub_kwargs) from error
    config.check_trilevel_fields()


def selector_text(config: TriLevelViTConfig) -> str:
    """`selector adaptive (token_keep_mass=0.9, ...)`: the token selector and the settings it reads, for a run's
    summary line."""
    selector = getattr(config, "token_selector", "class_attention")
    if selector != "adaptive":
        return f"selector {selector}"
    settings = ", ".join(
        f"{name}={getattr(config, name)}"
        for name in ("token_keep_mass", "token_min_keep_rate", "token_importance")
        if hasattr(config, name)
    )
    return f"selector adaptive ({settings})"


def invalid_config_error(error: StrictDataclassError, argument: str, source: str, **hub_kwargs) -> ValueError:
    """A `ValueError` naming the flag, the config file, the field and its value, for a config that fails the
    config class's `@strict` type checks (`huggingface_hub.dataclasses`)."""
    cause = error.__cause__ or error
    found = re.search(r"field '(\w+)'", str(error))
    config_file = _config_file(source)
    if found is None:  # a check over several fields
        return ValueError(f"`{argument}` {source!r}: {config_file} is not a valid config: {cause}")
    field_name = found[1]
    try:
        value = PretrainedConfig.get_config_dict(source, **hub_kwargs)[0].get(field_name)
    except (OSError, ValueError):
        value = None
    return ValueError(
        f"`{argument}` {source!r}: in {config_file}, '{field_name}' is {value!r}, which the config refuses "
        f"({type(cause).__name__}: {cause}); fix that field of the file."
    )


def _config_file(source: str) -> str:
    """The `config.json` a config source means: the file itself, the one in a folder, or a Hub repo's."""
    path = Path(source).expanduser()
    return str(path / "config.json") if path.is_dir() else str(path) if path.is_file() else f"{source}/config.json"


def load_trilevel_model(
    config: TriLevelViTConfig,
    model_name_or_path: str | None = None,
    *,
    ignore_mismatched_sizes: bool = False,
    **hub_kwargs,
) -> TriLevelViTForImageClassification:
    """A new model for `config`, or the checkpoint's weights (TriLevel, ViT or DeiT) in this package's classes."""
    if model_name_or_path is None:
        return TriLevelViTForImageClassification(config)
    try:
        return TriLevelViTForImageClassification.from_pretrained(
            model_name_or_path, config=config, ignore_mismatched_sizes=ignore_mismatched_sizes, **hub_kwargs
        )
    except OSError as error:
        raise ValueError(f"`model_name_or_path` {model_name_or_path!r}: cannot load weights: {error}") from error


def build_image_processor(
    config: TriLevelViTConfig,
    image_processor_name: str | None = None,
    model_name_or_path: str | None = None,
    *,
    trust_remote_code: bool = False,
    **hub_kwargs,
) -> tuple[ViTImageProcessorPil, str | None]:
    """A ViT image processor at the model's resolution with the named (or checkpoint's) normalisation, and a notice
    when the checkpoint has none (then mean = std = 0.5).

    It must resize to the model's `image_size`: `pipeline` resizes to the processor's size, and a processor at
    another size (a default one resizes to 224) makes the model refuse its input.
    """
    settings = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "rescale_factor": 1 / 255}
    source, notice = image_processor_name or model_name_or_path, None
    if source is not None:
        try:
            loaded = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code, **hub_kwargs)
        except (OSError, ValueError) as error:
            if image_processor_name:
                raise ValueError(f"`image_processor_name` {source!r}: cannot load it: {error}") from error
            notice = f"{source} has no image processor; normalising with mean = std = 0.5."
        else:
            for name in settings:
                if getattr(loaded, name, None) is not None:
                    settings[name] = getattr(loaded, name)
    height, width = as_pair(config.image_size)
    processor = ViTImageProcessorPil(
        do_resize=True, size={"height": height, "width": width}, do_rescale=True, do_normalize=True, **settings
    )
    return processor, notice


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
    "build_image_processor",
    "build_trilevel_config",
    "check_classifier_size",
    "check_config_overrides",
    "check_output_dir",
    "check_output_dir_is_a_folder",
    "check_training_arguments",
    "end_distributed",
    "examples_trained_per_epoch",
    "launched_on_several_processes",
    "load_trilevel_model",
    "name_flags",
    "parse_flags_or_json",
    "read_vit_config",
    "saved_run_files",
    "selector_text",
]
