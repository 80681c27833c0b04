"""What every row of a benchmark shares: the model shape, and the device, dtype and backend it runs on.

The command-line options and the checked values they become (`ModelShape`, `RunTarget`); the rows themselves (the
TriLevel operating points, `Setting`) are in `settings.py`, the slimmed shapes' options in `slimmed_shapes.py`. The
models are built in `models.py`, with random (seeded) weights or those of a saved folder (`--model`). Arguments are
checked here, before any model is built, and bad ones raise `CommandError` with the flag and the allowed range.
"""

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PretrainedConfig
from transformers.utils import is_flash_attn_2_available

from ...modeling.value_checks import as_pair, check_int
from ..errors import CommandError, checked_option
from .families import FAMILIES, Family, family
from .onnx_runs import check_onnxruntime_target
from .settings import Setting

PRESETS: dict[str, dict[str, int]] = {
    "deit-tiny": {"hidden_size": 192, "num_hidden_layers": 12, "num_attention_heads": 3, "intermediate_size": 768},
    "deit-small": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "intermediate_size": 1536},
    "deit-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    # DINOv2's released shapes at the 224 px crops they are run at (patch 14: 256 patches).
    "dinov2-small": {
        "hidden_size": 384,
        "num_hidden_layers": 12,
        "num_attention_heads": 6,
        "intermediate_size": 1536,
        "patch_size": 14,
    },
    "dinov2-base": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "patch_size": 14,
    },
    # CLIP's and SigLIP's released vision towers (`--family clip` / `--family siglip`).
    "clip-b32": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                 "patch_size": 32},
    "clip-b16": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "clip-l14": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
                 "patch_size": 14},
    "siglip-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                    "intermediate_size": 3072},
    "siglip-so400m": {"hidden_size": 1152, "num_hidden_layers": 27, "num_attention_heads": 16,
                      "intermediate_size": 4304, "patch_size": 14, "image_size": 384},
}  # fmt: skip
PRESET_IMAGE = {"image_size": 224, "patch_size": 16, "num_labels": 1000}
SHAPE_FIELDS = ("image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "num_labels")  # fmt: skip
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTENTION_BACKENDS = ("sdpa", "eager", "flash_attention_2")


@dataclass(frozen=True)
class ModelShape:
    """A ViT's shape: a preset, or the preset with some fields replaced (`--hidden-size 64` ...)."""

    name: str
    image_size: int
    patch_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    num_labels: int
    token_prune_layers: tuple[int, ...] | None = None
    checkpoint: str | None = None  # a saved TriLevel or ViT folder whose weights every model starts from (`--model`)
    family: str = "vit"  # `families.FAMILIES` key: which dense and TriLevel classes the rows run (`--family`)

    def vit_kwargs(self) -> dict:
        return {name: getattr(self, name) for name in SHAPE_FIELDS}


@dataclass(frozen=True)
class RunTarget:
    """Where and how the models run."""

    device: torch.device
    dtype: torch.dtype
    attn_implementation: str
    compile: bool = False
    runtime: str = "pytorch"  # or "onnxruntime": every row exported and timed in onnxruntime (`onnx_runs.py`)

    @property
    def compiled_on_cpu(self) -> bool:
        """Compiled graphs bypass the CPU memory tracker's dispatch mode, so no CPU memory figure is taken then."""
        return self.compile and self.device.type != "cuda"

    @property
    def tracks_memory(self) -> bool:
        """Whether one call's peak memory can be measured: not through compiled graphs on the CPU (they bypass the
        tracker's dispatch mode), nor in onnxruntime (its own allocator)."""
        return self.runtime == "pytorch" and not self.compiled_on_cpu


def add_shape_arguments(parser: argparse.ArgumentParser, default_preset: str | None = None) -> None:
    group = parser.add_argument_group("model shape (a preset; any field given below replaces the preset's)")
    group.add_argument("--preset", default=default_preset,
                       help=f"one of {', '.join(PRESETS)} (default: the family's, deit-tiny for ViT and DeiT, "
                            "dinov2-small for DINOv2)")  # fmt: skip
    for name in SHAPE_FIELDS:
        group.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, metavar="N")
    group.add_argument("--token-prune-layers", type=int, nargs="+", default=None, metavar="LAYER",
                       help="0-indexed pruning layers (default: 1/4, 1/2 and 3/4 of the depth)")  # fmt: skip
    group.add_argument("--model", default=None, metavar="FOLDER",
                       help="a saved TriLevel or ViT folder: its shape and weights replace the preset's (random) ones; "
                            "with it, no shape field may be given")  # fmt: skip


def add_target_arguments(parser: argparse.ArgumentParser, batch_size: int) -> None:
    group = parser.add_argument_group("hardware and timing")
    group.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N for one GPU)")
    group.add_argument("--dtype", choices=list(DTYPES), default="float32")
    group.add_argument("--attn-implementation", choices=ATTENTION_BACKENDS, default="sdpa",
                       help="attention backend of both models (sdpa: fastest on CPU, flash kernel on GPU)")  # fmt: skip
    group.add_argument("--compile", action="store_true", help="torch.compile both models before timing")
    group.add_argument("--batch-size", type=int, default=batch_size)
    group.add_argument("--repeats", type=int, default=9, help="timed rounds; medians are reported")
    group.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    group.add_argument("--no-progress", action="store_true", help="do not print the round counter on stderr")
    group.add_argument("--json", default=None, metavar="PATH", help="also write every figure and the environment")


def model_shape(args: argparse.Namespace) -> ModelShape:
    chosen = family(getattr(args, "family", "vit"))  # only `bench inference` has --family
    if getattr(args, "model", None) is not None:
        return checkpoint_shape(args, chosen)
    preset = args.preset or chosen.default_preset
    if preset not in PRESETS:
        raise CommandError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}.")
    preset_family = preset.partition("-")[0]
    if preset_family in FAMILIES and preset_family != chosen.name:  # a DINOv2 shape timed with ViT's classes
        raise CommandError(f"--preset {preset} is a {preset_family} shape: add --family {preset_family}.")
    values = {**PRESET_IMAGE, **PRESETS[preset]}
    overridden = {name: getattr(args, name) for name in SHAPE_FIELDS if getattr(args, name) is not None}
    for name, value in overridden.items():
        checked_option(check_int, f"--{name.replace('_', '-')}", value)
    values.update(overridden)
    name = preset if not overridden else "custom (" + ", ".join(f"{k}={v}" for k, v in overridden.items()) + ")"
    layers = tuple(args.token_prune_layers) if args.token_prune_layers is not None else None
    shape = ModelShape(name=name, token_prune_layers=layers, family=chosen.name, **values)
    check_divides(shape.vit_kwargs())
    try:  # the config's own checks name the field and its range (prune layers ...)
        chosen.trilevel_config(**chosen.config_kwargs(shape), token_prune_layers=list(layers) if layers else None)
    except ValueError as error:
        raise CommandError(str(error)) from None
    return shape


def checkpoint_shape(args: argparse.Namespace, chosen: Family = FAMILIES["vit"]) -> ModelShape:
    """The shape of the saved folder `--model` names; shape flags are refused, the pruning layers may be replaced.
    The folder must hold a model of the `--family` (its TriLevel or its plain transformers type)."""
    given = [f"--{name.replace('_', '-')}" for name in SHAPE_FIELDS if getattr(args, name) is not None]
    if given:
        raise CommandError(f"{', '.join(given)} do not apply with --model (the saved folder fixes the shape).")
    folder = Path(args.model).expanduser()
    if not (folder / "config.json").is_file():
        raise CommandError(f"--model {args.model}: no config.json there; give a folder written by save_pretrained.")
    try:
        model_type = PretrainedConfig.get_config_dict(str(folder))[0].get("model_type")
    except (OSError, ValueError) as error:
        raise CommandError(f"--model {args.model}: cannot read its config ({error}).") from None
    if model_type not in chosen.saved_model_types:
        raise CommandError(
            f"--model {args.model} holds a {model_type!r} model, not one of --family {chosen.name} "
            f"({' or '.join(map(repr, chosen.saved_model_types))}); pass the --family it belongs to."
        )
    try:
        config = chosen.trilevel_config.from_pretrained(str(folder))
    except (OSError, ValueError) as error:
        raise CommandError(f"--model {args.model}: cannot read its config ({error}).") from None
    if any(
        getattr(config, name) is not None for name in ("num_attention_heads_per_layer", "intermediate_size_per_layer")
    ):
        raise CommandError(
            f"--model {args.model} is a slimmed model (per-layer heads or MLP sizes): the dense transformers ViT it "
            "is compared with cannot hold its weights."
        )
    if not isinstance(config.image_size, int) or not isinstance(config.patch_size, int) or config.num_channels != 3:
        raise CommandError(
            f"--model {args.model}: only 3-channel square images and patches (integer sizes) are supported."
        )
    layers = args.token_prune_layers if args.token_prune_layers is not None else config.token_prune_layers
    values = {name: getattr(config, name) for name in SHAPE_FIELDS}
    shape = ModelShape(
        name=f"{folder.name} (--model)", token_prune_layers=tuple(layers), checkpoint=str(folder),
        family=chosen.name, **values,
    )  # fmt: skip
    try:
        chosen.trilevel_config(**chosen.config_kwargs(shape), token_prune_layers=list(layers))
    except ValueError as error:
        raise CommandError(str(error)) from None
    return shape


def check_divides(shape: dict[str, int]) -> None:
    """Patches must tile the image and heads split the hidden size, named by the flags that set them."""
    (height, width), (patch_height, patch_width) = as_pair(shape["image_size"]), as_pair(shape["patch_size"])
    if height % patch_height or width % patch_width:
        raise CommandError(
            f"--patch-size must divide --image-size, got {shape['patch_size']} and {shape['image_size']}."
        )
    if shape["hidden_size"] % shape["num_attention_heads"]:
        raise CommandError(
            f"--num-attention-heads must divide --hidden-size, got {shape['num_attention_heads']} and "
            f"{shape['hidden_size']}."
        )


def checked_device(name: str) -> torch.device:
    """`--device` as a `torch.device`, refused unless it is the CPU or a CUDA GPU this machine has."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CommandError(f"--device must be cpu or cuda[:N], got {name!r}.") from None
    if device.type not in ("cpu", "cuda"):
        raise CommandError(f"--device must be cpu or cuda[:N], got {name!r}.")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CommandError("--device cuda was given, but torch sees no CUDA GPU on this machine.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CommandError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) are visible.")
    return device


def run_target(args: argparse.Namespace, settings: list[Setting]) -> RunTarget:
    """Check the device, dtype and backend against this machine and the settings, before anything is built."""
    device = checked_device(args.device)
    if args.attn_implementation == "flash_attention_2":
        if device.type != "cuda" or not is_flash_attn_2_available():
            raise CommandError("--attn-implementation flash_attention_2 needs a CUDA GPU and the flash-attn package.")
        if args.dtype == "float32":
            raise CommandError("--attn-implementation flash_attention_2 needs --dtype bfloat16 or float16.")
        if any(s.attention_keep_rate < 1.0 for s in settings):
            raise CommandError(
                "--attention-keep-rates below 1 need a backend that takes a mask: use --attn-implementation sdpa."
            )
    checked_option(check_int, "--batch-size", args.batch_size)
    checked_option(check_int, "--repeats", args.repeats)
    checked_option(check_int, "--warmup", args.warmup, low=0)
    if args.compile and args.warmup < 1:
        raise CommandError("--compile needs --warmup >= 1, so compilation is not timed.")
    runtime = getattr(args, "runtime", "pytorch")  # only `bench inference` has --runtime; `bench train` is PyTorch
    if runtime == "onnxruntime":
        check_onnxruntime_target(device, args.dtype, args.compile)
    return RunTarget(device, DTYPES[args.dtype], args.attn_implementation, args.compile, runtime)
