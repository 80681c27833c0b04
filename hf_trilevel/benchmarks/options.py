"""What a benchmark compares: the model shape, the TriLevel operating points, and the device and dtype to run on.

Every benchmark builds a dense `transformers.ViTForImageClassification` and a `TriLevelViTForImageClassification`
with the *same weights*, so a measured difference is the cost of sparsity and nothing else. Arguments are checked
here, before any model is built, and bad ones raise `CommandError` with the argument name and the allowed range.
"""

import argparse
import itertools
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from transformers import ViTConfig, ViTForImageClassification
from transformers.utils import is_flash_attn_2_available

from ..configuration_trilevel_vit import TriLevelViTConfig
from ..errors import CommandError, checked_option
from ..modeling_trilevel_vit import TriLevelViTForImageClassification
from ..value_checks import as_pair, check_fraction, check_int, check_keep_rate

PRESETS: dict[str, dict[str, int]] = {
    "deit-tiny": {"hidden_size": 192, "num_hidden_layers": 12, "num_attention_heads": 3, "intermediate_size": 768},
    "deit-small": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "intermediate_size": 1536},
    "deit-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
}
PRESET_IMAGE = {"image_size": 224, "patch_size": 16, "num_labels": 1000}
SHAPE_FIELDS = ("image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "num_labels")  # fmt: skip
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTENTION_BACKENDS = ("sdpa", "eager", "flash_attention_2")
DENSE_NAME = "dense ViT (transformers)"


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

    def vit_kwargs(self) -> dict:
        return {name: getattr(self, name) for name in SHAPE_FIELDS}


@dataclass(frozen=True)
class Setting:
    """One TriLevel operating point."""

    token_keep_rate: float = 1.0
    attention_keep_rate: float = 1.0
    token_fusion: bool = False

    @property
    def name(self) -> str:
        name = f"keep {self.token_keep_rate:g}"
        if self.attention_keep_rate < 1.0:
            name += f", attention {self.attention_keep_rate:g}"
        return name + (", fusion" if self.token_fusion else "")


@dataclass(frozen=True)
class RunTarget:
    """Where and how the models run."""

    device: torch.device
    dtype: torch.dtype
    attn_implementation: str
    compile: bool = False

    @property
    def compiled_on_cpu(self) -> bool:
        """Compiled graphs bypass the CPU memory tracker's dispatch mode, so no CPU memory figure is taken then."""
        return self.compile and self.device.type != "cuda"


def add_shape_arguments(parser: argparse.ArgumentParser, default_preset: str = "deit-tiny") -> None:
    group = parser.add_argument_group("model shape (a preset; any field given below replaces the preset's)")
    group.add_argument("--preset", default=default_preset, help=f"one of {', '.join(PRESETS)}")
    for name in SHAPE_FIELDS:
        group.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, metavar="N")
    group.add_argument("--token-prune-layers", type=int, nargs="+", default=None, metavar="LAYER",
                       help="0-indexed pruning layers (default: 1/4, 1/2 and 3/4 of the depth)")  # fmt: skip


def add_setting_arguments(parser: argparse.ArgumentParser, keep_rates: list[float], attention: list[float]) -> None:
    group = parser.add_argument_group("TriLevel settings (every combination is measured)")
    group.add_argument("--keep-rates", type=float, nargs="+", default=keep_rates, metavar="RATE",
                       help="token_keep_rate values, each in (0, 1]")  # fmt: skip
    group.add_argument("--attention-keep-rates", type=float, nargs="+", default=attention, metavar="RATE",
                       help="attention_keep_rate values, each in (0, 1]")  # fmt: skip
    group.add_argument("--fusion", choices=["off", "on", "both"], default="off", help="token_fusion")


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
    if args.preset not in PRESETS:
        raise CommandError(f"--preset must be one of {', '.join(PRESETS)}, got {args.preset!r}.")
    values = {**PRESETS[args.preset], **PRESET_IMAGE}
    overridden = {name: getattr(args, name) for name in SHAPE_FIELDS if getattr(args, name) is not None}
    for name, value in overridden.items():
        checked_option(check_int, f"--{name.replace('_', '-')}", value)
    values.update(overridden)
    name = args.preset if not overridden else "custom (" + ", ".join(f"{k}={v}" for k, v in overridden.items()) + ")"
    layers = tuple(args.token_prune_layers) if args.token_prune_layers is not None else None
    shape = ModelShape(name=name, token_prune_layers=layers, **values)
    check_divides(shape.vit_kwargs())
    try:  # the config's own checks name the field and its range (prune layers ...)
        TriLevelViTConfig(**shape.vit_kwargs(), token_prune_layers=list(layers) if layers else None)
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


def settings(args: argparse.Namespace) -> list[Setting]:
    for flag, rates in (("--keep-rates", args.keep_rates), ("--attention-keep-rates", args.attention_keep_rates)):
        for rate in rates:
            checked_option(check_keep_rate, flag, rate)
    fusion = {"off": [False], "on": [True], "both": [False, True]}[args.fusion]
    combos = itertools.product(dict.fromkeys(args.keep_rates), dict.fromkeys(args.attention_keep_rates), fusion)
    chosen = [Setting(keep, attention, fused) for keep, attention, fused in combos]
    names = [setting.name for setting in chosen]
    if len(set(names)) < len(names):
        raise CommandError(f"--keep-rates / --attention-keep-rates hold values that print alike: {names}.")
    return chosen


def check_example_keep_fractions(fractions: list[float]) -> None:
    """`--example-keep-fractions`: each a share of the data in (0, 1] (also for --time-to-accuracy)."""
    for fraction in fractions:
        checked_option(check_fraction, "--example-keep-fractions", fraction)


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
    return RunTarget(device, DTYPES[args.dtype], args.attn_implementation, args.compile)


def switch_setting(model: TriLevelViTForImageClassification, setting: Setting) -> Callable[[], None]:
    """A call that puts `model` at `setting`; run untimed before each timed call of that setting."""

    def apply() -> None:
        model.set_keep_rates(setting.token_keep_rate, setting.attention_keep_rate)
        model.config.token_fusion = setting.token_fusion

    return apply


def compile_models(target: RunTarget, num_settings: int, *models: torch.nn.Module) -> list:
    """`torch.compile` each model if asked, allowing one graph per setting.

    The TriLevel model's rates are config values that dynamo specialises on, so each setting is its own graph;
    beyond `recompile_limit` (8 by default) dynamo would silently fall back to eager and time that instead.
    """
    if not target.compile:
        return list(models)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, num_settings + 2)
    return [torch.compile(model) for model in models]


def trilevel_config(shape: ModelShape, setting: Setting = Setting(), **extra) -> TriLevelViTConfig:
    layers = list(shape.token_prune_layers) if shape.token_prune_layers else None
    return TriLevelViTConfig(**shape.vit_kwargs(), token_prune_layers=layers, **asdict(setting), **extra)


def build_models(
    shape: ModelShape, target: RunTarget, cast_weights: bool = True
) -> tuple[ViTForImageClassification, TriLevelViTForImageClassification]:
    """Dense ViT and TriLevel ViT with identical weights on the target device (weights cast for inference)."""
    torch.manual_seed(0)
    backend = {"attn_implementation": target.attn_implementation}
    dense = ViTForImageClassification(ViTConfig(**shape.vit_kwargs(), **backend))
    trilevel = TriLevelViTForImageClassification(trilevel_config(shape, **backend))
    trilevel.load_state_dict(dense.state_dict())
    dtype = target.dtype if cast_weights else torch.float32
    return dense.to(target.device, dtype), trilevel.to(target.device, dtype)
