"""Model cards (`README.md`) for TriLevel checkpoints: Hub metadata, the method, measured results, usage, citations.

The card is rendered from one template, `hf_trilevel/model_card_template.md`, shipped inside the package so that an
installed (non-editable) hf-trilevel renders cards too. It is a `string.Template` (`${name}` placeholders): BibTeX and
code keep their braces, and every variable part is built here, in Python, where it is tested.

`build_model_card` turns a config and a metrics dict into a `huggingface_hub.ModelCard`; `TriLevelTrainer` calls it
from `create_model_card` (and so from `push_to_hub`), and `write_model_card` does the same for an already saved
folder (`python -m hf_trilevel.model_card FOLDER --dataset-name NAME`).
"""

import argparse
import json
import math
import numbers
from importlib.resources import files
from pathlib import Path
from string import Template

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .callbacks import ExamplePruningCallback, KeepRateScheduleCallback
from .configuration_trilevel_vit import TriLevelViTConfig
from .flops import flops_speedup_limit, forward_flops, num_patches
from .token_reduction import num_kept_tokens

TEMPLATE_NAME = "model_card_template.md"
BASE_TAGS = ("trilevel-vit", "vision", "image-classification", "vision-transformer", "token-pruning")
DEFAULT_LICENSE = "apache-2.0"
# Generic loaders, not data sets: a card naming them as its data set would say nothing (transformers skips them too).
GENERIC_BUILDERS = frozenset({"csv", "json", "pandas", "parquet", "text", "arrow", "generator"})
METRIC_TYPES = (("accuracy", "accuracy", "Top-1 accuracy"), ("top5_accuracy", "top_5_accuracy", "Top-5 accuracy"))
TRAINING_ARGS_JSON = "training_args.json"
RESULT_FILES = ("all_results.json", "train_results.json", "eval_results.json")

# Keys of `build_model_card(training=...)`, with the label each gets in the card's hyperparameter table.
TRAINING_FIELDS = {
    "num_train_epochs": "epochs",
    "num_train_examples": "training examples",
    "total_train_batch_size": "batch size (all processes, with gradient accumulation)",
    "learning_rate": "peak learning rate",
    "lr_scheduler_type": "learning-rate schedule",
    "weight_decay": "weight decay",
    "seed": "seed",
    "example_pruning": "example pruning",
    "keep_rate_schedule": "token keep-rate warm-up",
}

BIBTEX = r"""@inproceedings{kong2023peeling,
  title     = {Peeling the Onion: Hierarchical Reduction of Data Redundancy for Efficient Vision Transformer Training},
  author    = {Kong, Zhenglun and Ma, Haoyu and Yuan, Geng and Sun, Mengshu and Xie, Yanyue and Dong, Peiyan and
               Meng, Xin and Shen, Xuan and Tang, Hao and Qin, Minghai and others},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  year      = {2023},
  eprint    = {2211.10801},
  archivePrefix = {arXiv}
}

@inproceedings{chen2021chasing,
  title     = {Chasing Sparsity in Vision Transformers: An End-to-End Exploration},
  author    = {Chen, Tianlong and Cheng, Yu and Gan, Zhe and Yuan, Lu and Zhang, Lei and Wang, Zhangyang},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2021},
  eprint    = {2106.04533},
  archivePrefix = {arXiv}
}

@misc{li2022sait,
  title     = {SaiT: Sparse Vision Transformers through Adaptive Token Pruning},
  author    = {Li, Ling and Thorsley, David and Hassoun, Joseph},
  year      = {2022},
  eprint    = {2210.05832},
  archivePrefix = {arXiv},
  primaryClass = {cs.CV}
}"""


def load_template() -> Template:
    """The card template from the installed package (works from a wheel, a zip or an editable install)."""
    return Template(files(__package__).joinpath(TEMPLATE_NAME).read_text(encoding="utf-8"))


def build_model_card(
    config: TriLevelViTConfig,
    metrics: dict[str, float],
    *,
    model_name: str,
    dataset: str | None = None,
    dataset_name: str | None = None,
    dataset_split: str = "validation",
    dataset_config: str | None = None,
    finetuned_from: str | None = None,
    training: dict | None = None,
    model_id: str | None = None,
    license: str = DEFAULT_LICENSE,
    language: str | list[str] | None = None,
    tags: list[str] | None = None,
    num_parameters: int | None = None,
) -> ModelCard:
    """Render the model card of a TriLevel checkpoint.

    Args:
        config: the checkpoint's config; its keep rates are the setting the card describes.
        metrics: measured numbers, with or without Trainer's `eval_` prefix: `accuracy` (a fraction in [0, 1]),
            `top5_accuracy`, `train_runtime` (seconds), `epoch`, `example_fraction_seen` (in (0, 1]),
            `measured_speedup` (inference speedup over dense, from `hf-trilevel bench inference`) with an optional
            `measured_speedup_setup` string (device, batch size). Absent numbers are left out of the card.
        model_name: the card's title and its `model-index` name.
        dataset: Hub id (or loader name, e.g. `imagefolder`) of the data the accuracy was measured on; it becomes the
            `datasets` metadata and the `model-index` dataset. Without it the accuracy is recorded against a
            `custom` data set and `datasets` is left out, so the card links nowhere it should not.
        dataset_name: readable name of that data set (default: `dataset`).
        dataset_split: the split the accuracy was measured on.
        dataset_config: the data set's configuration name, if it has several.
        finetuned_from: Hub id of the starting checkpoint (`base_model` metadata), if any.
        training: hyperparameters to show, keys from `TRAINING_FIELDS`; `example_pruning` is the policy's
            `config()` dict (`{"policy": "forgetting", "keep_fraction": 0.8, ...}`), `keep_rate_schedule` a dict of
            the `KeepRateScheduleCallback` settings.
        model_id: what the usage snippet loads (a Hub id or a folder); default `model_name`.
        license: license identifier for the metadata.
        language, tags: extra metadata; the TriLevel tags are always added.
        num_parameters: parameter count to show, if known.

    Raises:
        ValueError: naming the argument or metric that is missing or out of range.
    """
    if not isinstance(config, TriLevelViTConfig):
        raise ValueError(f"`config` must be a TriLevelViTConfig, got {type(config).__name__}.")
    if not isinstance(model_name, str) or not model_name.strip():
        raise ValueError(f"`model_name` must be a non-empty string, got {model_name!r}.")
    measured = normalize_metrics(metrics)
    training = _check_training(training)
    dataset_name = dataset_name or dataset or "custom dataset"
    accuracy = measured.get("accuracy")

    # Top-5 is recorded only beside top-1: a card whose only result is top-5 would misstate what was measured.
    eval_results = [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=dataset or "custom",
            dataset_name=dataset_name,
            dataset_split=dataset_split,
            dataset_config=dataset_config,
            metric_type=metric_type,
            metric_name=label,
            metric_value=measured[key],
        )
        for key, metric_type, label in METRIC_TYPES
        if key in measured and accuracy is not None
    ]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license=license,
        language=language,
        tags=_card_tags(config, training, tags),
        datasets=[dataset] if dataset else None,
        metrics=["accuracy"] if accuracy is not None else None,
        base_model=finetuned_from,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    evaluation_text = f"the `{dataset_split}` split of {dataset_name}"
    body = load_template().substitute(
        card_data=card_data.to_yaml(),
        model_name=model_name,
        model_id=model_id or model_name,
        # Without `finetuned_from` the card says nothing about where training started: a local starting folder and
        # a random initialisation look alike from here.
        origin=f"Fine-tuned from [{finetuned_from}](https://huggingface.co/{finetuned_from})."
        if finetuned_from
        else "",
        prune_layers_text=_prune_layers_text(config),
        fusion_text=(
            "The dropped tokens are fused into one extra token, their attention-weighted mean (EViT-style)."
            if config.token_fusion
            else "Dropped tokens are discarded."
        ),
        example_text=_example_text(training.get("example_pruning")),
        settings_rows=_table_rows(_settings(config, num_parameters)),
        results_text=(
            f"Measured on {evaluation_text}."
            if accuracy is not None
            else "No accuracy was measured for this card (the run was not evaluated)."
        ),
        results_rows=_table_rows(_results(config, measured)),
        image_size_text="x".join(str(side) for side in _pair(config.image_size)),
        training_text=_training_text(measured, training),
        training_rows=_training_table(training),
        evaluation_text=evaluation_text,
        bibtex=BIBTEX,
    )
    return ModelCard(body)


def normalize_metrics(metrics: dict[str, object]) -> dict[str, object]:
    """Metrics without Trainer's `eval_` prefix, numbers checked: fractions in [0, 1], speedups and times > 0."""
    if not isinstance(metrics, dict):
        raise ValueError(f"`metrics` must be a dict of metric name -> number, got {type(metrics).__name__}.")
    normalized = {}
    for key, value in metrics.items():
        name = key[len("eval_") :] if key.startswith("eval_") else key
        if name == "measured_speedup_setup":
            normalized[name] = str(value)
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            continue  # strings and the like (e.g. a run name) are not measurements
        normalized[name] = float(value)
    for name in ("accuracy", "top5_accuracy"):
        if name in normalized and not 0.0 <= normalized[name] <= 1.0:
            raise ValueError(f"metric `{name}` must be a fraction in [0, 1], got {normalized[name]!r}.")
    if "example_fraction_seen" in normalized and not 0.0 < normalized["example_fraction_seen"] <= 1.0:
        raise ValueError(
            f"metric `example_fraction_seen` must be in (0, 1], got {normalized['example_fraction_seen']}."
        )
    for name in ("measured_speedup", "train_runtime"):
        if name in normalized and not normalized[name] > 0:
            raise ValueError(f"metric `{name}` must be > 0, got {normalized[name]!r}.")
    return normalized


def _check_training(training: dict | None) -> dict:
    if training is None:
        return {}
    if not isinstance(training, dict):
        raise ValueError(f"`training` must be a dict or None, got {type(training).__name__}.")
    unknown = sorted(set(training) - set(TRAINING_FIELDS))
    if unknown:
        raise ValueError(f"`training` has unknown keys {unknown}; allowed keys: {sorted(TRAINING_FIELDS)}.")
    pruning = training.get("example_pruning")
    if pruning is not None and not (isinstance(pruning, dict) and isinstance(pruning.get("policy"), str)):
        raise ValueError(
            "`training['example_pruning']` must be a policy's config() dict with a 'policy' name, "
            f"e.g. {{'policy': 'forgetting', 'keep_fraction': 0.8}}; got {pruning!r}."
        )
    return {key: value for key, value in training.items() if value is not None}


def _card_tags(config: TriLevelViTConfig, training: dict, extra: list[str] | str | None) -> list[str]:
    """Our tags first (they make the card findable), then the caller's, without duplicates."""
    tags = list(BASE_TAGS)
    if config.attention_keep_rate < 1.0:
        tags.append("sparse-attention")
    pruning = training.get("example_pruning")
    if pruning is not None and pruning["policy"] != "none":
        tags.append("data-pruning")
    extra = [extra] if isinstance(extra, str) else list(extra or [])
    return list(dict.fromkeys(tags + extra))


def _pair(value: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _prune_layers_text(config: TriLevelViTConfig) -> str:
    layers = config.token_prune_layers
    if not layers:
        return f"none of the {config.num_hidden_layers} layers: this checkpoint has no pruning layers"
    return f"layers {', '.join(map(str, layers))} (0-indexed) of {config.num_hidden_layers}"


def _example_text(pruning: dict | None) -> str:
    if pruning is None or pruning["policy"] == "none":
        return "This checkpoint was trained on all its examples in every epoch."
    return f"This checkpoint was trained with {_describe_policy(pruning)}."


def _describe_policy(pruning: dict) -> str:
    settings = ", ".join(f"{key}={value}" for key, value in pruning.items() if key != "policy")
    return f"the `{pruning['policy']}` policy" + (f" ({settings})" if settings else "")


def _settings(config: TriLevelViTConfig, num_parameters: int | None) -> list[tuple[str, str]]:
    patches = num_patches(config)
    rows = [
        ("`token_keep_rate`", str(float(config.token_keep_rate))),
        ("`token_prune_layers`", str(list(config.token_prune_layers))),
        ("`token_fusion`", str(bool(config.token_fusion))),
        (
            "`attention_keep_rate`",
            str(float(config.attention_keep_rate)) + (" (dense)" if config.attention_keep_rate >= 1 else ""),
        ),
        ("patch tokens kept after each pruning layer", _token_schedule_text(config, patches)),
        (
            "architecture",
            f"{config.num_hidden_layers} layers, hidden size {config.hidden_size}, "
            f"{config.num_attention_heads} heads, MLP {config.intermediate_size}",
        ),
        (
            "input",
            f"{'x'.join(map(str, _pair(config.image_size)))} px, {config.num_channels} channels, "
            f"{'x'.join(map(str, _pair(config.patch_size)))} patches ({patches} tokens + class token)",
        ),
        ("classes", str(config.num_labels)),
    ]
    if num_parameters is not None:
        rows.append(("parameters", f"{num_parameters:,}"))
    return rows


def _token_schedule_text(config: TriLevelViTConfig, patches: int) -> str:
    kept, counts = patches, []
    for _ in config.token_prune_layers:
        kept = num_kept_tokens(kept, config.token_keep_rate)
        counts.append(str(kept))
    return f"{' → '.join(counts)} of {patches}" if counts else f"all {patches}"


def _results(config: TriLevelViTConfig, metrics: dict) -> list[tuple[str, str]]:
    rows = []
    if "accuracy" in metrics:
        rows.append(("top-1 accuracy", f"{100 * metrics['accuracy']:.2f}%"))
    if "top5_accuracy" in metrics:
        rows.append(("top-5 accuracy", f"{100 * metrics['top5_accuracy']:.2f}%"))
    dense = config.to_dict()
    dense.update(token_keep_rate=1.0, attention_keep_rate=1.0)
    rows += [
        ("forward FLOPs per image (this setting)", _format_flops(forward_flops(config))),
        ("forward FLOPs per image, dense (keep rates 1.0)", _format_flops(forward_flops(TriLevelViTConfig(**dense)))),
        ("FLOPs speedup limit", f"{flops_speedup_limit(config):.2f}x"),
    ]
    if "measured_speedup" in metrics:
        setup = metrics.get("measured_speedup_setup")
        rows.append(
            (
                "measured inference speedup over dense",
                f"{metrics['measured_speedup']:.2f}x" + (f" ({setup})" if setup else ""),
            )
        )
    else:
        rows.append(
            ("measured inference speedup over dense", "not measured for this card (`hf-trilevel bench inference`)")
        )
    if "train_runtime" in metrics:
        rows.append(("training time", _format_duration(metrics["train_runtime"])))
    if "example_fraction_seen" in metrics:
        rows.append(
            ("training examples seen (share of epochs x data)", f"{100 * metrics['example_fraction_seen']:.1f}%")
        )
    return rows


def _training_text(metrics: dict, training: dict) -> str:
    parts = []
    if "epoch" in metrics or "num_train_epochs" in training:
        epochs = metrics.get("epoch", training.get("num_train_epochs"))
        parts.append(f"Trained for {epochs:g} epochs with `hf_trilevel.TriLevelTrainer` (a `transformers.Trainer`).")
    else:
        parts.append("Trained with `hf_trilevel.TriLevelTrainer` (a `transformers.Trainer`).")
    if "train_runtime" in metrics:
        parts.append(f"Training took {_format_duration(metrics['train_runtime'])}.")
    pruning = training.get("example_pruning")
    if pruning is not None and pruning["policy"] != "none":
        seen = metrics.get("example_fraction_seen")
        seen_text = f", which served {100 * seen:.1f}% of the examples over the run" if seen is not None else ""
        parts.append(f"Example pruning used {_describe_policy(pruning)}{seen_text}.")
    return " ".join(parts)


def _training_table(training: dict) -> str:
    rows = []
    for key, label in TRAINING_FIELDS.items():
        if key not in training:
            continue
        value = training[key]
        if key == "example_pruning":
            value = _describe_policy(value)
        elif isinstance(value, dict):
            value = ", ".join(f"{name}={setting}" for name, setting in value.items())
        rows.append((label, str(value)))
    if not rows:
        return ""
    return "| hyperparameter | value |\n|---|---|\n" + _table_rows(rows)


def _table_rows(rows: list[tuple[str, str]]) -> str:
    return "\n".join(f"| {name} | {value.replace('|', '/')} |" for name, value in rows)


def _format_flops(flops: int) -> str:
    for unit, scale in (("GFLOPs", 1e9), ("MFLOPs", 1e6), ("kFLOPs", 1e3)):
        if flops >= scale:
            return f"{flops / scale:.2f} {unit}"
    return f"{flops} FLOPs"


def _format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def read_result_files(folder: str | Path) -> dict[str, object]:
    """Merge `all_results.json`, `train_results.json` and `eval_results.json` of a saved folder (later files win)."""
    merged: dict[str, object] = {}
    for name in RESULT_FILES:
        path = Path(folder) / name
        if path.is_file():
            merged.update(json.loads(path.read_text(encoding="utf-8")))
    return merged


def trainer_model_card(
    trainer,
    *,
    language: str | list[str] | None = None,
    license: str | None = None,
    tags: str | list[str] | None = None,
    model_name: str | None = None,
    finetuned_from: str | None = None,
    dataset_tags: str | list[str] | None = None,
    dataset: str | list[str] | None = None,
    dataset_args: str | list[str] | None = None,
) -> ModelCard:
    """The card of the model a `TriLevelTrainer` trained, from what the trainer knows (see `create_model_card`).

    Metrics: the `*_results.json` files in `args.output_dir`, overridden by this run's log history (its last training
    summary and its last evaluation), so a stale file from an earlier run in the same folder never wins. The example
    fraction comes from the pruner's planned epoch sizes; hyperparameters from `args` and the callbacks.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    metrics = {**read_result_files(trainer.args.output_dir), **_log_history_metrics(trainer.state.log_history)}
    pruner = trainer.example_pruner
    if pruner is not None and pruner.sizes and pruner.statistics is not None:
        metrics["example_fraction_seen"] = sum(pruner.sizes) / (len(pruner.sizes) * pruner.num_examples)

    dataset_id, dataset_name, dataset_config = _trainer_dataset(trainer, dataset_tags, dataset, dataset_args)
    name_or_path = getattr(model.config, "_name_or_path", "") or ""
    if finetuned_from is None and name_or_path and not Path(name_or_path).exists():
        finetuned_from = name_or_path
    model_name = model_name or Path(trainer.args.output_dir).resolve().name
    return build_model_card(
        model.config,
        metrics,
        model_name=model_name,
        model_id=getattr(trainer, "hub_model_id", None) or trainer.args.hub_model_id or model_name,
        dataset=dataset_id,
        dataset_name=dataset_name,
        dataset_config=dataset_config,
        finetuned_from=finetuned_from,
        training=_trainer_training(trainer),
        license=license or DEFAULT_LICENSE,
        language=language,
        tags=[tags] if isinstance(tags, str) else tags,
        num_parameters=model.num_parameters(),
    )


def _log_history_metrics(log_history: list[dict]) -> dict:
    """The last training summary (it holds `train_runtime`) and the last evaluation of the log history."""
    metrics: dict = {}
    for kind in ("train_runtime", "eval_accuracy"):
        entries = [entry for entry in log_history if kind in entry]
        if entries:
            metrics.update(entries[-1])
    return metrics


def _first(value: str | list[str] | None) -> str | None:
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value


def _trainer_dataset(trainer, dataset_tags, dataset, dataset_args) -> tuple[str | None, str | None, str | None]:
    """Hub id, readable name and config of the evaluation data.

    As in transformers, `dataset_tags` are Hub ids and `dataset` readable names; a name alone links to no Hub data
    set. Without either, a `datasets` builder name (e.g. `imagefolder`, or a Hub data set's) is used if there is one.
    """
    dataset_id, dataset_name, dataset_config = _first(dataset_tags), _first(dataset), _first(dataset_args)
    if dataset_id is None and dataset_name is None:
        one = trainer.eval_dataset if trainer.eval_dataset is not None else trainer.train_dataset
        builder = getattr(one, "builder_name", None)
        if builder and builder not in GENERIC_BUILDERS:
            dataset_id, dataset_config = builder, dataset_config or getattr(one, "config_name", None)
    return dataset_id, dataset_name, dataset_config


def _trainer_training(trainer) -> dict:
    """The hyperparameters shown in the card, from the trainer's arguments and its TriLevel callbacks."""
    args, config = trainer.args, trainer.accelerator.unwrap_model(trainer.model).config
    training = {
        "num_train_epochs": args.num_train_epochs if args.max_steps is None or args.max_steps <= 0 else None,
        "total_train_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "learning_rate": args.learning_rate,
        "lr_scheduler_type": getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type),
        "weight_decay": args.weight_decay,
        "seed": args.seed,
    }
    if trainer.train_dataset is not None and hasattr(trainer.train_dataset, "__len__"):
        training["num_train_examples"] = len(trainer.train_dataset)
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, ExamplePruningCallback):
            training["example_pruning"] = callback.policy.config()
        elif isinstance(callback, KeepRateScheduleCallback):
            training["keep_rate_schedule"] = {
                "target_token_keep_rate": callback.target_token_keep_rate or config.token_keep_rate,
                "warmup_fraction": round(callback.warmup_fraction, 4),
                "decay_fraction": round(callback.decay_fraction, 4),
            }
    return training


def write_model_card(
    folder: str | Path, *, model_name: str | None = None, output: str | Path | None = None, **kwargs
) -> Path:
    """Write the card of a saved TriLevel folder from its `config.json`, `*_results.json` and `training_args.json`.

    `kwargs` go to `build_model_card` (e.g. `dataset=`, `training=`); `model_name` defaults to the folder's name and
    `output` to `README.md` inside the folder. Returns the card's path.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"`folder` must be a saved TriLevel checkpoint folder with a config.json, got {folder}.")
    config = TriLevelViTConfig.from_pretrained(folder)
    kwargs.setdefault("training", _training_from_arguments_file(folder / TRAINING_ARGS_JSON))
    card = build_model_card(config, read_result_files(folder), model_name=model_name or folder.resolve().name, **kwargs)
    path = Path(output) if output is not None else folder / "README.md"
    card.save(path)
    return path


def _training_from_arguments_file(path: Path) -> dict | None:
    """Hyperparameters from a `training_args.json` (`TrainingArguments.to_json_string()`), if the folder has one.

    The batch size is left out: the file holds the per-device size, and the number of processes is not recorded.
    """
    if not path.is_file():
        return None
    arguments = json.loads(path.read_text(encoding="utf-8"))
    keys = ("num_train_epochs", "learning_rate", "lr_scheduler_type", "weight_decay", "seed")
    return {key: arguments[key] for key in keys if key in arguments}


def main(argv: list[str] | None = None) -> int:
    """`python -m hf_trilevel.model_card FOLDER [--dataset ID]`: write the card of an existing saved folder."""
    parser = argparse.ArgumentParser(description=main.__doc__.split(": ", 1)[1])
    parser.add_argument("folder", help="saved checkpoint folder (config.json, *_results.json, training_args.json)")
    parser.add_argument("--output", help="where to write the card; default: FOLDER/README.md")
    parser.add_argument("--model-name", help="card title; default: the folder's name")
    parser.add_argument("--model-id", help="Hub id the usage snippet loads; default: the model name")
    parser.add_argument("--dataset", help="Hub id or loader name of the evaluation data")
    parser.add_argument("--dataset-name", help="readable name of the evaluation data")
    parser.add_argument("--license", default=DEFAULT_LICENSE)
    args = parser.parse_args(argv)
    try:
        path = write_model_card(
            args.folder,
            output=args.output,
            model_name=args.model_name,
            model_id=args.model_id,
            dataset=args.dataset,
            dataset_name=args.dataset_name,
            license=args.license,
        )
    except ValueError as error:
        parser.error(str(error))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
