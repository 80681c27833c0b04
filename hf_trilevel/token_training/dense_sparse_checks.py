"""What dense/sparse training (`DenseSparseTraining`) refuses of a model, its teacher and token merging, before the
first step: kept apart from the technique so that the recipe's argument checks can run them without building it.
"""

import torch

from ..modeling.token_merging import check_merge_r, layer_token_counts, merge_problem
from ..modeling.value_checks import as_pair


def check_model_for_dense_sparse(
    config, keep_rates: list[float], distillation: str, argument: str = "keep_rates"
) -> None:
    """Refuse a model that dense/sparse training cannot serve as asked, before the first step; messages name the rates
    as `argument` (the flag, in a script).

    Without pruning layers every "sparse" pass would equal the dense one. The model's own `token_keep_rate` is the
    operating point evaluation, `from_pretrained` and the card use, so it must be one of the trained rates.
    Distillation needs single-label classification (`check_distillable`). Token merging is checked by
    `check_merging_for_dense_sparse`.
    """
    if not config.token_prune_layers:
        raise ValueError(
            "dense/sparse training needs pruning layers: `token_prune_layers` is empty, so every sparse pass would "
            "equal the dense one; set `token_prune_layers`."
        )
    if float(config.token_keep_rate) not in keep_rates:
        raise ValueError(
            f"the model's `token_keep_rate` ({config.token_keep_rate}, its default operating point: evaluation, "
            f"`from_pretrained` and the model card use it) is not among the trained `{argument}` {keep_rates}; set "
            "`token_keep_rate` to one of them."
        )
    check_merging_for_dense_sparse(config, keep_rates, argument)
    check_distillable(config, distillation)


def check_merging_for_dense_sparse(config, keep_rates: list[float], argument: str = "keep_rates") -> None:
    """Refuse a merging model (`token_merge_r` > 0 somewhere) that dense/sparse training would train wrongly.

    Keep rate 1.0 runs without merging (the dense model), so a merging model's own `token_keep_rate` 1.0 would be a
    default operating point no pass trains. Every layer's r must fit its tokens at the sparsest rate (`merge_problem`;
    counts grow with the rate, so r then fits at every rate, warm-up included): refused here, before the first step,
    rather than by the first sparse pass.
    """
    merge_r = check_merge_r(getattr(config, "token_merge_r", 0), config.num_hidden_layers)
    if not any(merge_r):
        return
    sparse = [rate for rate in keep_rates if rate < 1.0]
    if float(config.token_keep_rate) >= 1.0:
        raise ValueError(
            f"the model merges tokens (`token_merge_r={config.token_merge_r!r}`) at its own `token_keep_rate` 1.0, but "
            "dense/sparse training runs keep rate 1.0 as the dense model, without merging: the model's default "
            "operating point (evaluation, `from_pretrained`, the model card) would be one no pass trains. Set "
            f"`token_keep_rate` to one of the sparse `{argument}` {sparse}, or `token_merge_r=0`."
        )
    image, patch = as_pair(config.image_size), as_pair(config.patch_size)
    patches = (image[0] // patch[0]) * (image[1] // patch[1])
    sparsest = min(keep_rates)
    counts = layer_token_counts(patches, config.num_hidden_layers, config.token_prune_layers, sparsest, merge_r)
    problem = merge_problem(counts, merge_r)
    if problem is not None:
        raise ValueError(
            f"{problem} (at keep rate {sparsest:g}, the sparsest of `{argument}` {keep_rates}, with {patches} patches "
            "per image; every sparse pass merges the model's r)"
        )


def check_distillable(config, distillation: str) -> None:
    """Distillation compares class probabilities: refuse it for a multi-label or regression `problem_type`."""
    if distillation != "none" and config.problem_type not in (None, "single_label_classification"):
        raise ValueError(
            f"`distillation={distillation!r}` distils class probabilities, but the model's problem_type is "
            f"{config.problem_type!r}; use distillation='none'."
        )


def check_teacher_model(teacher: torch.nn.Module, config) -> None:
    """Refuse a teacher that cannot read the student's images or predicts other classes (from their configs)."""
    teacher_config = getattr(teacher, "config", None)
    if teacher_config is None:
        return
    if getattr(teacher_config, "num_labels", config.num_labels) != config.num_labels:
        raise ValueError(
            f"the teacher predicts {teacher_config.num_labels} classes but the model {config.num_labels}; distil "
            "from a teacher trained on the same label space."
        )
    for name, read in (("image_size", as_pair), ("num_channels", int)):
        if hasattr(teacher_config, name) and read(getattr(teacher_config, name)) != read(getattr(config, name)):
            raise ValueError(
                f"the teacher's `{name}` is {getattr(teacher_config, name)} but the model's {getattr(config, name)}: "
                "it must read the same `pixel_values`."
            )


__all__ = [
    "check_distillable",
    "check_merging_for_dense_sparse",
    "check_model_for_dense_sparse",
    "check_teacher_model",
]
