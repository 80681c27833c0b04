"""Pictures of a TriLevel checkpoint: the patches each pruning layer keeps, and accuracy against measured throughput.

`hf-trilevel visualize kept-tokens` renders, for a few validation images, one column per pruning layer with the
dropped patches veiled (Pillow only). `hf-trilevel visualize operating-points` evaluates one checkpoint at several
token keep rates (the same weights, `model.keep_rates(...)`), times each on the same batch with interleaved rounds,
and plots accuracy against images/s (matplotlib, the `viz` extra), writing the numbers to JSON as well.

The pure parts, `kept_patch_masks`, `render_kept_tokens`, `measure_operating_points` and `plot_operating_points`, work
on tensors and images, so they are tested without the command line.
"""

import argparse
import json
import platform
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .benchmarks.timing import interleaved_times, medians
from .configuration_trilevel_vit import check_keep_rate
from .errors import CommandError
from .flops import flops_speedup_limit, forward_flops

DATA_SOURCES = ("digits", "imagefolder")
DEFAULT_KEEP_RATES = (1.0, 0.9, 0.7, 0.5)
# A dropped patch is blended towards this colour rather than darkened: on black backgrounds (the digits) darkening
# alone would be invisible.
DROPPED_VEIL = (48, 48, 80)
DROPPED_ALPHA = 0.7
GAP = 4  # pixels between cells and around the grid
LABEL_HEIGHT = 14  # pixels of the column-title band above the grid
VIZ_INSTALL_HINT = "pip install 'hf-trilevel[viz]'"


# -- kept tokens: pure functions ---------------------------------------------------------------------------------------


def kept_patch_masks(kept_indices: Sequence[torch.Tensor | np.ndarray], grid: tuple[int, int]) -> np.ndarray:
    """Which patches are alive after each pruning layer.

    Args:
        kept_indices: one `[batch, kept]` integer array per pruning layer, the original row-major patch positions
            (`TriLevelViTModel(..., output_kept_token_indices=True).kept_token_indices`).
        grid: `(rows, columns)` of the patch grid.

    Returns:
        A bool array `[batch, layers, rows, columns]`, True where the patch survives that layer.

    Raises:
        ValueError: if the shapes disagree or an index is outside the grid.
    """
    rows, columns = grid
    if rows < 1 or columns < 1:
        raise ValueError(f"`grid` must be two positive integers, got {grid}.")
    arrays = [np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices) for indices in kept_indices]
    if not arrays:
        raise ValueError("`kept_indices` is empty: the model has no pruning layers (`token_prune_layers` is []).")
    batch = arrays[0].shape[0]
    masks = np.zeros((batch, len(arrays), rows * columns), dtype=bool)
    for layer, indices in enumerate(arrays):
        if indices.ndim != 2 or indices.shape[0] != batch or not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(
                f"`kept_indices[{layer}]` must be an integer array [batch={batch}, kept], got {indices.shape}."
            )
        if indices.size and (indices.min() < 0 or indices.max() >= rows * columns):
            raise ValueError(f"`kept_indices[{layer}]` holds positions outside the {rows}x{columns} patch grid.")
        masks[np.arange(batch)[:, None], layer, indices] = True
    return masks.reshape(batch, len(arrays), rows, columns)


def render_kept_tokens(
    images: Sequence[Image.Image],
    masks: np.ndarray,
    patch_size: int | tuple[int, int],
    *,
    scale: int = 4,
    titles: Sequence[str] | None = None,
    gap: int = GAP,
    label_height: int = LABEL_HEIGHT,
) -> Image.Image:
    """A grid: one row per image; the input, then one column per pruning layer with dropped patches veiled.

    Args:
        images: the model-sized inputs (all the same size), shown as the model sees them.
        masks: `[len(images), layers, rows, columns]` from `kept_patch_masks`.
        patch_size: patch side in image pixels (or `(height, width)`).
        scale: integer upscaling of every cell (nearest neighbour, so patch edges stay sharp).
        titles: `1 + layers` column titles; none by default.

    Returns:
        An RGB image of width `(1 + layers) * W * scale + (2 + layers) * gap` and height
        `label_height + len(images) * H * scale + (len(images) + 1) * gap`, for images of W x H pixels. Pixels of a
        dropped patch are `(1 - DROPPED_ALPHA) * pixel + DROPPED_ALPHA * DROPPED_VEIL`; kept ones are unchanged.
    """
    if not images:
        raise ValueError("`images` is empty: nothing to render.")
    width, height = images[0].size
    if any(image.size != (width, height) for image in images):
        raise ValueError(f"`images` must all have one size; got {sorted({image.size for image in images})}.")
    patch_height, patch_width = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
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
    if titles is not None and len(titles) != 1 + layers:
        raise ValueError(f"`titles` must hold {1 + layers} titles (input + one per layer), got {len(titles)}.")

    cell_width, cell_height = width * scale, height * scale
    canvas = Image.new(
        "RGB",
        (
            (1 + layers) * cell_width + (2 + layers) * gap,
            label_height + len(images) * cell_height + (len(images) + 1) * gap,
        ),
        (255, 255, 255),
    )
    for row, image in enumerate(images):
        pixels = np.asarray(image.convert("RGB").resize((cell_width, cell_height), Image.Resampling.NEAREST))
        top = label_height + gap + row * (cell_height + gap)
        for column in range(1 + layers):
            cell = (
                pixels
                if column == 0
                else _veil(pixels, masks[row, column - 1], patch_height * scale, patch_width * scale)
            )
            canvas.paste(Image.fromarray(cell), (gap + column * (cell_width + gap), top))
    if titles is not None:
        draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
        for column, title in enumerate(titles):
            draw.text((gap + column * (cell_width + gap), 1), title, fill=(0, 0, 0), font=font)
    return canvas


def _veil(pixels: np.ndarray, mask: np.ndarray, cell_patch_height: int, cell_patch_width: int) -> np.ndarray:
    """Blend the pixels of dropped patches towards `DROPPED_VEIL`; pixels beyond the patch grid count as kept."""
    kept = np.ones(pixels.shape[:2], dtype=bool)
    grid = mask.repeat(cell_patch_height, axis=0).repeat(cell_patch_width, axis=1)
    kept[: grid.shape[0], : grid.shape[1]] = grid
    veiled = pixels.astype(np.float32)
    veiled[~kept] = (1 - DROPPED_ALPHA) * veiled[~kept] + DROPPED_ALPHA * np.asarray(DROPPED_VEIL, np.float32)
    return np.rint(veiled).astype(np.uint8)


# -- operating points: pure functions ----------------------------------------------------------------------------------


def measure_operating_points(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    keep_rates: Sequence[float],
    *,
    attention_keep_rate: float | None = None,
    batch_size: int = 64,
    repeats: int = 10,
    warmup: int = 2,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Accuracy and measured throughput of one checkpoint at each token keep rate.

    Accuracy is over all of `pixel_values` (`[examples, channels, height, width]`, on the CPU, moved a batch at a
    time). Throughput is timed on the first `batch_size` examples, the same batch for every rate, in interleaved
    rounds (`hf_trilevel.benchmarks.timing`), so drift of the machine's speed hits every rate alike.

    Returns:
        One dict per keep rate, in the given order: `token_keep_rate`, `attention_keep_rate`, `accuracy`,
        `images_per_second`, `median_batch_seconds`, `flops_per_image`, `flops_speedup_limit`.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    attention = model.config.attention_keep_rate if attention_keep_rate is None else attention_keep_rate
    timed_batch = pixel_values[:batch_size].to(device)

    def forward_at(rate: float, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), model.keep_rates(token_keep_rate=rate, attention_keep_rate=attention):
            return model(pixel_values=batch).logits

    runs = {str(rate): (lambda rate=rate: forward_at(rate, timed_batch)) for rate in keep_rates}
    seconds = medians(interleaved_times(runs, repeats=repeats, warmup=warmup, device=device, progress=progress))
    points = []
    for rate in keep_rates:
        correct = 0
        for start in range(0, len(pixel_values), batch_size):
            logits = forward_at(rate, pixel_values[start : start + batch_size].to(device))
            correct += int((logits.argmax(-1).cpu() == labels[start : start + batch_size]).sum())
        with model.keep_rates(token_keep_rate=rate, attention_keep_rate=attention):
            flops, limit = forward_flops(model.config), flops_speedup_limit(model.config)
        points.append(
            {
                "token_keep_rate": rate,
                "attention_keep_rate": attention,
                "accuracy": correct / len(pixel_values),
                "images_per_second": len(timed_batch) / seconds[str(rate)],
                "median_batch_seconds": seconds[str(rate)],
                "flops_per_image": flops,
                "flops_speedup_limit": limit,
            }
        )
    return points


def plot_operating_points(points: Sequence[dict], path: str | Path, title: str, figure_class: type) -> None:
    """Accuracy (%) against images/s, one labelled point per keep rate, joined in keep-rate order; saved as PNG.

    `figure_class` is `matplotlib.figure.Figure` (passed in so that matplotlib is imported only when plotting, and
    no global pyplot state or backend is touched).
    """
    ordered = sorted(points, key=lambda point: -point["token_keep_rate"])
    figure = figure_class(figsize=(6, 4.2), dpi=120)
    axes = figure.subplots()
    throughput = [point["images_per_second"] for point in ordered]
    accuracy = [100 * point["accuracy"] for point in ordered]
    axes.plot(throughput, accuracy, color="0.6", linewidth=1, zorder=1)
    axes.scatter(throughput, accuracy, color="tab:blue", zorder=2)
    for index, (point, x, y) in enumerate(zip(ordered, throughput, accuracy, strict=True)):
        # Alternate above and below, so neighbouring points with close throughputs keep readable labels.
        offset = (5, 6) if index % 2 == 0 else (5, -13)
        axes.annotate(f"keep {point['token_keep_rate']:g}", (x, y), textcoords="offset points", xytext=offset)
    axes.set_xlabel("measured throughput (images/s)")
    axes.set_ylabel("validation accuracy (%)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


# -- command-line plumbing ---------------------------------------------------------------------------------------------


def _bounded_int(name: str, low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer in [{low}, {high}], got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{name} must be in [{low}, {high}], got {value}")
        return value

    return parse


def _keep_rate(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            return check_keep_rate(name, float(text))
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{name} must be a number in (0, 1], got {text!r}") from error

    return parse


def _add_checkpoint_and_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="saved TriLevel (or ViT) folder with preprocessor_config.json")
    parser.add_argument(
        "--data",
        choices=DATA_SOURCES,
        default="digits",
        help="validation images: the bundled digits or an image folder",
    )
    parser.add_argument(
        "--data-dir", help="with --data imagefolder: a folder of <label>/<image> (or <split>/<label>/<image>)"
    )
    parser.add_argument("--split", default="validation", help="split to read (an image folder with one split uses it)")


def add_kept_tokens_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `kept-tokens`; value ranges are checked while parsing, so bad input fails before any work."""
    _add_checkpoint_and_data_arguments(parser)
    parser.add_argument("--images", type=_bounded_int("--images", 1, 64), default=4, help="number of images (rows)")
    parser.add_argument(
        "--token-keep-rate", type=_keep_rate("--token-keep-rate"), help="override the checkpoint's rate"
    )
    parser.add_argument("--scale", type=_bounded_int("--scale", 1, 32), default=4, help="pixel upscaling of each cell")
    parser.add_argument("--output", required=True, help="PNG file to write")


def add_operating_points_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `operating-points`; value ranges are checked while parsing, so bad input fails before any work."""
    _add_checkpoint_and_data_arguments(parser)
    parser.add_argument(
        "--keep-rates",
        type=_keep_rate("--keep-rates"),
        nargs="+",
        default=list(DEFAULT_KEEP_RATES),
        help="token keep rates to evaluate, each in (0, 1]",
    )
    parser.add_argument(
        "--attention-keep-rate",
        type=_keep_rate("--attention-keep-rate"),
        help="hold attention sparsity at this rate for every point (default: the checkpoint's own)",
    )
    parser.add_argument(
        "--max-examples", type=_bounded_int("--max-examples", 1, 10**9), help="evaluate at most this many"
    )
    parser.add_argument(
        "--batch-size", type=_bounded_int("--batch-size", 1, 65536), default=64, help="images per forward"
    )
    parser.add_argument("--repeats", type=_bounded_int("--repeats", 1, 1000), default=10, help="timed rounds")
    parser.add_argument("--warmup", type=_bounded_int("--warmup", 0, 1000), default=2, help="untimed rounds first")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run")
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--json", help="where to write the numbers (default: the --output path with .json)")


def run_kept_tokens(args: argparse.Namespace) -> int:
    """`hf-trilevel visualize kept-tokens`: the first `--images` images of the split, one column per pruning layer."""
    output = _png_path(args.output)
    model, processor = _load_checkpoint(args.model)
    if not model.config.token_prune_layers:
        raise CommandError(f"--model {args.model} has no pruning layers (token_prune_layers is []): nothing to show.")
    images, _ = _load_examples(args, limit=args.images, need_labels=False, image_size=_grid_side(model.config))
    pixel_values = _preprocess(processor, images, model.config)
    grid = _grid(model.config)
    with torch.inference_mode(), model.keep_rates(token_keep_rate=args.token_keep_rate):
        kept = model(pixel_values=pixel_values, output_kept_token_indices=True).kept_token_indices
    masks = kept_patch_masks(kept, grid)
    total = grid[0] * grid[1]
    titles = ["input"] + [
        f"layer {layer}: {indices.shape[1]}/{total}"
        for layer, indices in zip(model.config.token_prune_layers, kept, strict=True)
    ]
    height, width = _pair(model.config.image_size)
    shown = [image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC) for image in images]
    render_kept_tokens(shown, masks, _pair(model.config.patch_size), scale=args.scale, titles=titles).save(output)
    print(f"wrote {output}")
    return 0


def run_operating_points(args: argparse.Namespace) -> int:
    """`hf-trilevel visualize operating-points`: accuracy and images/s per keep rate, as a PNG plot and JSON."""
    figure_class = _import_figure()  # before any work: a missing extra should fail in a second, not after timing
    output = _png_path(args.output)
    json_path = Path(args.json) if args.json else output.with_suffix(".json")
    if len(set(args.keep_rates)) != len(args.keep_rates):
        raise CommandError(f"--keep-rates must be distinct, got {args.keep_rates}.")
    device = _device(args.device)
    model, processor = _load_checkpoint(args.model)
    if args.attention_keep_rate is not None:
        try:
            with model.keep_rates(attention_keep_rate=args.attention_keep_rate):
                pass
        except ValueError as error:
            raise CommandError(f"--attention-keep-rate {args.attention_keep_rate}: {error}") from None
    images, labels = _load_examples(
        args, limit=args.max_examples, need_labels=True, image_size=_grid_side(model.config)
    )
    if int(labels.max()) >= model.config.num_labels:
        raise CommandError(
            f"the data has labels up to {int(labels.max())} but --model {args.model} has "
            f"{model.config.num_labels} classes; evaluate it on the data it was trained for."
        )
    pixel_values = _preprocess(processor, images, model.config)
    points = measure_operating_points(
        model,
        pixel_values,
        labels,
        args.keep_rates,
        attention_keep_rate=args.attention_keep_rate,
        batch_size=args.batch_size,
        repeats=args.repeats,
        warmup=args.warmup,
        device=device,
    )
    timed_batch = min(args.batch_size, len(pixel_values))
    report = {
        "model": str(Path(args.model).resolve()),
        "data": args.data if args.data == "digits" else f"imagefolder:{args.data_dir}",
        "split": args.split,
        "num_examples": len(pixel_values),
        "batch_size": timed_batch,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "device": _device_name(device),
        "torch": torch.__version__,
        "points": points,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    title = f"{Path(args.model).resolve().name}: batch {timed_batch}, {report['device']}"
    plot_operating_points(points, output, title, figure_class)
    for point in points:
        print(
            f"keep {point['token_keep_rate']:<5g} accuracy {100 * point['accuracy']:6.2f}%  "
            f"{point['images_per_second']:10.1f} images/s  FLOPs limit {point['flops_speedup_limit']:.2f}x"
        )
    print(f"wrote {output} and {json_path}")
    return 0


def _import_figure() -> type:
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise CommandError(f"the operating-points plot needs matplotlib: {VIZ_INSTALL_HINT} ({error})") from None
    return Figure


def _png_path(text: str) -> Path:
    path = Path(text)
    if path.suffix.lower() != ".png":
        raise CommandError(f"--output must be a .png file, got {text!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda: no CUDA GPU is available here; use --device cpu.")
    return torch.device(name)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _grid_side(config) -> int:
    """The side at which to build square images for this model (its height)."""
    return _pair(config.image_size)[0]


def _grid(config) -> tuple[int, int]:
    (height, width), (patch_height, patch_width) = _pair(config.image_size), _pair(config.patch_size)
    return height // patch_height, width // patch_width


def _load_checkpoint(folder: str):
    """The model (eval mode) and its saved image processor, with errors that say which file is missing."""
    from transformers import AutoImageProcessor

    from .modeling_trilevel_vit import TriLevelViTForImageClassification

    path = Path(folder)
    if not (path / "config.json").is_file():
        raise CommandError(f"--model must be a saved checkpoint folder with a config.json, got {folder!r}.")
    if not (path / "preprocessor_config.json").is_file():
        raise CommandError(
            f"--model {folder} has no preprocessor_config.json, so its preprocessing is unknown; save the image "
            "processor with the model (`processor.save_pretrained(folder)`, or Trainer(processing_class=...))."
        )
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type not in ("trilevel_vit", "vit"):
        raise CommandError(f"--model {folder} holds a {model_type!r} model; expected a TriLevel or ViT checkpoint.")
    try:
        model = TriLevelViTForImageClassification.from_pretrained(path).eval()
        processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise CommandError(f"--model {folder} does not load as a TriLevel (or ViT) image classifier: {error}") from None
    return model, processor


def _load_examples(
    args: argparse.Namespace, limit: int | None, need_labels: bool, image_size: int = 32
) -> tuple[list, torch.Tensor | None]:
    """The first `limit` images (and labels) of the requested split; digits are built at `image_size` pixels."""
    if args.data == "digits":
        if args.data_dir is not None:
            raise CommandError("--data-dir goes with --data imagefolder; the digits are bundled.")
        from .digits import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, load_digits_dataset

        splits = load_digits_dataset(image_size=min(max(image_size, MIN_IMAGE_SIZE), MAX_IMAGE_SIZE))
    else:
        if args.data_dir is None or not Path(args.data_dir).is_dir():
            raise CommandError(f"--data imagefolder needs --data-dir, an existing folder; got {args.data_dir!r}.")
        from datasets import load_dataset

        splits = load_dataset("imagefolder", data_dir=args.data_dir)
    if args.split in splits:
        dataset = splits[args.split]
    elif len(splits) == 1:
        dataset = next(iter(splits.values()))
    else:
        raise CommandError(f"--split {args.split!r} is not in the data; available splits: {sorted(splits)}.")
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    if need_labels and "label" not in dataset.column_names:
        raise CommandError(f"the data has no `label` column (columns: {dataset.column_names}); accuracy needs labels.")
    labels = torch.tensor(list(dataset["label"])) if "label" in dataset.column_names else None
    return list(dataset["image"]), labels


def _preprocess(processor, images: list, config) -> torch.Tensor:
    """`pixel_values` from the checkpoint's own processor, checked against the model's input size."""
    pixel_values = torch.cat(
        [
            processor([image.convert("RGB") for image in images[start : start + 256]], return_tensors="pt")[
                "pixel_values"
            ]
            for start in range(0, len(images), 256)
        ]
    )
    expected = _pair(config.image_size)
    if tuple(pixel_values.shape[-2:]) != expected:
        raise CommandError(
            f"the saved image processor makes {tuple(pixel_values.shape[-2:])} images but the model expects "
            f"image_size={expected}; save a processor with size={{'height': {expected[0]}, 'width': {expected[1]}}}."
        )
    return pixel_values


__all__ = [
    "add_kept_tokens_arguments",
    "add_operating_points_arguments",
    "kept_patch_masks",
    "measure_operating_points",
    "plot_operating_points",
    "render_kept_tokens",
    "run_kept_tokens",
    "run_operating_points",
]
