"""Pictures of a TriLevel checkpoint: `hf-trilevel visualize kept-tokens` (which patches each pruning layer keeps,
and which patches each merged token holds, `kept_tokens`) and `hf-trilevel visualize operating-points` (accuracy
against measured throughput per keep rate, `operating_points`; the measuring is the library's,
`hf_trilevel.token_training.operating_points`). `inputs` holds what both commands read: the checkpoint, its image
processor and the images.
"""

from .kept_tokens import (
    DROPPED_ALPHA,
    DROPPED_VEIL,
    GROUP_ALPHA,
    GROUP_OUTLINE,
    PADDED_SLOT,
    add_kept_tokens_arguments,
    group_colors,
    groups_title,
    kept_patch_counts,
    kept_patch_masks,
    layer_titles,
    merged_patch_groups,
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
    "GROUP_ALPHA",
    "GROUP_OUTLINE",
    "PADDED_SLOT",
    "add_kept_tokens_arguments",
    "add_operating_points_arguments",
    "default_keep_rates",
    "group_colors",
    "groups_title",
    "kept_patch_counts",
    "kept_patch_masks",
    "layer_titles",
    "merged_patch_groups",
    "plot_operating_points",
    "render_kept_tokens",
    "run_kept_tokens",
    "run_operating_points",
]
