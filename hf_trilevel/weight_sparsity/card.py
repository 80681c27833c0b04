"""The model card's weight-sparsity parts (SViTE): its hyperparameter row, training sentence and tags, from
`WeightSparsity.card_settings()`, and the share of non-zero weights a live model or a saved folder holds.

Counted over the weights sparse training masks (`masks.masked_weights`: patch projection, q/k/v/o, fc1, fc2,
classifier), so a dense checkpoint reads 100% and gets no row. A saved folder is read one tensor at a time.
"""

import re
from pathlib import Path

import torch
from safetensors import safe_open

from .masks import count_nonzero_weights, masked_weights

LABEL = "weight sparsity (SViTE: sparse training of the weights)"  # the hyperparameter table's row
TAGS = {"unstructured": ["weight-sparsity"], "structured": ["weight-sparsity", "structured-pruning"]}

# The weights `masks.masked_weights` names (patch projection, q/k/v/o, fc1, fc2, classifier) as a saved file
# holds them: under ViT's checkpoint names (`encoder.layer.{i}.attention.attention.query`, ...) or the model's own.
SAVED_MASKED_WEIGHT = re.compile(
    r"(^|\.)(patch_embeddings\.projection|attention\.[qkvo]_proj|mlp\.fc[12]|classifier"
    r"|layer\.\d+\.(attention\.attention\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
    r")\.weight$"
)


def model_nonzero_weights(model: torch.nn.Module) -> tuple[int, int]:
    """`count_nonzero_weights` over the weights weight sparsity masks in a live model."""
    return count_nonzero_weights(masked_weights(model).values())


def saved_nonzero_weights(folder: str | Path) -> tuple[int, int] | None:
    """`count_nonzero_weights` over the masked weights (`SAVED_MASKED_WEIGHT`) in the `*.safetensors` files of a saved
    folder (sharded or not), or None without any; tensors are read one at a time, never the whole model."""
    files_found = sorted(Path(folder).glob("*.safetensors"))
    if not files_found:
        return None
    nonzero = total = 0
    for path in files_found:
        with safe_open(str(path), framework="pt") as saved:
            names = [name for name in saved.keys() if SAVED_MASKED_WEIGHT.search(name)]  # noqa: SIM118
            counted = count_nonzero_weights(saved.get_tensor(name) for name in names)
        if counted is not None:
            nonzero, total = nonzero + counted[0], total + counted[1]
    return (nonzero, total) if total else None


def nonzero_weights_text(nonzero_weights: tuple[int, int]) -> str:
    """`50.0% (1,234 of 2,468 weights of the patch projection, attention q/k/v/o, MLP fc1/fc2 and classifier)`."""
    nonzero, total = nonzero_weights
    return (
        f"{100 * nonzero / total:.1f}% ({nonzero:,} of {total:,} weights of the patch projection, attention q/k/v/o, "
        "MLP fc1/fc2 and classifier)"
    )


def _percent(value: object) -> str:
    return f"{100 * value:g}%" if isinstance(value, (int, float)) else str(value)


def describe_weight_sparsity(settings: dict) -> str:
    """The hyperparameter-table cell of weight sparsity, from `WeightSparsity.card_settings()`.

    `structured, 50% of heads and 50% of MLP neurons kept per layer, prune-and-grow every 100 steps until 80% of
    training, death rate 0.5 → 0.005 (cosine)`; unstructured shows its density and pattern; keys of the other mode
    may be absent, and keys this function does not know are appended as `key=value`.
    """
    mode = settings.get("sparsity", "unstructured")
    parts = [str(mode)]
    if mode == "structured":
        kept = [
            f"{_percent(settings[key])} of {unit}"
            for key, unit in (("head_density", "heads"), ("neuron_density", "MLP neurons"))
            if key in settings
        ]
        if kept:
            parts.append(" and ".join(kept) + " kept per layer")
    else:
        if "density" in settings:
            parts.append(f"{_percent(settings['density'])} of the weights kept")
        if settings.get("pattern") not in (None, "unstructured"):
            parts.append(f"pattern {settings['pattern']}")
        if "initial_mask" in settings:
            parts.append(f"initial mask {settings['initial_mask']}")
    if settings.get("one_shot"):
        parts.append("one-shot: pruned once from a trained checkpoint by the same scores")
    else:
        schedule = []
        if "update_interval" in settings:
            schedule.append(f"prune-and-grow every {settings['update_interval']} steps")
        if "end_fraction" in settings:
            schedule.append(f"until {_percent(settings['end_fraction'])} of training")
        if schedule:
            parts.append(" ".join(schedule))
        if "death_rate" in settings:
            final = settings.get("final_death_rate")
            decay = f" → {final:g} (cosine)" if isinstance(final, (int, float)) else ""
            parts.append(f"death rate {settings['death_rate']:g}{decay}")
    known = {"sparsity", "pattern", "density", "initial_mask", "head_density", "neuron_density", "update_interval",
             "end_fraction", "death_rate", "final_death_rate", "one_shot"}  # fmt: skip
    parts += [f"{key}={value}" for key, value in settings.items() if key not in known]
    return ", ".join(parts)


def weight_sparsity_sentence(settings: dict) -> str:
    """The "Training" paragraph's sentence on weight sparsity: what the saved weights are and what they save."""
    if settings.get("sparsity") == "structured":
        return (
            "Whole attention heads and MLP neurons were trained sparse (S2ViTE); the saved weights hold the pruned "
            "units as zeros, and `hf-trilevel slim IN_DIR OUT_DIR` (or `hf_trilevel.slim(model)`) removes them for a "
            "smaller, faster model with the same outputs."
        )
    pattern = " in a 2:4 pattern" if settings.get("pattern") == "2:4" else ""
    speed = (
        "GPUs with sparse tensor cores can run 2:4 weights faster; elsewhere the zeros save no time."
        if pattern
        else "Unstructured zeros save no time with dense kernels (on CPU they save disk space at most)."
    )
    return f"The weights were trained sparse (SViTE){pattern} and are saved dense-shaped with zeros. {speed}"


def card_tags(settings: dict) -> list[str]:
    """The Hub tags of the sparsity mode (`structured` adds `structured-pruning`)."""
    return list(TAGS.get(settings.get("sparsity"), ["weight-sparsity"]))


__all__ = [
    "LABEL",
    "TAGS",
    "card_tags",
    "describe_weight_sparsity",
    "model_nonzero_weights",
    "nonzero_weights_text",
    "saved_nonzero_weights",
    "weight_sparsity_sentence",
]
