"""Model cards (`README.md`) for TriLevel checkpoints: Hub metadata, the method, measured results, usage, citations.

The card is rendered from one template, `hf_trilevel/model_card/template.md`, shipped inside the package so that an
installed (non-editable) hf-trilevel renders cards too. It is a `string.Template` (`${name}` placeholders): BibTeX and
code keep their braces, and every variable part is built in `sections.py` (each technique's own text in its folder's
`card.py`, found through `techniques.py`), in Python, where it is tested.

Two layers, so that a card never depends on how a run was driven:
- `build_model_card(config, metrics, training=..., dataset=...)` renders from plain data only.
- `trainer_model_card(trainer)` collects that plain data from what a `TriLevelTrainer` exposes publicly (its
  arguments, log history, datasets, `technique_settings()` and `technique_metrics()`). Pass it to the trainer as
  `TriLevelTrainer(card_writer=trainer_model_card)`, and `create_model_card` (so `push_to_hub` too) writes it; the
  trainer itself imports no card code.
A folder saved earlier gets its card from `write_model_card` (`folder.py`, also `hf-trilevel card FOLDER`). Every
TriLevel family gets the same card; its family's parts (title, code files, class, prefix tokens) come from
`family_text.family_text`.
"""

import math
import numbers
from importlib.resources import files
from pathlib import Path
from string import Template

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..example_pruning.card import method_text as example_text
from ..modeling import family_of_config
from ..modeling.configuration_trilevel_vit import TriLevelViTConfig
from ..modeling.value_checks import check_fraction, check_number
from ..token_training.card import DENSE_SPARSE_TAG, operating_points_text, trained_keep_rates
from ..token_training.operating_points import checked_report, read_operating_points_report
from ..weight_sparsity.card import count_nonzero_weights, model_nonzero_weights, saved_nonzero_weights
from .family_text import code_files_text, family_text, kept_rows_text
from .sections import (
    TRAINING_FIELDS,
    fusion_text,
    merging_text,
    prune_layers_text,
    results_rows,
    results_text,
    selector_name,
    settings_rows,
    size_text,
    token_method_text,
    training_table,
    training_text,
    usage_text,
)
from .sources import dataset_info, log_history_metrics, read_result_files, training_from_arguments
from .techniques import technique_tags

TEMPLATE_NAME = "template.md"
BASE_TAGS = ("trilevel-vit", "vision", "image-classification", "vision-transformer", "token-pruning")
DEFAULT_LICENSE = "apache-2.0"
MERGING_TAG = "token-merging"
SELECTOR_TAGS = {"learned": ["learned-token-selection"], "adaptive": ["adaptive-token-pruning"]}
METRIC_TYPES = (("accuracy", "accuracy", "Top-1 accuracy"), ("top5_accuracy", "top_5_accuracy", "Top-5 accuracy"))


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
    operating_points: dict | list[dict] | None = None,
    nonzero_weights: tuple[int, int] | None = None,
) -> ModelCard:
    """Render the model card of a TriLevel checkpoint from plain data.

    Args:
        config: the checkpoint's config, of any registered TriLevel family (`hf_trilevel.modeling.FAMILY_CLASSES`:
            the card names the family, the class its usage snippet loads and the tokens before the patches); its keep
            rates are the setting the card describes.
        metrics: measured numbers, with or without Trainer's `eval_` prefix: `accuracy` (a fraction in [0, 1]),
            `top5_accuracy`, `train_runtime` (seconds), `epoch`, `example_fraction_seen` (in (0, 1]),
            `measured_speedup` (inference speedup over dense, from `hf-trilevel bench inference`) with an optional
            `measured_speedup_setup` string (device, batch size); for selectors whose counts differ per image
            (`"adaptive"`), `kept_tokens_layer_<i>` (mean patch tokens kept after pruning layer `i`),
            `measured_gflops_per_image` and `measured_flops_speedup_limit`, as
            `hf_trilevel.evaluation.token_counts.kept_token_metrics` writes them. Absent numbers are left out of the
            card.
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
            the `KeepRateSchedule` settings.
        model_id: what the usage snippet loads (a Hub id or a folder); default `model_name`.
        license: license identifier for the metadata.
        language, tags: extra metadata; the TriLevel tags are always added.
        num_parameters: parameter count to show, if known.
        operating_points: the operating-point report of the checkpoint (`operating_points.json`, as
            `hf_trilevel.token_training.operating_points.read_operating_points_report` returns it: `points`,
            `environment`,
            `batch_size`, ...; a bare list of points is accepted, shown without its setup). It becomes the
            "Operating points" section; a dense/sparse checkpoint without one gets the rates it was trained for.
        nonzero_weights: `(non-zero, total)` entries of the weight matrices sparse training masks
            (`model_nonzero_weights(model)`); when some are zero the settings show the share that is not.

    Raises:
        ValueError: naming the argument or metric that is missing or out of range.
    """
    if not isinstance(config, TriLevelViTConfig):
        raise ValueError(f"`config` must be a TriLevelViTConfig, got {type(config).__name__}.")
    family, text = family_of_config(config), family_text(config)
    if not isinstance(model_name, str) or not model_name.strip():
        raise ValueError(f"`model_name` must be a non-empty string, got {model_name!r}.")
    measured = normalize_metrics(metrics)
    training = check_training(training)
    nonzero_weights = check_nonzero_weights(nonzero_weights)
    report = None if operating_points is None else checked_report(operating_points, "operating_points")
    dataset_name = dataset_name or dataset or "custom dataset"
    evaluation_text = f"the `{dataset_split}` split of {dataset_name}"
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license=license,
        language=language,
        tags=card_tags(config, training, tags),
        datasets=[dataset] if dataset else None,
        metrics=["accuracy"] if "accuracy" in measured else None,
        base_model=finetuned_from,
        model_name=model_name,
        eval_results=_eval_results(measured, dataset, dataset_name, dataset_split, dataset_config),
    )
    # Without `finetuned_from` the card says nothing about where training started: a local starting folder and a
    # random initialisation look alike from here.
    origin = f"Fine-tuned from [{finetuned_from}](https://huggingface.co/{finetuned_from})." if finetuned_from else ""
    body = load_template().substitute(
        card_data=card_data.to_yaml(),
        model_name=model_name,
        model_id=model_id or model_name,
        family_title=text.title,
        family_description=text.description,
        code_files_text=code_files_text(config),
        classifier_class=family.classifier_class.__name__,
        kept_rows_text=kept_rows_text(config),
        origin=origin,
        prune_layers_text=prune_layers_text(config),
        token_method_text=token_method_text(config, training),
        fusion_text=fusion_text(config),
        example_text=example_text(training.get("example_pruning")),
        merging_text=merging_text(config),
        settings_rows=settings_rows(config, num_parameters, nonzero_weights),
        results_text=results_text("accuracy" in measured, evaluation_text),
        results_rows=results_rows(config, measured),
        operating_points_section=operating_points_text(config, report),
        image_size_text=size_text(config.image_size),
        training_text=training_text(measured, training),
        training_rows=training_table(training),
        usage_text=usage_text(config, model_id or model_name),
        evaluation_text=evaluation_text,
    )
    return ModelCard(body)


def _eval_results(
    metrics: dict, dataset: str | None, dataset_name: str, split: str, dataset_config: str | None
) -> list[EvalResult] | None:
    """`model-index` entries. Top-5 is recorded only beside top-1: a card whose only result is top-5 would misstate
    what was measured."""
    if "accuracy" not in metrics:
        return None
    return [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=dataset or "custom",
            dataset_name=dataset_name,
            dataset_split=split,
            dataset_config=dataset_config,
            metric_type=metric_type,
            metric_name=label,
            metric_value=metrics[key],
        )
        for key, metric_type, label in METRIC_TYPES
        if key in metrics
    ]


def normalize_metrics(metrics: dict[str, object]) -> dict[str, object]:
    """Metrics without Trainer's `eval_` prefix, numbers checked: fractions in [0, 1], speedups and times > 0."""
    if not isinstance(metrics, dict):
        raise ValueError(f"`metrics` must be a dict of metric name -> number, got {type(metrics).__name__}.")
    normalized = {}
    for key, value in metrics.items():
        name = key.removeprefix("eval_")
        if name == "measured_speedup_setup":
            normalized[name] = str(value)
        elif not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value):
            normalized[name] = float(value)  # strings and the like (e.g. a run name) are not measurements
    for name in ("accuracy", "top5_accuracy"):
        if name in normalized:
            check_number(name, normalized[name], 0.0, 1.0, low_open=False, hint="a fraction, not a percentage")
    if "example_fraction_seen" in normalized:
        check_fraction("example_fraction_seen", normalized["example_fraction_seen"])
    for name in ("measured_speedup", "train_runtime"):
        if name in normalized:
            check_number(name, normalized[name], 0.0, math.inf, high_open=True)
    return normalized


def check_training(training: dict | None) -> dict:
    """The `training` dict without None values, refused when it has unknown keys or a malformed pruning entry."""
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


def check_nonzero_weights(nonzero_weights: object) -> tuple[int, int] | None:
    """`(non-zero, total)` as two ints with 0 <= non-zero <= total and total >= 1, or None."""
    if nonzero_weights is None:
        return None
    valid = isinstance(nonzero_weights, (tuple, list)) and len(nonzero_weights) == 2
    valid = valid and all(isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in nonzero_weights)
    if not valid or not 0 <= nonzero_weights[0] <= nonzero_weights[1] or nonzero_weights[1] < 1:
        raise ValueError(
            "`nonzero_weights` must be (non-zero, total) integers with 0 <= non-zero <= total and total >= 1 "
            f"(`model_nonzero_weights(model)`), got {nonzero_weights!r}."
        )
    return int(nonzero_weights[0]), int(nonzero_weights[1])


def card_tags(config: TriLevelViTConfig, training: dict, extra: list[str] | str | None) -> list[str]:
    """Our tags first (they make the card findable), then the caller's, without duplicates."""
    tags = list(BASE_TAGS)
    if config.attention_keep_rate < 1.0:
        tags.append("sparse-attention")
    tags += SELECTOR_TAGS.get(selector_name(config), [])
    if config.merges_tokens():
        tags.append(MERGING_TAG)
    if trained_keep_rates(config):
        tags.append(DENSE_SPARSE_TAG)
    tags += technique_tags(training)
    extra = [extra] if isinstance(extra, str) else list(extra or [])
    return list(dict.fromkeys(tags + extra))


# -- the card of a live run ------------------------------------------------------------------------------------------


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
    """The card of the model a `TriLevelTrainer` trained, from what the trainer exposes (see `create_model_card`).

    The operating-point table comes from `args.output_dir/operating_points.json` when the run wrote one
    (`hf_trilevel.token_training.operating_points.write_operating_points`).

    Metrics: the `*_results.json` files in `args.output_dir`, overridden by this run's log history (its last training
    summary and its last evaluation), so a stale file from an earlier run in the same folder never wins; the share of
    examples trained from `trainer.technique_metrics()`. Hyperparameters: `args.to_dict()`, the training set's
    size and `trainer.technique_settings()` (techniques whose name has a label in `TRAINING_FIELDS`). The share of
    non-zero weights is counted on the model itself (`model_nonzero_weights`).
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    args = trainer.args
    metrics = {**read_result_files(args.output_dir), **log_history_metrics(trainer.state.log_history)}
    seen = trainer.technique_metrics().get("example_fraction_seen")
    if seen is not None:
        metrics["example_fraction_seen"] = seen
    training = training_from_arguments(args.to_dict(), world_size=args.world_size)
    if trainer.train_dataset is not None and hasattr(trainer.train_dataset, "__len__"):
        training["num_train_examples"] = len(trainer.train_dataset)
    techniques = trainer.technique_settings()
    training |= {name: settings for name, settings in techniques.items() if name in TRAINING_FIELDS}

    dataset_id, dataset_name, dataset_config = dataset_info(
        [trainer.eval_dataset, trainer.train_dataset], dataset_tags, dataset, dataset_args
    )
    name_or_path = model.config.name_or_path or ""
    if finetuned_from is None and name_or_path and not Path(name_or_path).exists():
        finetuned_from = name_or_path  # a Hub id; a local starting folder means nothing to a card's reader
    model_name = model_name or Path(args.output_dir).resolve().name
    return build_model_card(
        model.config,
        metrics,
        model_name=model_name,
        model_id=getattr(trainer, "hub_model_id", None) or args.hub_model_id or model_name,
        dataset=dataset_id,
        dataset_name=dataset_name,
        dataset_config=dataset_config,
        finetuned_from=finetuned_from,
        training=training,
        license=license or DEFAULT_LICENSE,
        language=language,
        tags=[tags] if isinstance(tags, str) else tags,
        num_parameters=model.num_parameters(),
        operating_points=read_operating_points_report(args.output_dir),
        nonzero_weights=model_nonzero_weights(model),
    )


__all__ = [
    "DEFAULT_LICENSE",
    "DENSE_SPARSE_TAG",
    "TEMPLATE_NAME",
    "TRAINING_FIELDS",
    "build_model_card",
    "count_nonzero_weights",
    "model_nonzero_weights",
    "normalize_metrics",
    "read_result_files",
    "saved_nonzero_weights",
    "trainer_model_card",
    "training_from_arguments",
]
