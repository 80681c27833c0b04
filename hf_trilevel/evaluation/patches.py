"""Patch grids of a ViT input: how many patch tokens an image of a config has (the FLOPs, the token counts, the
tools' reports all start from it). The model itself never needs the count, so it lives here, not in the remote code.
"""

from collections.abc import Sequence

from ..modeling.value_checks import as_pair


def patch_grid(image_size: int | Sequence[int], patch_size: int | Sequence[int]) -> tuple[int, int]:
    """Patch rows and columns of an image: `(image_height // patch_height, image_width // patch_width)`."""
    (image_height, image_width), (patch_height, patch_width) = as_pair(image_size), as_pair(patch_size)
    return image_height // patch_height, image_width // patch_width


def num_patches(image_size: int | Sequence[int], patch_size: int | Sequence[int]) -> int:
    """Number of patch tokens (the sequence length without the class token)."""
    rows, columns = patch_grid(image_size, patch_size)
    return rows * columns


__all__ = ["num_patches", "patch_grid"]
