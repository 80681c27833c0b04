"""What a benchmark compares: the model shape, the TriLevel operating points, and the device and dtype to run on.

The command-line options and the checked values they become (`ModelShape`, `Setting`, `RunTarget`). The models
they describe are built in `models.py`, with random (seeded) weights or those of a saved folder (`--model`).
Arguments are checked here, before any model is built, and bad ones raise `CommandError` with the argument name and
the allowed range. The slimmed shapes' options live in `slimmed_shapes.py`; what stays here is one vocabulary that
`bench inference` and `bench train` share (every `Setting` field is one of these options), so splitting it further
would split each option from the value it becomes.
"""

import argparse
import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.utils import is_flash_attn_2_available

from ...modeling.configuration_trilevel_vit import TriLevelViTConfig
from ...modeling.value_checks import as_pair, check_fraction, check_int, check_keep_rate
from ..errors import CommandError, checked_option
from .slimmed_shapes import slimmed_shapes

TOKEN_SELECTORS = ("class_attention", "learned", "adaptive")
# Fields of a `--model` folder's config that its models keep (the shape comes from `ModelShape`, sparsity per row):
# those the dense ViT shares, then the TriLevel-only ones.
DEFAULT_KEEP_MASSES = [0.9]

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
    checkpoint: str | None = None  # a saved TriLevel or ViT folder whose weights every model starts from (`--model`)

    def vit_kwargs(self) -> dict:
        return {name: getattr(self, name) for name in SHAPE_FIELDS}


@dataclass(frozen=True)
class Setting:
    """One TriLevel operating point.

    `token_keep_mass` applies to `"adaptive"` only. `matched_keep_rate` marks an adaptive row whose mass is calibrated
    on the benchmark batch (`--match-fixed-rate`) so that it keeps, on average, as many patch tokens after the last
    pruning layer as fixed-rate pruning at that keep rate; `token_keep_rate` is then its per-image upper bound.
    """

    token_keep_rate: float = 1.0
    attention_keep_rate: float = 1.0
    token_fusion: bool = False
    token_selector: str = "class_attention"
    token_keep_mass: float = 1.0
    matched_keep_rate: float | None = None
    # A dense/sparse training row (`bench train --dense-sparse-keep-rates`): one step trains every pass of
    # `DenseSparseTraining` at these rates; `token_keep_rate` is then the sparsest, the model's own setting.
    dense_sparse_keep_rates: tuple[float, ...] | None = None
    dense_sparse_schedule: str = "dense_and_one"
    distillation: str = "none"
    # A physically slimmed shape (`bench inference --head-densities / --neuron-densities`): every layer keeps
    # `slimmed_size(density, size)` heads and MLP neurons; 1.0 and 1.0 is the full-width model.
    head_density: float = 1.0
    neuron_density: float = 1.0

    @property
    def slimmed(self) -> bool:
        return self.head_density < 1.0 or self.neuron_density < 1.0

    @property
    def model_key(self) -> tuple[str, float, float]:
        """Which model runs this setting: one per token selector and slimmed shape (rates switch on a built model)."""
        return self.token_selector, self.head_density, self.neuron_density

    @property
    def name(self) -> str:
        if self.matched_keep_rate is not None:  # the calibrated mass is a result, so it stays out of the name
            name = f"adaptive at keep {self.matched_keep_rate:g} tokens"
        elif self.dense_sparse_keep_rates is not None:
            name = "dense/sparse " + "/".join(f"{rate:g}" for rate in self.dense_sparse_keep_rates)
            if self.token_selector == "adaptive":
                name += f", adaptive mass {self.token_keep_mass:g}"
            elif self.token_selector != "class_attention":
                name += f", {self.token_selector}"
        else:
            name = f"keep {self.token_keep_rate:g}"
            if self.token_selector == "adaptive":
                name += f", adaptive mass {self.token_keep_mass:g}"
            elif self.token_selector != "class_attention":
                name += f", {self.token_selector}"
        if self.attention_keep_rate < 1.0:
            name += f", attention {self.attention_keep_rate:g}"
        name += ", fusion" if self.token_fusion else ""
        if self.dense_sparse_keep_rates is not None:
            name += ", every rate" if self.dense_sparse_schedule == "every_rate" else ""
            name += ", self-distillation" if self.distillation == "self" else ""
        if self.slimmed:
            name += f", heads {self.head_density:g}, neurons {self.neuron_density:g}"
        return name

    def config_kwargs(self) -> dict:
        """The `TriLevelViTConfig` fields this setting sets."""
        kwargs = {
            "token_keep_rate": self.token_keep_rate,
            "attention_keep_rate": self.attention_keep_rate,
            "token_fusion": self.token_fusion,
            "token_selector": self.token_selector,
        }
        if self.token_selector == "adaptive":
            kwargs["token_keep_mass"] = self.token_keep_mass
        return kwargs

    def fixed_rate_twin(self) -> "Setting":
        """The class-attention setting an adaptive row is compared with: same keep rate (the matched one for a
        calibrated row), attention and fusion."""
        keep = self.token_keep_rate if self.matched_keep_rate is None else self.matched_keep_rate
        return Setting(
            keep, self.attention_keep_rate, self.token_fusion,
            head_density=self.head_density, neuron_density=self.neuron_density,
        )  # fmt: skip


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
    group.add_argument("--model", default=None, metavar="FOLDER",
                       help="a saved TriLevel or ViT folder: its shape and weights replace the preset's (random) ones; "
                            "with it, no shape field may be given")  # fmt: skip


def add_setting_arguments(parser: argparse.ArgumentParser, keep_rates: list[float], attention: list[float]) -> None:
    group = parser.add_argument_group("TriLevel settings (every combination is measured)")
    group.add_argument("--keep-rates", type=float, nargs="+", default=keep_rates, metavar="RATE",
                       help="token_keep_rate values, each in (0, 1]")  # fmt: skip
    group.add_argument("--attention-keep-rates", type=float, nargs="+", default=attention, metavar="RATE",
                       help="attention_keep_rate values, each in (0, 1]")  # fmt: skip
    group.add_argument("--fusion", choices=["off", "on", "both"], default="off", help="token_fusion")
    group.add_argument("--token-selector", nargs="+", default=["class_attention"], metavar="SELECTOR",
                       help=f"token selectors, each one of {', '.join(TOKEN_SELECTORS)}; each gets its own model with "
                            "the same weights")  # fmt: skip
    group.add_argument("--token-keep-mass", type=float, nargs="+", default=None, metavar="MASS",
                       help=f"token_keep_mass values of the adaptive selector, each in (0, 1] (default: "
                            f"{' '.join(map(str, DEFAULT_KEEP_MASSES))}; 1.0 is fixed-rate pruning)")  # fmt: skip
    group.add_argument("--token-count-buckets", type=int, default=None, metavar="N",
                       help="token_count_buckets of the adaptive selector (default: the config's)")  # fmt: skip


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
    if getattr(args, "model", None) is not None:
        return checkpoint_shape(args)
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


def checkpoint_shape(args: argparse.Namespace) -> ModelShape:
    """The shape of the saved folder `--model` names; shape flags are refused, the pruning layers may be replaced."""
    given = [f"--{name.replace('_', '-')}" for name in SHAPE_FIELDS if getattr(args, name) is not None]
    if given:
        raise CommandError(f"{', '.join(given)} do not apply with --model (the saved folder fixes the shape).")
    folder = Path(args.model).expanduser()
    if not (folder / "config.json").is_file():
        raise CommandError(f"--model {args.model}: no config.json there; give a folder written by save_pretrained.")
    try:
        config = TriLevelViTConfig.from_pretrained(str(folder))
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
        name=f"{folder.name} (--model)", token_prune_layers=tuple(layers), checkpoint=str(folder), **values
    )
    try:
        TriLevelViTConfig(**shape.vit_kwargs(), token_prune_layers=list(layers))
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
    """Every combination of keep rate, attention keep rate, fusion and selector (and mass, for adaptive), on every
    slimmed shape (`slimmed_shapes`; the full-width one alone without the density flags).

    With `--match-fixed-rate`, each adaptive setting instead targets the mean kept count of fixed-rate pruning at
    its keep rate, bounded above by `--match-max-keep-rate`; its mass is calibrated later, on the benchmark batch.
    """
    for flag, rates in (("--keep-rates", args.keep_rates), ("--attention-keep-rates", args.attention_keep_rates)):
        for rate in rates:
            checked_option(check_keep_rate, flag, rate)
    selectors = token_selectors(args)
    masses = keep_masses(args, selectors)
    matched, cap = matching(args, selectors)
    fusion = {"off": [False], "on": [True], "both": [False, True]}[args.fusion]
    combos = itertools.product(dict.fromkeys(args.keep_rates), dict.fromkeys(args.attention_keep_rates), fusion)
    chosen = []
    for keep, attention, fused in combos:
        for selector in selectors:
            if selector != "adaptive":
                chosen.append(Setting(keep, attention, fused, selector))
            elif matched:
                chosen.append(Setting(cap, attention, fused, "adaptive", 1.0, matched_keep_rate=keep))
            else:
                chosen.extend(Setting(keep, attention, fused, "adaptive", mass) for mass in masses)
    chosen = [
        dataclasses.replace(setting, head_density=heads, neuron_density=neurons)
        for heads, neurons in slimmed_shapes(args)
        for setting in chosen
    ]
    names = [setting.name for setting in chosen]
    if len(set(names)) < len(names):
        flags = ["--keep-rates", "--attention-keep-rates", "--token-keep-mass"]
        flags += [
            flag
            for flag in ("--head-densities", "--neuron-densities")
            if getattr(args, flag[2:].replace("-", "_"), None)
        ]
        raise CommandError(f"{' / '.join(flags)} hold values that print alike: {names}.")
    return chosen


def dense_sparse_settings(args: argparse.Namespace, base: list[Setting]) -> list[Setting]:
    """`bench train --dense-sparse-keep-rates`: one dense/sparse training row per attention rate, fusion, selector
    and mass of the `base` rows (the keep rate is the dense/sparse one); none without the flag.

    `--distillation` and `--dense-sparse-schedule` apply to these rows only, so they are refused without it.
    """
    rates = getattr(args, "dense_sparse_keep_rates", None)
    distillation, schedule = getattr(args, "distillation", None), getattr(args, "dense_sparse_schedule", None)
    if rates is None:
        for flag, value in (("--distillation", distillation), ("--dense-sparse-schedule", schedule)):
            if value is not None:
                raise CommandError(f"{flag} applies to dense/sparse rows: add `--dense-sparse-keep-rates RATE ...`.")
        return []
    for rate in rates:
        checked_option(check_keep_rate, "--dense-sparse-keep-rates", rate)
    if len(set(rates)) != len(rates) or len(rates) < 2:
        raise CommandError(f"--dense-sparse-keep-rates must be at least two distinct keep rates, got {rates}.")
    ordered = tuple(sorted(rates, reverse=True))
    rows = {}
    for setting in base:
        if setting.matched_keep_rate is not None:
            continue  # a calibrated mass belongs to its own keep rate
        row = Setting(
            ordered[-1], setting.attention_keep_rate, setting.token_fusion, setting.token_selector,
            setting.token_keep_mass, dense_sparse_keep_rates=ordered,
            dense_sparse_schedule=schedule or "dense_and_one", distillation=distillation or "self",
        )  # fmt: skip
        rows[row.name] = row
    return list(rows.values())


def token_selectors(args: argparse.Namespace) -> list[str]:
    """`--token-selector`, checked and without repeats."""
    for selector in args.token_selector:
        if selector not in TOKEN_SELECTORS:
            raise CommandError(f"`--token-selector` must be one of {', '.join(TOKEN_SELECTORS)}, got {selector!r}.")
    return list(dict.fromkeys(args.token_selector))


def keep_masses(args: argparse.Namespace, selectors: list[str]) -> list[float]:
    """`--token-keep-mass`, checked: each in (0, 1], given only where an adaptive row uses it."""
    if args.token_keep_mass is None:
        return DEFAULT_KEEP_MASSES
    for mass in args.token_keep_mass:
        checked_option(check_fraction, "--token-keep-mass", mass)
    if "adaptive" not in selectors:
        raise CommandError("--token-keep-mass applies to the adaptive selector only: add `--token-selector adaptive`.")
    if getattr(args, "match_fixed_rate", False):
        raise CommandError("--token-keep-mass does not apply with --match-fixed-rate: the mass is calibrated there.")
    return list(dict.fromkeys(args.token_keep_mass))


def matching(args: argparse.Namespace, selectors: list[str]) -> tuple[bool, float]:
    """`--match-fixed-rate` (only with adaptive rows) and the matched rows' upper bound `--match-max-keep-rate`."""
    matched, cap = getattr(args, "match_fixed_rate", False), getattr(args, "match_max_keep_rate", None)
    if matched and "adaptive" not in selectors:
        raise CommandError("--match-fixed-rate calibrates adaptive rows: add `--token-selector adaptive`.")
    if cap is not None and not matched:
        raise CommandError("--match-max-keep-rate applies with --match-fixed-rate only.")
    return matched, 1.0 if cap is None else checked_option(check_keep_rate, "--match-max-keep-rate", cap)


def selector_config(args: argparse.Namespace) -> dict:
    """Config fields every TriLevel model of a benchmark shares (`--token-count-buckets`)."""
    if args.token_count_buckets is None:
        return {}
    return {"token_count_buckets": checked_option(check_int, "--token-count-buckets", args.token_count_buckets)}


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
