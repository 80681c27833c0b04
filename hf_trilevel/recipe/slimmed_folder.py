"""A saved TriLevel folder with its pruned heads and MLP neurons removed: `hf-trilevel slim`, and the slimmed copy a
structured run saves (`--slim_output_dir`).

The model is loaded from IN_DIR (the class of its family, `hf_trilevel.modeling.FAMILY_CLASSES`, that its
`config.json` names: the classifier, or the family's base model), slimmed with `hf_trilevel.slim` (pruned units
are the all-zero ones, see `hf_trilevel/weight_sparsity/slimming.py`) and saved to OUT_DIR as any TriLevel checkpoint
is (safetensors, config with per-layer sizes, the remote code), with IN_DIR's image processor and a new model card.
The slimmed model computes the masked one's logits, so IN_DIR's result files (`*_results.json`, less their FLOPs
figures, which the masked full-width model measured) and training arguments are copied too and its card reports the
run's accuracy; `operating_points.json` is not (speeds differ). Copies of those files left in OUT_DIR by an earlier
slimming are removed first, so the card never reads a stale one. IN_DIR is only read.
"""

import json
import shutil
from pathlib import Path

from huggingface_hub.errors import StrictDataclassError
from torch import nn

from .. import modeling
from ..model_card.folder import write_model_card
from ..model_card.sources import RESULT_FILES
from ..modeling import FAMILY_CLASSES, FamilyClasses
from ..modeling.configuration_trilevel_vit import TriLevelViTConfig
from ..token_training.operating_points import OPERATING_POINTS_FILE
from ..training.trainer import TRAINING_ARGS_JSON
from ..training.weight_files import read_trilevel_config
from ..weight_sparsity.slimming import slim, structured_unit_masks
from .weight_checks import check_checkpoint_weights

# The model types a structured run slims itself (`--slim_output_dir`): TriLevel ViT folders only so far (the example's
# guard); `hf-trilevel slim` and `slim_folder` take every family's folder.
SLIMMED_MODEL_TYPES = (TriLevelViTConfig.model_type,)
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
# What slimming leaves true: the processor's preprocessing, and (same logits) the run's results and arguments.
COPIED_FILES = (IMAGE_PROCESSOR_FILE, *RESULT_FILES, TRAINING_ARGS_JSON)


def slim_folder(
    in_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False, card_kwargs: dict | None = None
) -> str:
    """Slim the model saved in `in_dir` into `out_dir` (weights, config, remote code, image processor, results, card;
    `card_kwargs` go to `write_model_card`, e.g. `dataset_name`); return the per-layer summary. Bad input raises
    `ValueError` naming IN_DIR or OUT_DIR."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    family, model_class = _model_class(in_dir)
    _check_output(in_dir, out_dir, overwrite)
    _check_weights(in_dir, family)
    try:
        model = model_class.from_pretrained(in_dir)
        slimmed = slim(model)
    except (ValueError, OSError) as error:  # no structured masks, an emptied layer, unreadable weights
        raise ValueError(f"IN_DIR {in_dir}: {error}") from None

    for name in (*COPIED_FILES, OPERATING_POINTS_FILE):
        (out_dir / name).unlink(missing_ok=True)
    slimmed.save_pretrained(out_dir)
    for name in COPIED_FILES:
        if not (in_dir / name).is_file():
            continue
        if name in RESULT_FILES:
            results = json.loads((in_dir / name).read_text(encoding="utf-8"))
            kept = {key: value for key, value in results.items() if "flops" not in key}
            (out_dir / name).write_text(json.dumps(kept, indent=4, sort_keys=True) + "\n", encoding="utf-8")
        else:
            shutil.copy2(in_dir / name, out_dir / name)
    card = write_model_card(out_dir, **(card_kwargs or {}))
    return f"{_summary(model, slimmed)}\nwrote {out_dir} (model card {card})"


def _model_class(in_dir: Path) -> tuple[FamilyClasses, type[nn.Module]]:
    """IN_DIR's family and the class it was saved from: the family's class its `architectures` names (a base model
    stays a base model), else the family's classifier. Refuses a folder without a TriLevel `config.json`."""
    config_file = in_dir / "config.json"
    if not config_file.is_file():
        raise ValueError(f"IN_DIR must be a saved TriLevel checkpoint folder with a config.json, got {in_dir}.")
    config = read_trilevel_config(config_file, "IN_DIR", in_dir, model_types=FAMILY_CLASSES)
    family = FAMILY_CLASSES[config["model_type"]]
    for name in config.get("architectures") or []:
        named = getattr(modeling, name, None)
        if isinstance(named, type) and getattr(named, "config_class", None) is family.config_class:
            return family, named
    return family, family.classifier_class


def _check_weights(in_dir: Path, family: FamilyClasses) -> None:
    """IN_DIR's weight files must read whole and fit the model its config.json describes (headers only)."""
    try:
        config = family.config_class.from_pretrained(in_dir)
        config.check_trilevel_fields()
    except (StrictDataclassError, ValueError, OSError) as error:
        raise ValueError(f"IN_DIR {in_dir}: {error}") from None
    check_checkpoint_weights(str(in_dir), config, argument="IN_DIR")


def _check_output(in_dir: Path, out_dir: Path, overwrite: bool) -> None:
    if out_dir.resolve() == in_dir.resolve():
        raise ValueError(f"OUT_DIR must differ from IN_DIR ({in_dir}): IN_DIR is only read, never replaced.")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"OUT_DIR {out_dir} is a file, not a folder.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(f"OUT_DIR {out_dir} already holds files; pass --overwrite to write into it anyway.")


def _summary(model: nn.Module, slimmed: nn.Module) -> str:
    """Heads and neurons kept per layer, then parameters before -> after."""
    head_masks, neuron_masks = structured_unit_masks(model)
    lines = ["layer  heads kept  neurons kept"]
    for index, (heads, neurons) in enumerate(zip(head_masks, neuron_masks, strict=True)):
        kept_heads, kept_neurons = f"{int(heads.sum())}/{len(heads)}", f"{int(neurons.sum())}/{len(neurons)}"
        lines.append(f"{index:>5}  {kept_heads:>10}  {kept_neurons:>12}")
    before, after = _num_parameters(model), _num_parameters(slimmed)
    lines.append(f"parameters: {before:,} -> {after:,} ({after / before:.1%})")
    return "\n".join(lines)


def _num_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


__all__ = ["SLIMMED_MODEL_TYPES", "slim_folder"]
