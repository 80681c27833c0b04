"""The card of a TriLevel folder saved earlier, from the files the folder holds (`hf-trilevel card FOLDER`, and the
slimmed copy a structured run saves).

The card is built from `config.json`, the `*_results.json` files, `training_args.json` (what `TriLevelTrainer`
writes instead of a pickle) and `operating_points.json` (the operating-point table a dense/sparse run writes), through
the same plain-data renderer as a live run's card (`build_model_card`).

The config loads with the class of the folder's family (`hf_trilevel.modeling.FAMILY_CLASSES`): a TriLevel folder of
any family, or a plain transformers folder its family's config class converts (`plain_model_type`, e.g. "vit" or
"dinov2", shown as the TriLevel model it loads as). Image-text folders (CLIP's, SigLIP's) hold no classifier and are
refused by name.
"""

import json
from pathlib import Path

from ..modeling import FAMILY_CLASSES, family_of_model_type
from ..modeling.configuration_trilevel_vit import TriLevelViTConfig
from ..token_training.operating_points import read_operating_points_report
from ..training.trainer import TRAINING_ARGS_JSON
from ..weight_sparsity.card import saved_nonzero_weights
from .builder import build_model_card
from .sources import read_result_files, training_from_arguments


def write_model_card(
    folder: str | Path, *, model_name: str | None = None, output: str | Path | None = None, **kwargs
) -> Path:
    """Write the card of a saved TriLevel folder from its `config.json`, `*_results.json`, `training_args.json` and
    `operating_points.json`.

    `kwargs` go to `build_model_card` (e.g. `dataset=`, `training=`); `model_name` defaults to the folder's name and
    `output` to `README.md` inside the folder. Returns the card's path.

    Raises:
        ValueError: the folder has no `config.json`, it holds no TriLevel family's image classifier config, its
            `operating_points.json` is malformed, or a value the card needs is out of range.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"`folder` must be a saved TriLevel checkpoint folder with a config.json, got {folder}.")
    config = folder_config(folder)
    arguments_file = folder / TRAINING_ARGS_JSON
    if arguments_file.is_file():
        # The file holds the per-device batch size and not the number of processes: no total batch size.
        kwargs.setdefault("training", training_from_arguments(json.loads(arguments_file.read_text(encoding="utf-8"))))
    kwargs.setdefault("operating_points", read_operating_points_report(folder))
    kwargs.setdefault("nonzero_weights", saved_nonzero_weights(folder))
    card = build_model_card(config, read_result_files(folder), model_name=model_name or folder.resolve().name, **kwargs)
    path = Path(output) if output is not None else folder / "README.md"
    card.save(path)
    return path


def folder_config(folder: Path) -> TriLevelViTConfig:
    """The config of `folder`, loaded with its family's TriLevel config class. A model type that no family's config
    class loads as its own (an image-text model, another architecture) raises a `ValueError` naming the folder."""
    saved = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    model_type = saved.get("model_type") if isinstance(saved, dict) else None
    family = family_of_model_type(model_type)
    config_class = family.config_class if family is not None else None
    if config_class is None or model_type not in (config_class.model_type, config_class.plain_model_type):
        hint = (
            f"load it with hf_trilevel.{family.classifier_class.__name__}.from_pretrained and save it first"
            if family is not None
            else f"cards are written for the TriLevel families {', '.join(map(repr, FAMILY_CLASSES))}"
        )
        raise ValueError(f"{folder} holds a {model_type!r} model, not an image classifier's config; {hint}.")
    return config_class.from_pretrained(folder)


__all__ = ["folder_config", "write_model_card"]
