"""Token counts a benchmark's models keep on its batch, and adaptive masses calibrated to a fixed-rate token budget.

Why calibrate: the adaptive selector's `token_keep_mass` sets a share of importance, not a token count, so an
adaptive row and a fixed-rate row at the same `token_keep_rate` keep different numbers of tokens and their times do
not compare. `--match-fixed-rate` finds, by bisection on the benchmark batch itself, the mass at which the adaptive
model keeps on average as many patch tokens after the last pruning layer as fixed-rate pruning does; the two rows
then spend the same average token budget, and the question left is how much of fixed-rate's speedup adaptive keeps.
"""

from dataclasses import dataclass

import torch

from ...evaluation.token_counts import kept_token_counts as per_image_counts
from ...modeling.modeling_trilevel_vit import TriLevelViTForImageClassification
from ..errors import CommandError


@dataclass(frozen=True)
class Calibration:
    """The mass bisection settled on, and the mean count it gives against the target."""

    token_keep_mass: float
    mean_kept_tokens: float
    target_kept_tokens: float


def kept_token_counts(model: TriLevelViTForImageClassification, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per pruning layer, the `[batch]` patch tokens each image kept in one untimed forward at the model's settings."""
    with torch.no_grad():
        outputs = model(pixel_values, output_kept_token_indices=True)
    return tuple(per_image_counts(outputs).T.cpu())


def mean_last_count(model: TriLevelViTForImageClassification, pixel_values: torch.Tensor) -> float:
    """Mean patch tokens alive after the last pruning layer."""
    return kept_token_counts(model, pixel_values)[-1].double().mean().item()


def calibrate_keep_mass(
    model: TriLevelViTForImageClassification,
    pixel_values: torch.Tensor,
    target_kept_tokens: float,
    iterations: int = 16,
) -> Calibration:
    """Bisect `model.config.token_keep_mass` in (0, 1] until the mean count after the last pruning layer hits the
    target; return the mass whose mean came closest (the larger mass on a tie), leaving it set on the model.

    The mean count grows with the mass (a larger mass keeps a longer prefix of each image's ranking), so bisection
    applies; counts are integers, so the closest mean may differ from the target by a fraction of a token.
    """
    config = model.config
    if not config.token_prune_layers:
        raise CommandError("--match-fixed-rate needs at least one pruning layer (--token-prune-layers).")
    low, high = 0.0, 1.0
    config.token_keep_mass = high
    best = Calibration(high, mean_last_count(model, pixel_values), target_kept_tokens)
    if best.mean_kept_tokens < target_kept_tokens:
        raise CommandError(
            f"--match-fixed-rate: the adaptive model keeps at most {best.mean_kept_tokens:g} patch tokens on average "
            f"(mass 1.0, --match-max-keep-rate {config.token_keep_rate:g}), fewer than the {target_kept_tokens:g} "
            "of the fixed rate it should match; raise --match-max-keep-rate."
        )
    for _ in range(iterations):
        if best.mean_kept_tokens == target_kept_tokens:
            break
        mass = (low + high) / 2
        config.token_keep_mass = mass
        mean = mean_last_count(model, pixel_values)
        candidate = Calibration(mass, mean, target_kept_tokens)
        error, best_error = abs(mean - target_kept_tokens), abs(best.mean_kept_tokens - target_kept_tokens)
        if error < best_error or (error == best_error and mass > best.token_keep_mass):
            best = candidate
        if mean < target_kept_tokens:
            low = mass
        else:
            high = mass
    config.token_keep_mass = best.token_keep_mass
    return best
