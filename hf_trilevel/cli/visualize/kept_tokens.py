"""`hf-trilevel visualize kept-tokens`: the patches each pruning layer keeps, drawn over the input (Pillow only).

The pure parts, `kept_patch_masks`, `kept_patch_counts`, `layer_titles` and `render_kept_tokens`, work on index
tensors and images, so they are tested without a model or the command line.

Every selector is drawn the same way. With `"adaptive"` the images of a batch keep different counts: the model pads
`kept_token_indices` to the batch's largest count with `-1`, which marks no patch, so each row shows that image's own
kept set; the column titles then give the range of counts and every cell is tagged with its image's count.

A merging checkpoint (`token_merge_r`, ToMe) gets one more column, after the last layer: which original patches each
final token holds (the model's `token_sources`, ToMe's source map), every token's patches tinted with one colour and
outlined, dropped patches veiled as in the layer columns (`merged_patch_groups`, `group_colors`). In the pruning-layer
columns a merged token shows at the patch it was merged into (`kept_token_indices`), so patches merged away there
look dropped; the last column tells them apart.
"""

import argparse
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ...evaluation.patches import patch_grid
from ...modeling.value_checks import as_pair
from ..errors import CommandError
from .inputs import (
    add_checkpoint_and_data_arguments,
    bounded_int,
    keep_rate,
    load_checkpoint,
    load_examples,
    png_path,
    preprocess,
)
from .merged_groups import (
    DROPPED_ALPHA,
    DROPPED_VEIL,
    GROUP_ALPHA,
    GROUP_OUTLINE,
    group_colors,
    groups_title,
    merged_patch_groups,
    tint_groups,
)

GAP = 4  # pixels between cells and around the grid
LABEL_HEIGHT = 14  # pixels of the column-title band above the grid


PADDED_SLOT = -1  # what `kept_token_indices` holds at a padded slot (adaptive selector): no patch


def _index_arrays(kept_indices: Sequence[torch.Tensor | np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices) for indices in kept_indices]


def kept_patch_masks(kept_indices: Sequence[torch.Tensor | np.ndarray], grid: tuple[int, int]) -> np.ndarray:
    """Which patches are alive after each pruning layer.

    Args:
        kept_indices: one `[batch, kept]` integer array per pruning layer, the original row-major patch positions
            (`TriLevelViTModel(..., output_kept_token_indices=True).kept_token_indices`). `-1` marks a padded slot
            (the `"adaptive"` selector pads a batch to its largest count): it is no patch, so each image shows its
            own kept set.
        grid: `(rows, columns)` of the patch grid.

    Returns:
        A bool array `[batch, layers, rows, columns]`, True where the patch survives that layer.

    Raises:
        ValueError: if the shapes disagree or an index is outside the grid (and not `-1`).
    """
    rows, columns = grid
    if rows < 1 or columns < 1:
        raise ValueError(f"`grid` must be two positive integers, got {grid}.")
    arrays = _index_arrays(kept_indices)
    if not arrays:
        raise ValueError("`kept_indices` is empty: the model has no pruning layers (`token_prune_layers` is []).")
    batch = arrays[0].shape[0]
    masks = np.zeros((batch, len(arrays), rows * columns), dtype=bool)
    for layer, indices in enumerate(arrays):
        _check_indices(layer, indices, batch, rows, columns)
        image, slot = np.nonzero(indices != PADDED_SLOT)
        masks[image, layer, indices[image, slot]] = True
    return masks.reshape(batch, len(arrays), rows, columns)


def kept_patch_counts(kept_indices: Sequence[torch.Tensor | np.ndarray]) -> np.ndarray:
    """`[batch, layers]` int: patches each image keeps after each pruning layer (its slots that are not `-1`).

    The same numbers as the model's `kept_token_counts`, read from the indices alone.
    """
    arrays = _index_arrays(kept_indices)
    if not arrays:
        raise ValueError("`kept_indices` is empty: the model has no pruning layers (`token_prune_layers` is []).")
    batch = arrays[0].shape[0]
    for layer, indices in enumerate(arrays):
        _check_indices(layer, indices, batch)
    return np.stack([(indices != PADDED_SLOT).sum(axis=1) for indices in arrays], axis=1)


def _check_indices(layer: int, indices: np.ndarray, batch: int, rows: int = 0, columns: int = 0) -> None:
    if indices.ndim != 2 or indices.shape[0] != batch or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(
            f"`kept_indices[{layer}]` must be an integer array [batch={batch}, kept], got {indices.shape}."
        )
    if indices.size and indices.min() < PADDED_SLOT:
        raise ValueError(f"`kept_indices[{layer}]` holds {indices.min()}; positions are >= 0, and -1 marks padding.")
    if rows and indices.size and indices.max() >= rows * columns:
        raise ValueError(f"`kept_indices[{layer}]` holds positions outside the {rows}x{columns} patch grid.")


def layer_titles(prune_layers: Sequence[int], counts: np.ndarray, total: int) -> list[str]:
    """Column titles: `input`, then `layer 3: 45/64` (every image keeps 45) or `layer 3: 30-45/64` (the range of
    the images' counts, when they differ: the adaptive selector)."""
    titles = ["input"]
    for layer, column in zip(prune_layers, np.asarray(counts).T, strict=True):
        low, high = int(column.min()), int(column.max())
        titles.append(f"layer {layer}: {low}/{total}" if low == high else f"layer {layer}: {low}-{high}/{total}")
    return titles


def render_kept_tokens(
    images: Sequence[Image.Image],
    masks: np.ndarray,
    patch_size: int | tuple[int, int],
    *,
    scale: int = 4,
    titles: Sequence[str] | None = None,
    cell_labels: Sequence[Sequence[str]] | None = None,
    groups: np.ndarray | None = None,
    gap: int = GAP,
    label_height: int = LABEL_HEIGHT,
) -> Image.Image:
    """A grid: one row per image; the input, then one column per pruning layer with dropped patches veiled, then
    (with `groups`) one column of the merged groups.

    Args:
        images: the model-sized inputs (all the same size), shown as the model sees them.
        masks: `[len(images), layers, rows, columns]` from `kept_patch_masks`.
        patch_size: patch side in image pixels (or `(height, width)`).
        scale: integer upscaling of every cell (nearest neighbour, so patch edges stay sharp).
        titles: `1 + layers` column titles (one more with `groups`); none by default.
        cell_labels: per image, `layers` short labels (e.g. that image's kept count), each written on a white tag in
            the top-left corner of its layer cell; none by default. The grid's size does not change.
        groups: `[len(images), rows, columns]` from `merged_patch_groups`: adds a last column in which the patches
            of group `g` are tinted `(1 - GROUP_ALPHA) * pixel + GROUP_ALPHA * group_colors(...)[g]`, dropped ones
            (`-1`) veiled, and the pixels along an edge between two groups drawn in `GROUP_OUTLINE`.

    Returns:
        An RGB image of width `(1 + columns) * W * scale + (2 + columns) * gap` and height
        `label_height + len(images) * H * scale + (len(images) + 1) * gap`, for images of W x H pixels and `columns`
        the layers (plus one with `groups`). Pixels of a dropped patch are
        `(1 - DROPPED_ALPHA) * pixel + DROPPED_ALPHA * DROPPED_VEIL`; kept ones are unchanged.
    """
    if not images:
        raise ValueError("`images` is empty: nothing to render.")
    width, height = images[0].size
    if any(image.size != (width, height) for image in images):
        raise ValueError(f"`images` must all have one size; got {sorted({image.size for image in images})}.")
    patch_height, patch_width = as_pair(patch_size)
    if masks.ndim != 4 or masks.shape[0] != len(images):
        raise ValueError(f"`masks` must be [images={len(images)}, layers, rows, columns], got {masks.shape}.")
    if masks.shape[2] * patch_height > height or masks.shape[3] * patch_width > width:
        raise ValueError(
            f"a {masks.shape[2]}x{masks.shape[3]} grid of {patch_height}x{patch_width} patches does not fit "
            f"{width}x{height} images."
        )
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"`scale` must be a positive integer, got {scale!r}.")
    layers = masks.shape[1]
    if groups is not None and groups.shape != (len(images), *masks.shape[2:]):
        raise ValueError(
            f"`groups` must be [images={len(images)}, {masks.shape[2]}, {masks.shape[3]}], got {groups.shape}."
        )
    columns = layers + (groups is not None)
    if titles is not None and len(titles) != 1 + columns:
        merged = " and one for the merged groups" if groups is not None else ""
        raise ValueError(f"`titles` must hold {1 + columns} titles (input + one per layer{merged}), got {len(titles)}.")
    if cell_labels is not None and (
        len(cell_labels) != len(images) or any(len(labels) != layers for labels in cell_labels)
    ):
        raise ValueError(f"`cell_labels` must hold {layers} labels for each of the {len(images)} images.")

    cell_width, cell_height = width * scale, height * scale
    canvas = Image.new(
        "RGB",
        (
            (1 + columns) * cell_width + (2 + columns) * gap,
            label_height + len(images) * cell_height + (len(images) + 1) * gap,
        ),
        (255, 255, 255),
    )
    for row, image in enumerate(images):
        pixels = np.asarray(image.convert("RGB").resize((cell_width, cell_height), Image.Resampling.NEAREST))
        top = label_height + gap + row * (cell_height + gap)
        cells = [pixels]
        cells += [
            _veil(pixels, masks[row, layer], patch_height * scale, patch_width * scale) for layer in range(layers)
        ]
        if groups is not None:
            cells.append(tint_groups(pixels, groups[row], patch_height * scale, patch_width * scale))
        for column, cell in enumerate(cells):
            canvas.paste(Image.fromarray(cell), (gap + column * (cell_width + gap), top))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    if titles is not None:
        for column, title in enumerate(titles):
            draw.text((gap + column * (cell_width + gap), 1), title, fill=(0, 0, 0), font=font)
    for row, labels in enumerate(cell_labels or []):
        top = label_height + gap + row * (cell_height + gap)
        for column, label in enumerate(labels, start=1):
            left = gap + column * (cell_width + gap)
            box = draw.textbbox((left + 1, top + 1), label, font=font)
            tag = (
                box[0] - 1,
                box[1] - 1,
                min(box[2] + 1, left + cell_width - 1),
                min(box[3] + 1, top + cell_height - 1),
            )
            draw.rectangle(tag, fill=(255, 255, 255))
            draw.text((left + 1, top + 1), label, fill=(0, 0, 0), font=font)
    return canvas


def _veil(pixels: np.ndarray, mask: np.ndarray, cell_patch_height: int, cell_patch_width: int) -> np.ndarray:
    """Blend the pixels of dropped patches towards `DROPPED_VEIL`; pixels beyond the patch grid count as kept."""
    kept = np.ones(pixels.shape[:2], dtype=bool)
    grid = mask.repeat(cell_patch_height, axis=0).repeat(cell_patch_width, axis=1)
    kept[: grid.shape[0], : grid.shape[1]] = grid
    veiled = pixels.astype(np.float32)
    veiled[~kept] = (1 - DROPPED_ALPHA) * veiled[~kept] + DROPPED_ALPHA * np.asarray(DROPPED_VEIL, np.float32)
    return np.rint(veiled).astype(np.uint8)


def add_kept_tokens_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `kept-tokens`; value ranges are checked while parsing, so bad input fails before any work."""
    add_checkpoint_and_data_arguments(parser)
    parser.add_argument("--images", type=bounded_int("--images", 1, 64), default=4, help="number of images (rows)")
    parser.add_argument("--token-keep-rate", type=keep_rate("--token-keep-rate"), help="override the checkpoint's rate")
    parser.add_argument(
        "--token-keep-mass",
        type=keep_rate("--token-keep-mass"),
        help="adaptive selector: override the checkpoint's token_keep_mass, in (0, 1]",
    )
    parser.add_argument(
        "--token-merge-r",
        type=bounded_int("--token-merge-r", 0, 1024),
        help="token merging: override the checkpoint's token_merge_r with this r in every layer (0: off)",
    )
    parser.add_argument("--scale", type=bounded_int("--scale", 1, 32), default=4, help="pixel upscaling of each cell")
    parser.add_argument("--output", required=True, help="PNG file to write")


def run_kept_tokens(args: argparse.Namespace) -> int:
    """`hf-trilevel visualize kept-tokens`: the first `--images` images of the split, one column per pruning layer,
    and for a merging checkpoint (or `--token-merge-r`) a last column of the patches each final token holds.

    Column titles give each layer's kept count (a range when the images' counts differ: the adaptive selector);
    then every cell also carries its image's own count.
    """
    output = png_path(args.output)
    model, processor = load_checkpoint(args.model)
    config = model.config
    merge_r = getattr(args, "token_merge_r", None)
    merges = config.merges_tokens() if merge_r is None else merge_r > 0
    if not config.token_prune_layers and not merges:
        raise CommandError(
            f"--model {args.model} has no pruning layers (token_prune_layers is []) and merges no tokens: nothing to "
            "show."
        )
    mass = getattr(args, "token_keep_mass", None)
    if mass is not None and getattr(config, "token_selector", "class_attention") != "adaptive":
        raise CommandError(
            f"--token-keep-mass applies to the adaptive selector; --model {args.model} uses "
            f"{getattr(config, 'token_selector', 'class_attention')!r}."
        )
    (height, width), grid = as_pair(config.image_size), patch_grid(config.image_size, config.patch_size)
    images, _ = load_examples(args, limit=args.images, need_labels=False, image_size=height)
    pixel_values = preprocess(processor, images, config)
    saved_mass = getattr(config, "token_keep_mass", None)
    try:
        if mass is not None:
            config.token_keep_mass = mass  # read once per forward, like the keep rates
        with torch.inference_mode(), _rates(model, args.token_keep_rate, merge_r, args.model):
            outputs = model(pixel_values=pixel_values, output_kept_token_indices=True, output_token_sources=merges)
    finally:
        if mass is not None:
            config.token_keep_mass = saved_mass
    kept = outputs.kept_token_indices
    if kept:
        masks, counts = kept_patch_masks(kept, grid), kept_patch_counts(kept)
    else:  # no pruning layers: the merged groups alone
        masks, counts = np.zeros((len(images), 0, *grid), dtype=bool), np.zeros((len(images), 0), dtype=np.int64)
    titles = layer_titles(config.token_prune_layers, counts, grid[0] * grid[1])
    groups = merged_patch_groups(outputs.token_sources, grid) if merges else None
    if groups is not None:
        titles.append(groups_title(groups))
    varies = bool((counts != counts[:1]).any())
    cell_labels = [[str(count) for count in row] for row in counts.tolist()] if varies else None
    shown = [image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC) for image in images]
    grid_image = render_kept_tokens(
        shown,
        masks,
        as_pair(config.patch_size),
        scale=args.scale,
        titles=titles,
        cell_labels=cell_labels,
        groups=groups,
    )
    grid_image.save(output)
    print(f"wrote {output}")
    return 0


@contextmanager
def _rates(model, token_keep_rate: float | None, token_merge_r: int | None, source: str) -> Iterator[None]:
    """`model.keep_rates(...)` for the command's overrides; settings the checkpoint's config refuses (an r too large
    for its layers at that keep rate, merging with attention sparsity) are a usage error naming the options."""
    with ExitStack() as stack:
        try:
            stack.enter_context(model.keep_rates(token_keep_rate=token_keep_rate, token_merge_r=token_merge_r))
        except ValueError as error:
            given = [f"--token-keep-rate {token_keep_rate}"] if token_keep_rate is not None else []
            given += [f"--token-merge-r {token_merge_r}"] if token_merge_r is not None else []
            raise CommandError(f"{' '.join(given)} with --model {source}: {error}") from None
        yield


__all__ = [
    "DROPPED_ALPHA",
    "DROPPED_VEIL",
    "GROUP_ALPHA",
    "GROUP_OUTLINE",
    "PADDED_SLOT",
    "add_kept_tokens_arguments",
    "group_colors",
    "groups_title",
    "kept_patch_counts",
    "kept_patch_masks",
    "layer_titles",
    "merged_patch_groups",
    "render_kept_tokens",
    "run_kept_tokens",
]
