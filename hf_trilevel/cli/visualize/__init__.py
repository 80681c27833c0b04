"""Pictures of a TriLevel checkpoint: `hf-trilevel visualize kept-tokens` (which patches each pruning layer keeps,
`kept_tokens`) and `hf-trilevel visualize operating-points` (accuracy against measured throughput per keep rate,
`operating_points`; the measuring is the library's, `hf_trilevel.token_training.operating_points`). `inputs` holds
what both commands read: the checkpoint, its image processor and the images.
"""

from .kept_tokens import (
    DROPPED_ALPHA,
    DROPPED_VEIL,
    PADDED_SLOT,
    add_kept_tokens_arguments,
    kept_patch_counts,
    kept_patch_masks,
    layer_titles,
    render_kept_tokens,
    run_kept_tokens,
)
from .operating_points import (
    add_operating_points_arguments,
    default_keep_rates,
    plot_operating_points,
    run_operating_points,
)

__all__ = [
    "DROPPED_ALPHA",
    "DROPPED_VEIL",
    "PADDED_SLOT",
    "add_kept_tokens_arguments",
    "add_operating_points_arguments",
    "default_keep_rates",
    "kept_patch_counts",
    "kept_patch_masks",
    "layer_titles",
    "plot_operating_points",
    "render_kept_tokens",
    "run_kept_tokens",
    "run_operating_points",
]
