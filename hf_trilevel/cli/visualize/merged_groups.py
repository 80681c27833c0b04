"""ToMe's source maps for `hf-trilevel visualize kept-tokens`: which original patches each final token holds.

A merging checkpoint (`token_merge_r`) returns `token_sources` (`output_token_sources=True`): for each original patch
the final token holding it, -1 where it was dropped. `merged_patch_groups` lays it on the patch grid, `group_colors`
gives every token its colour and `tint_groups` draws them: one tint per token, edges between tokens outlined,
dropped patches veiled as in the layer columns. Kept apart from `kept_tokens.py`, which draws the layer columns and
runs the command.
"""

import colorsys

import numpy as np
import torch

DROPPED = -1  # what `token_sources` holds for a dropped (or fused) patch
# A dropped patch is blended towards this colour rather than darkened: on black backgrounds (the digits) darkening
# alone would be invisible. The layer columns of `kept_tokens.py` use the same veil.
DROPPED_VEIL = (48, 48, 80)
DROPPED_ALPHA = 0.7
GROUP_ALPHA = 0.5  # share of a merged group's colour in its patches' pixels
GROUP_OUTLINE = (255, 255, 255)  # pixels on the edge between two groups (or a group and dropped patches)


def merged_patch_groups(token_sources: torch.Tensor | np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Which final token holds each patch: ToMe's source map laid out on the patch grid.

    Args:
        token_sources: `[batch, patches]` integers, for each original patch (row-major) the index of the final patch
            token that holds it, `-1` if it was dropped or fused (`TriLevelViTModel(..., output_token_sources=True)
            .token_sources`). Patches merged together share an index.
        grid: `(rows, columns)` of the patch grid; `rows * columns == patches`.

    Returns:
        An int64 array `[batch, rows, columns]`: the group (final token) of each patch, `-1` where it was dropped.
    """
    rows, columns = grid
    sources = np.asarray(token_sources.cpu() if isinstance(token_sources, torch.Tensor) else token_sources)
    if sources.ndim != 2 or sources.shape[1] != rows * columns or not np.issubdtype(sources.dtype, np.integer):
        raise ValueError(
            f"`token_sources` must be an integer array [batch, patches={rows * columns}] for the {rows}x{columns} "
            f"patch grid, got {sources.shape}."
        )
    if sources.size and sources.min() < DROPPED:
        raise ValueError(
            f"`token_sources` holds {sources.min()}; token indices are >= 0, and -1 marks a dropped patch."
        )
    return sources.astype(np.int64).reshape(-1, rows, columns)


def group_colors(num_groups: int) -> np.ndarray:
    """`[num_groups, 3]` uint8 RGB: one saturated colour per final token, hues stepped by the golden ratio so that
    consecutive tokens (often neighbours on the grid) get far-apart hues."""
    hues = (np.arange(num_groups) * 0.618033988749895) % 1.0
    rgb = np.array([colorsys.hsv_to_rgb(hue, 0.8, 1.0) for hue in hues], dtype=np.float64).reshape(num_groups, 3)
    return np.rint(255 * rgb).astype(np.uint8)


def groups_title(groups: np.ndarray) -> str:
    """`merged: 13 tokens` (every image), or `merged: 12-13 tokens` when the images' counts differ."""
    counts = [len(np.unique(image[image >= 0])) for image in groups]
    low, high = min(counts), max(counts)
    return f"merged: {low} tokens" if low == high else f"merged: {low}-{high} tokens"


def tint_groups(pixels: np.ndarray, groups: np.ndarray, cell_patch_height: int, cell_patch_width: int) -> np.ndarray:
    """Tint each group's patches with its colour, veil dropped ones, outline the edges between groups; pixels beyond
    the patch grid stay as they are."""
    grid = groups.repeat(cell_patch_height, axis=0).repeat(cell_patch_width, axis=1)
    height, width = grid.shape
    cell = pixels[:height, :width].astype(np.float32)
    colors = group_colors(int(groups.max()) + 1 if groups.size else 0).astype(np.float32)
    merged, dropped = grid >= 0, grid < 0
    cell[merged] = (1 - GROUP_ALPHA) * cell[merged] + GROUP_ALPHA * colors[grid[merged]]
    cell[dropped] = (1 - DROPPED_ALPHA) * cell[dropped] + DROPPED_ALPHA * np.asarray(DROPPED_VEIL, np.float32)
    edge = np.zeros(grid.shape, dtype=bool)
    edge[:, 1:] |= grid[:, 1:] != grid[:, :-1]  # the first pixel of a patch whose left neighbour is another group
    edge[1:, :] |= grid[1:, :] != grid[:-1, :]
    cell[edge] = GROUP_OUTLINE
    tinted = pixels.copy()
    tinted[:height, :width] = np.rint(cell).astype(np.uint8)
    return tinted


__all__ = [
    "DROPPED_ALPHA",
    "DROPPED_VEIL",
    "GROUP_ALPHA",
    "GROUP_OUTLINE",
    "group_colors",
    "groups_title",
    "merged_patch_groups",
    "tint_groups",
]
