"""The card of a TriLevel folder saved earlier, from the files the folder holds (`hf-trilevel card FOLDER`, and the
slimmed copy a structured run saves).

The card is built from `config.json`, the `*_results.json` files, `training_args.json` (what `TriLevelTrainer`
writes instead of a pickle) and `operating_points.json` (the operating-point table a dense/sparse run writes), through
the same plain-data renderer as a live run's card (`build_model_card`).
"""

import json
from pathlib import Path

from ..modeling.configuration_trilevel_vit import TriLevelViTConfig
from ..token_training.operating_points import read_operating_points_report
from ..training.trainer import TRAINING_ARGS_JSON
from ..training.weight_files import FAMILY_MODEL_TYPES
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
        ValueError: the folder has no `config.json`, its `operating_points.json` is malformed, or a value the card
            needs is out of range.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"`folder` must be a saved TriLevel checkpoint folder with a config.json, got {folder}.")
    model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type in FAMILY_MODEL_TYPES:
        raise ValueError(
            f"{folder} holds a {model_type!r} model: model cards are written for TriLevel ViT folders only so far."
        )
    config = TriLevelViTConfig.from_pretrained(folder)
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


__all__ = ["write_model_card"]
