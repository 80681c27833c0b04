"""Plain data for a model card, read from what a run leaves behind: result files, arguments, the log history.

Each function takes data (a folder, a dict, a list), never a `Trainer`, so the card of a live run
(`hf_trilevel.model_card.builder.trainer_model_card`) and of a folder saved earlier (`hf-trilevel card FOLDER`) are
built
from the same readers.
"""

import json
from pathlib import Path

RESULT_FILES = ("all_results.json", "train_results.json", "eval_results.json")
# Generic loaders, not data sets: a card naming them as its data set would say nothing (transformers skips them too).
GENERIC_BUILDERS = frozenset({"csv", "json", "pandas", "parquet", "text", "arrow", "generator"})
# `TrainingArguments` fields shown as they are (see `training_from_arguments` for the derived ones).
ARGUMENT_FIELDS = ("learning_rate", "lr_scheduler_type", "weight_decay", "seed")


def read_result_files(folder: str | Path) -> dict[str, object]:
    """Merge `all_results.json`, `train_results.json` and `eval_results.json` of a saved folder (later files win)."""
    merged: dict[str, object] = {}
    for name in RESULT_FILES:
        path = Path(folder) / name
        if path.is_file():
            merged.update(json.loads(path.read_text(encoding="utf-8")))
    return merged


def training_from_arguments(arguments: dict, world_size: int | None = None) -> dict:
    """Card hyperparameters from `TrainingArguments.to_dict()` or the `training_args.json` saved from it.

    Epochs are shown only when they bounded the run (no positive `max_steps`). The total batch size needs the
    number of processes, which a saved file does not record: without `world_size` it is left out.
    """
    training = {key: arguments[key] for key in ARGUMENT_FIELDS if key in arguments}
    if "num_train_epochs" in arguments and (arguments.get("max_steps") or -1) <= 0:
        training["num_train_epochs"] = arguments["num_train_epochs"]
    if world_size is not None:
        per_device, accumulation = arguments["per_device_train_batch_size"], arguments["gradient_accumulation_steps"]
        training["total_train_batch_size"] = per_device * accumulation * world_size
    return training


def log_history_metrics(log_history: list[dict]) -> dict:
    """The last training summary (it holds `train_runtime`) and the last evaluation of a `Trainer` log history."""
    metrics: dict = {}
    for kind in ("train_runtime", "eval_accuracy"):
        entries = [entry for entry in log_history if kind in entry]
        if entries:
            metrics.update(entries[-1])
    return metrics


def dataset_info(
    datasets: list, dataset_tags: str | list[str] | None, dataset: str | list[str] | None, dataset_args
) -> tuple[str | None, str | None, str | None]:
    """Hub id, readable name and config of the evaluation data.

    As in transformers, `dataset_tags` are Hub ids and `dataset` readable names; a name alone links to no Hub data
    set. Without either, the `datasets` builder name of the first of `datasets` that is not None (e.g.
    `imagefolder`, or a Hub data set's) is used if it names a data set and not a generic loader.
    """
    dataset_id, dataset_name, dataset_config = _first(dataset_tags), _first(dataset), _first(dataset_args)
    if dataset_id is None and dataset_name is None:
        one = next((data for data in datasets if data is not None), None)
        builder = getattr(one, "builder_name", None)
        if builder and builder not in GENERIC_BUILDERS:
            dataset_id, dataset_config = builder, dataset_config or getattr(one, "config_name", None)
    return dataset_id, dataset_name, dataset_config


def _first(value: str | list[str] | None) -> str | None:
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value
