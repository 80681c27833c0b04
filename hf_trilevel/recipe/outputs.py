"""The files a run writes or removes beside the Trainer's own: a fresh run clears the earlier run's leftovers, a
dense/sparse run measures its operating-point table, a structured run saves a slimmed copy.

Each step runs on the main process while the others wait, so the ranks leave it together.
"""

import logging
from pathlib import Path

from ..token_training.operating_points import OPERATING_POINTS_FILE, operating_points_markdown, write_operating_points
from ..training.checkpoints import remove_checkpoints
from ..training.trainer import TriLevelTrainer
from .arguments import ModelArguments
from .slimmed_folder import slim_folder

logger = logging.getLogger(__name__)

# The table is measured on at most this many validation images: they are decoded and stacked in memory at once.
OPERATING_POINT_EXAMPLES = 5000


def remove_earlier_results(trainer: TriLevelTrainer, model_args: ModelArguments) -> None:
    """Before a fresh run trains into a folder it had consent to replace, delete what the earlier run left that this
    one would not overwrite: its operating-point table (which the new card would show) and its `checkpoint-*`
    folders (not one this run starts from), which `--resume_from_checkpoint latest` would otherwise continue after a
    crash of this run."""
    if trainer.is_world_process_zero():
        (Path(trainer.args.output_dir) / OPERATING_POINTS_FILE).unlink(missing_ok=True)
        sources = (model_args.model_name_or_path, model_args.config_name, model_args.image_processor_name)
        removed = remove_checkpoints(trainer.args.output_dir, keep=sources)
        if removed:
            logger.warning("removed the earlier run's %s from %s.", ", ".join(removed), trainer.args.output_dir)
    trainer.accelerator.wait_for_everyone()


def write_operating_point_table(trainer: TriLevelTrainer, validation) -> list[dict] | None:
    """After dense/sparse training: accuracy and measured images/s at every trained rate on (at most
    `OPERATING_POINT_EXAMPLES` of) the validation set, into `operating_points.json`, which the model card shows."""
    points = None
    if trainer.is_world_process_zero():
        if hasattr(validation, "select") and len(validation) > OPERATING_POINT_EXAMPLES:
            validation = validation.select(range(OPERATING_POINT_EXAMPLES))
        model = trainer.accelerator.unwrap_model(trainer.model)
        points = write_operating_points(model, validation, trainer.args.output_dir)
        print(f"\noperating points of the one checkpoint (validation set):\n{operating_points_markdown(points)}")
    trainer.accelerator.wait_for_everyone()
    return points


def save_slimmed_model(trainer: TriLevelTrainer, folder: str, card_kwargs: dict) -> None:
    """After structured training: the saved model (`output_dir`) with its pruned heads and neurons removed, saved
    into `folder` with the image processor, the run's results and a card naming the data set (`card_kwargs`:
    `dataset`, the readable name, and `dataset_tags`, a Hub id), as `hf-trilevel slim` does."""
    slim_card = {"dataset": card_kwargs.get("dataset_tags"), "dataset_name": card_kwargs["dataset"]}
    try:
        if trainer.is_world_process_zero():
            summary = slim_folder(trainer.args.output_dir, folder, overwrite=True, card_kwargs=slim_card)
            print(f"\nslimmed model (pruned heads and neurons removed, the same logits):\n{summary}")
    finally:  # the other processes must not wait for ever on a failed slimming
        trainer.accelerator.wait_for_everyone()


__all__ = ["remove_earlier_results", "save_slimmed_model", "write_operating_point_table"]
