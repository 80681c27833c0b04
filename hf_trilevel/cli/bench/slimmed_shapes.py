"""`bench inference --head-densities / --neuron-densities`: the physically slimmed shapes to time.

A model trained with structured sparsity and slimmed (`hf_trilevel.slim`) keeps, per layer, the heads and MLP
neurons its densities left; these options name such shapes, pair them up, and give the unit counts, rounded as the
training callback rounds them (`structured_units.unit_count`), so a timed shape is one a checkpoint can have.
"""

import argparse
import math

from ...modeling.value_checks import check_fraction
from ..errors import CommandError, checked_option


def slimmed_size(density: float, size: int) -> int:
    """Heads or MLP neurons a layer of `size` keeps at `density`: `max(1, round(density * size))`, halves up.

    Rounded as structured weight sparsity counts its units (`structured_units.unit_count`: 2.5 -> 3, where Python's
    `round` would give 2), so a timed shape is the one a slimmed checkpoint trained at that density has.
    """
    return max(1, math.floor(density * size + 0.5))


def add_slimming_arguments(parser: argparse.ArgumentParser) -> None:
    pairing = (
        "The i-th head density and the i-th neuron density make one shape, so both lists have the same length, or "
        "one of them is a single value that applies to every entry of the other (an absent flag is 1). Every "
        "TriLevel setting above (keep rate x attention x fusion x selector) is timed on every shape; 1 and 1 is "
        "the full-width model, so leave it out to time slimmed shapes only. A slimmed model keeps the first heads "
        "and neurons of the dense model's weights; its FLOPs limit is against the full dense ViT."
    )
    group = parser.add_argument_group(
        "physically slimmed shapes (what `hf_trilevel.slim` makes of a model trained with structured sparsity)", pairing
    )
    group.add_argument("--head-densities", type=float, nargs="+", default=None, metavar="DENSITY",
                       help="share of attention heads every layer keeps, each in (0, 1]: "
                            "max(1, round(density * heads)) heads per layer, halves rounded up")  # fmt: skip
    group.add_argument("--neuron-densities", type=float, nargs="+", default=None, metavar="DENSITY",
                       help="share of MLP neurons every layer keeps, each in (0, 1]: "
                            "max(1, round(density * intermediate_size)) neurons per layer, halves rounded "
                            "up")  # fmt: skip


def slimmed_shapes(args: argparse.Namespace) -> list[tuple[float, float]]:
    """`(head_density, neuron_density)` pairs from `--head-densities` / `--neuron-densities`, checked and paired.

    Pairwise by position; a single value broadcasts over the other list, an absent flag is 1.0. Without either
    flag, only the full-width shape `(1.0, 1.0)`.
    """
    heads, neurons = getattr(args, "head_densities", None), getattr(args, "neuron_densities", None)
    for flag, densities in (("--head-densities", heads), ("--neuron-densities", neurons)):
        for density in densities or []:
            checked_option(check_fraction, flag, density)
    heads, neurons = heads or [1.0], neurons or [1.0]
    if len(heads) != len(neurons) and 1 not in (len(heads), len(neurons)):
        raise CommandError(
            f"--head-densities and --neuron-densities pair up by position: give both the same number of values, or "
            f"one of them a single value for every shape; got {len(heads)} and {len(neurons)} values."
        )
    count = max(len(heads), len(neurons))
    heads, neurons = heads * (count // len(heads)), neurons * (count // len(neurons))
    return list(dict.fromkeys(zip(heads, neurons, strict=True)))


__all__ = ["add_slimming_arguments", "slimmed_shapes", "slimmed_size"]
