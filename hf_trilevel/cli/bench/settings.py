"""The TriLevel operating points a benchmark compares: one `Setting` per row, from the command-line options.

Every combination of `--keep-rates`, `--attention-keep-rates`, `--fusion`, `--token-merge-r`, `--token-selector`
(and the adaptive selector's `--token-keep-mass`) is one row, on every slimmed shape (`slimmed_shapes.py`);
`bench train` adds its dense/sparse rows. The options are checked here, before any model is built, and bad ones raise
`CommandError` with the flag, the value and the allowed range; a combination the model refuses (token merging with
attention sparsity or the adaptive selector, or an `r` a layer has too few tokens for at a keep rate, checked with
the shape in `models.check_setting_configs`) is refused, not skipped. `bench inference` and `bench train` share this
vocabulary; the model shape and the hardware the rows run on are in `options.py`.
"""

import argparse
import dataclasses
import itertools
from dataclasses import dataclass

from ...modeling.token_selectors import BUILT_IN_TOKEN_SELECTORS
from ...modeling.value_checks import check_fraction, check_int, check_keep_rate
from ..errors import CommandError, checked_option
from .slimmed_shapes import slimmed_shapes

DEFAULT_KEEP_MASSES = [0.9]
DENSE_NAME = "dense ViT (transformers)"


@dataclass(frozen=True)
class Setting:
    """One TriLevel operating point.

    `token_keep_mass` applies to `"adaptive"` only. `token_merge_r` is the patch tokens every layer merges away
    (token merging, ToMe), 0 for none. `matched_keep_rate` marks an adaptive row whose mass is calibrated
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
    token_merge_r: int = 0

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
        else:
            if self.dense_sparse_keep_rates is not None:
                name = "dense/sparse " + "/".join(f"{rate:g}" for rate in self.dense_sparse_keep_rates)
            else:
                name = f"keep {self.token_keep_rate:g}"
            if self.token_selector == "adaptive":
                name += f", adaptive mass {self.token_keep_mass:g}"
            elif self.token_selector != "class_attention":
                name += f", {self.token_selector}"
        if self.attention_keep_rate < 1.0:
            name += f", attention {self.attention_keep_rate:g}"
        name += ", fusion" if self.token_fusion else ""
        name += f", merge r={self.token_merge_r}" if self.token_merge_r else ""
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
            "token_merge_r": self.token_merge_r,
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


def add_setting_arguments(parser: argparse.ArgumentParser, keep_rates: list[float], attention: list[float]) -> None:
    group = parser.add_argument_group("TriLevel settings (every combination is measured)")
    group.add_argument("--keep-rates", type=float, nargs="+", default=keep_rates, metavar="RATE",
                       help="token_keep_rate values, each in (0, 1]")  # fmt: skip
    group.add_argument("--attention-keep-rates", type=float, nargs="+", default=attention, metavar="RATE",
                       help="attention_keep_rate values, each in (0, 1]")  # fmt: skip
    group.add_argument("--fusion", choices=["off", "on", "both"], default="off", help="token_fusion")
    group.add_argument("--token-merge-r", type=int, nargs="+", default=[0], metavar="R",
                       help="token_merge_r values, each an integer >= 0: patch tokens every layer merges away (token "
                            "merging, ToMe; 0: none); above 0 only with --attention-keep-rates 1 and a fixed-count "
                            "selector")  # fmt: skip
    group.add_argument("--token-selector", nargs="+", default=["class_attention"], metavar="SELECTOR",
                       help=f"token selectors, each one of {', '.join(BUILT_IN_TOKEN_SELECTORS)}; each gets its own "
                            "model with the same weights")  # fmt: skip
    group.add_argument("--token-keep-mass", type=float, nargs="+", default=None, metavar="MASS",
                       help=f"token_keep_mass values of the adaptive selector, each in (0, 1] (default: "
                            f"{' '.join(map(str, DEFAULT_KEEP_MASSES))}; 1.0 is fixed-rate pruning)")  # fmt: skip
    group.add_argument("--token-count-buckets", type=int, default=None, metavar="N",
                       help="token_count_buckets of the adaptive selector (default: the config's)")  # fmt: skip


def settings(args: argparse.Namespace) -> list[Setting]:
    """Every combination of keep rate, attention keep rate, fusion, merge count and selector (and mass, for
    adaptive), on every slimmed shape (`slimmed_shapes`; the full-width one alone without the density flags).

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
    merge_counts = token_merge_counts(args, selectors)
    combos = itertools.product(
        dict.fromkeys(args.keep_rates), dict.fromkeys(args.attention_keep_rates), fusion, merge_counts
    )
    chosen = []
    for keep, attention, fused, merge_r in combos:
        if merge_r:  # fixed-count selectors only (`token_merge_counts`)
            chosen.extend(Setting(keep, attention, fused, selector, token_merge_r=merge_r) for selector in selectors)
            continue
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
        if selector not in BUILT_IN_TOKEN_SELECTORS:
            choices = ", ".join(BUILT_IN_TOKEN_SELECTORS)
            raise CommandError(f"`--token-selector` must be one of {choices}, got {selector!r}.")
    return list(dict.fromkeys(args.token_selector))


def token_merge_counts(args: argparse.Namespace, selectors: list[str]) -> list[int]:
    """`--token-merge-r`, checked: each an integer >= 0, and above 0 only where the model can merge (no attention
    sparsity, no per-image counts). Whether a shape has the tokens for `r` is checked with the shape
    (`models.check_setting_configs`)."""
    counts = [checked_option(check_int, "--token-merge-r", r, low=0) for r in getattr(args, "token_merge_r", [0])]
    merging = [r for r in dict.fromkeys(counts) if r]
    if not merging:
        return list(dict.fromkeys(counts))
    sparse = [rate for rate in args.attention_keep_rates if rate < 1.0]
    if sparse:
        raise CommandError(
            f"--token-merge-r {merging[0]} cannot be combined with --attention-keep-rates {sparse[0]:g}: attention "
            "sparsity masks connections among one pruning layer's tokens, and merging changes the tokens in every "
            "layer. Give `--attention-keep-rates 1` with merge counts above 0."
        )
    if "adaptive" in selectors:
        raise CommandError(
            f"--token-merge-r {merging[0]} cannot be combined with `--token-selector adaptive` (per-image token "
            "counts): every image merges the same r. Time adaptive rows with `--token-merge-r 0`."
        )
    return list(dict.fromkeys(counts))


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
