"""Distillation terms of dense/sparse training, and loading a teacher checkpoint.

Two terms teach a sparse pass (`hf_trilevel.DenseSparseTraining`):

* **logits**: `T^2 * KL(softmax(teacher / T) || softmax(student / T))` per example, Hinton's soft targets. The `T^2`
  keeps the gradient's size independent of the temperature, so a weight tuned at one temperature holds at another.
* **token importance**: how far each pruning layer's importance (what its selector ranks the patches by) is from the
  dense model's view of which patches matter, the dense pass's last-layer class-token attention. Both are turned into
  distributions over the patches the pruning layer sees (the target renormalised over them), and the term is
  `KL(target || student)`, averaged over the pruning layers. Early layers' class attention is a noisy guide to what
  the prediction will need (EViT, SaiT); this pulls it toward what the dense model's final layer reads.

Each returns one value per example, so a technique can weight it like the task loss before reducing it.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForImageClassification

from ..image_data.loading import is_missing_local_path
from ..modeling.value_checks import check_number
from ..training.weight_files import folder_weights_problem

TEACHER_FLAG = "teacher_model_name_or_path"

_UNSEEN = -1e30  # log score of a patch outside a layer's view


def logit_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """`[batch]` soft-target distillation loss `T^2 * KL(p_teacher || p_student)` at temperature `T`.

    Zero exactly when the logits agree up to a per-example constant; the teacher's side carries no gradient.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"the teacher's logits have shape {tuple(teacher_logits.shape)} but the student's "
            f"{tuple(student_logits.shape)}: the teacher must predict the same classes."
        )
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="none").sum(dim=-1) * temperature**2


def importance_distillation(student_importance: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """`[batch]` mean over pruning layers of `KL(target || student)` over the patches each layer sees.

    Args:
        student_importance: one `[batch, patches]` log importance per pruning layer, over the original patch
            positions, -inf at patches the layer does not see (`TriLevelViTModelOutput.token_importance` without
            its last entry).
        target: `[batch, patches]` log importance of the teacher view (the dense pass's last-layer class-token
            attention), -inf where it has none; it carries no gradient.
    """
    target = target.detach().float()
    terms = []
    for student in student_importance:
        student = student.float()
        seen = torch.isfinite(student) & torch.isfinite(target)
        # A very negative finite value, not -inf: an image with no patch seen by both must not turn into NaNs
        # (softmax of an all -inf row), whose gradient would poison the batch even where the term is masked out.
        log_target = F.log_softmax(target.masked_fill(~seen, _UNSEEN), dim=-1)
        log_student = F.log_softmax(student.masked_fill(~seen, _UNSEEN), dim=-1)
        pointwise = log_target.exp() * (log_target - log_student)
        kl = torch.where(seen, pointwise, torch.zeros_like(pointwise)).sum(dim=-1)
        terms.append(torch.where(seen.any(dim=-1), kl, torch.zeros_like(kl)))  # no overlap: nothing to teach
    return torch.stack(terms).mean(dim=0)


def check_temperature(temperature: float, name: str = "distillation_temperature") -> float:
    return check_number(name, temperature, 0.0, float("inf"), high_open=True)


def default_label_names(config) -> bool:
    """Whether a config's `id2label` is transformers' placeholder (`LABEL_0`, ...), which names no class."""
    return all(str(name) == f"LABEL_{index}" for index, name in sorted(config.id2label.items()))


def check_teacher_labels(teacher_config, label_names: list[str] | None, num_labels: int, source: str) -> None:
    """Refuse a teacher whose classes are not the student's: another count, or other names in another order.

    A teacher whose config carries placeholder names (`LABEL_i`) is checked by count only.
    """
    if teacher_config.num_labels != num_labels:
        raise ValueError(
            f"`teacher_model_name_or_path` {source} predicts {teacher_config.num_labels} classes but the data has "
            f"{num_labels}; distil from a teacher trained on the same label space."
        )
    if label_names is None or default_label_names(teacher_config):
        return
    teacher_names = [str(teacher_config.id2label[index]) for index in range(teacher_config.num_labels)]
    if teacher_names != [str(name) for name in label_names]:
        raise ValueError(
            f"`teacher_model_name_or_path` {source} has classes {teacher_names} but the data's are "
            f"{list(label_names)}; distil from a teacher with the same classes in the same order."
        )


def load_teacher(
    name_or_path: str,
    *,
    label_names: list[str] | None = None,
    num_labels: int | None = None,
    device: torch.device | str | None = None,
    **hub_kwargs,
) -> torch.nn.Module:
    """A frozen teacher for logit distillation: any ViT or TriLevel checkpoint folder or Hub id, in eval mode.

    Its classes are checked against the data's first (from its config alone, before the weights load). Its weights
    never require gradients, and it is not part of the student, so no optimizer ever holds state for it. A local
    path that does not exist, and a folder whose weights are cut short or corrupt (read from their headers), are
    refused with a `ValueError` naming the flag, as are weights that do not fit the teacher's config.
    """
    check_teacher_source(name_or_path)
    try:
        config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
    except (OSError, ValueError) as error:
        raise ValueError(f"`{TEACHER_FLAG}` {name_or_path!r} cannot be loaded: {error}") from None
    if num_labels is not None:
        check_teacher_labels(config, label_names, num_labels, repr(name_or_path))
    try:
        teacher = AutoModelForImageClassification.from_pretrained(name_or_path, **hub_kwargs)
    except (OSError, RuntimeError) as error:  # e.g. weights whose shapes are not the config's
        message = str(error).strip().splitlines()
        raise ValueError(f"`{TEACHER_FLAG}` {name_or_path!r}: cannot load its weights: {' '.join(message)}") from None
    return freeze(teacher, device)


def check_teacher_source(name_or_path: str) -> None:
    """Refuse a teacher path that does not exist (before the Hub client reads it as a malformed repo id) and a
    folder whose weight files are cut short or corrupt, naming the flag and the file."""
    path = Path(name_or_path).expanduser()
    # `outputs/teacher` with `outputs/` here is a local path, even though it has the form of a Hub id.
    partly_here = not path.exists() and len(path.parts) > 1 and path.parent.is_dir()
    if is_missing_local_path(name_or_path) or partly_here:
        raise ValueError(
            f"`{TEACHER_FLAG}` {name_or_path!r}: no such folder (the nearest existing one is "
            f"{str(_nearest_existing(path))!r}); give the folder of a trained model or a Hub model id."
        )
    if path.is_dir():
        problem = folder_weights_problem(path)
        if problem is not None:
            raise ValueError(f"`{TEACHER_FLAG}` {name_or_path!r}: {problem}. Save or copy the teacher again.")


def _nearest_existing(path: Path) -> Path:
    absolute = path.absolute()
    return next((folder for folder in absolute.parents if folder.exists()), absolute.anchor)


def freeze(teacher: torch.nn.Module, device: torch.device | str | None = None) -> torch.nn.Module:
    """The teacher in eval mode without gradients (on `device` if given)."""
    teacher.eval().requires_grad_(False)
    return teacher if device is None else teacher.to(device)


__all__ = [
    "check_teacher_labels",
    "check_teacher_source",
    "check_temperature",
    "freeze",
    "importance_distillation",
    "load_teacher",
    "logit_distillation",
]
