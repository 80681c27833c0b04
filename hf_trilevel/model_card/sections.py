"""The variable parts of a model card, each a pure function of plain data: a config, a metrics dict, a training dict.

`hf_trilevel.model_card.builder.build_model_card` fills the template with these. Nothing here knows about `Trainer` or
the techniques' objects, so a card renders the same from a live run, a saved folder or hand-written numbers; each
technique's own text comes from its folder's `card.py`, found by name (`hf_trilevel.model_card.techniques`).

The token selector (`config.token_selector`) shapes the method text, the settings (adaptive: mass, floor, importance)
and the FLOPs rows: `"adaptive"` keeps per-image counts, so its config fixes only a cap, and the measured mean counts
and FLOPs are shown when the metrics carry them.

A dense/sparse checkpoint (`config.dense_sparse_keep_rates`) serves several keep rates with one set of weights: its
card gets an "Operating points" section, the measured table when the run left `operating_points.json`
(`hf_trilevel.token_training.operating_points`), else the rates it was trained for.

A merging checkpoint (`config.token_merge_r`, ToMe) gets a fourth method step, its merge counts and the tokens every
layer leaves in its settings (`hf_trilevel.evaluation.flops.layer_tokens`: drop, then merge), and usage lines that
change `r` at load or on the loaded model; its FLOPs rows count the merges (`hf_trilevel.evaluation.flops`).

Model sizes are read per layer (`config.layer_num_attention_heads(i)`, `config.layer_intermediate_size(i)`), so a
structurally slimmed checkpoint shows its real widths, and its FLOPs against the full-width shape it was cut from; a
config without those methods is uniform. Weight sparsity (`WeightSparsity.card_settings()`, the
`weight_sparsity` training entry) is described in the training section, and the share of non-zero weights a
checkpoint holds (counted by `hf_trilevel.model_card.builder.model_nonzero_weights`) in its settings.

Every registered family (`hf_trilevel.modeling.FAMILY_CLASSES`) gets the same card; what differs is read from its
config and its `FamilyText`: the title, what the model is, the files its code lives in, the class the usage snippet's
Auto class loads, and the tokens before the patches (`config.num_prefix_tokens`: ViT's class token, DeiT's class and
distillation tokens, none for SigLIP), which rank the patches and keep their attention rows.
"""

from ..evaluation.flops import dense_config, flops_speedup_limit, forward_flops, full_width_config, layer_tokens
from ..evaluation.formatting import format_duration, format_flops
from ..evaluation.patches import num_patches
from ..evaluation.token_counts import FIXED_COUNT_SELECTORS, KEPT_TOKENS_METRIC
from ..modeling.configuration_trilevel_vit import TriLevelViTConfig
from ..modeling.token_reduction import token_schedule
from ..modeling.value_checks import as_pair
from ..token_training.card import temperature_text
from ..weight_sparsity.card import nonzero_weights_text
from .family_text import input_tokens_text, ranking_attention_text
from .techniques import TECHNIQUE_CARDS, settings_cell, technique_rows, technique_sentences

# Keys of the card's `training` dict that are not a technique's, with the label each gets in the hyperparameter table.
RUN_FIELDS = {
    "num_train_epochs": "epochs",
    "num_train_examples": "training examples",
    "total_train_batch_size": "batch size (all processes, with gradient accumulation)",
    "learning_rate": "peak learning rate",
    "lr_scheduler_type": "learning-rate schedule",
    "weight_decay": "weight decay",
    "seed": "seed",
}
# Every key of the card's `training` dict with its label: the run's, then each technique's (`TECHNIQUE_CARDS`).
TRAINING_FIELDS = {**RUN_FIELDS, **{name: card.label for name, card in TECHNIQUE_CARDS.items()}}


def table_rows(rows: list[tuple[str, str]]) -> str:
    """Markdown table rows; a `|` inside a value would end its cell, so it is shown as `/`."""
    return "\n".join(f"| {name} | {value.replace('|', '/')} |" for name, value in rows)


def layer_sizes(config: TriLevelViTConfig) -> tuple[list[int], list[int]]:
    """Attention heads and MLP width of every layer, from the config's per-layer methods (the one source of sizes)."""
    layers = range(config.num_hidden_layers)
    return [config.layer_num_attention_heads(i) for i in layers], [config.layer_intermediate_size(i) for i in layers]


def architecture_text(config: TriLevelViTConfig) -> str:
    """`6 layers, hidden size 128, 4 heads, MLP 256`; per-layer lists where the layers differ."""
    heads, widths = layer_sizes(config)
    heads_text = f"{heads[0]} heads" if len(set(heads)) == 1 else f"heads per layer {heads}"
    mlp_text = f"MLP {widths[0]}" if len(set(widths)) == 1 else f"MLP per layer {widths}"
    return f"{config.num_hidden_layers} layers, hidden size {config.hidden_size}, {heads_text}, {mlp_text}"


def size_text(value: int | list[int] | tuple[int, int]) -> str:
    """An image or patch size as `HxW`."""
    return "x".join(map(str, as_pair(value)))


def prune_layers_text(config: TriLevelViTConfig) -> str:
    layers = config.token_prune_layers
    if not layers:
        return f"none of the {config.num_hidden_layers} layers: this checkpoint has no pruning layers"
    return f"layers {', '.join(map(str, layers))} (0-indexed) of {config.num_hidden_layers}"


def selector_name(config: TriLevelViTConfig) -> str:
    return getattr(config, "token_selector", "class_attention")


def importance_text(config: TriLevelViTConfig) -> str:
    if getattr(config, "token_importance", "class_attention") == "learned":
        return f"learned scores: a small scorer per pruning layer added to the log of {ranking_attention_text(config)}"
    return f"{ranking_attention_text(config)}, averaged over heads"


def token_method_text(config: TriLevelViTConfig, training: dict | None = None) -> str:
    """Step 1 of the card's "Method": how this checkpoint's token selector picks the kept patches."""
    selector = selector_name(config)
    rate = "`ceil(n * token_keep_rate)`"
    compounds = "the rate compounds from one pruning layer to the next."
    attention = ranking_attention_text(config)
    if selector == "class_attention":
        return (
            f"Every patch token is scored by {attention}, averaged over heads, and the top {rate} are kept; {compounds}"
        )
    if selector == "learned":
        return (
            "Every patch token is scored by a small learned scorer of its pruning layer (LayerNorm → Linear(hidden, "
            "hidden/4) → GELU → Linear(hidden/4, 1), its last layer initialised at zero so that it starts from "
            f"class-attention ranking) added to the log of {attention}, and the top "
            f"{rate} are kept; {compounds} In training the choice is a Gumbel top-k with a straight-through hard "
            "decision, so the scorer learns from the task loss while dropped tokens are removed all the same"
            f"{temperature_text((training or {}).get('token_selector_temperature'))}."
        )
    if selector == "adaptive":
        return (
            "Each image keeps its own number of patch tokens (SaiT-style adaptive pruning): the fewest whose share "
            f"of the importance ({importance_text(config)}), renormalised over its current patches, reaches "
            f"`token_keep_mass` = {float(config.token_keep_mass):g}, at most {rate} and at least "
            "`ceil(n * min(token_min_keep_rate, token_keep_rate))` of its `n` current patches. Easy images keep fewer "
            "tokens than hard ones; a batch is padded to its largest count (in at most `token_count_buckets` groups "
            "of similar counts) and padded tokens are masked out of attention."
        )
    return f"Patch tokens are picked by the registered `{selector}` token selector at {rate} per layer."


def merge_r_text(config: TriLevelViTConfig) -> str:
    """`8 in every layer` or `per layer [8, 8, 6, 6]`: `config.token_merge_r` as a reader reads it."""
    merge_r = config.token_merge_r
    return f"{merge_r} in every layer" if isinstance(merge_r, int) else f"per layer {list(merge_r)}"


def merging_text(config: TriLevelViTConfig) -> str:
    """Step 4 of the card's "Method" for a merging checkpoint (ToMe), with its leading newline; empty otherwise."""
    if not config.merges_tokens():
        return ""
    proportional = (
        " A merged token counts as the patches it holds in attention (`log(size)` is added to its attention logits: "
        "ToMe's proportional attention)."
        if config.token_merge_proportional_attention
        else " Attention treats a merged token as one token (proportional attention is off)."
    )
    return (
        "\n4. **Merging.** In every layer, not only the pruning layers, between the attention block and the MLP (after "
        "a pruning layer's drop), the patch tokens are split alternately into two sets and the `r` tokens of the first "
        "set most similar to a token of the second (cosine similarity of the attention keys, averaged over heads) are "
        "merged into it (ToMe's bipartite soft matching): a merged token is the size-weighted mean of the patches it "
        f"holds. Here `token_merge_r` is {merge_r_text(config)}.{proportional}"
    )


def fusion_text(config: TriLevelViTConfig) -> str:
    if config.token_fusion:
        return "The dropped tokens are fused into one extra token, their attention-weighted mean (EViT-style)."
    return "Dropped tokens are discarded."


def selector_rows(config: TriLevelViTConfig) -> list[tuple[str, str]]:
    """The token selector and the config fields it reads (adaptive: mass, floor, importance, buckets)."""
    selector = selector_name(config)
    rows = [("`token_selector`", f"`{selector}`")]
    if selector == "adaptive":
        for name in ("token_keep_mass", "token_min_keep_rate"):
            rows.append((f"`{name}`", str(float(getattr(config, name)))))
        rows.append(("`token_importance`", f"`{getattr(config, 'token_importance', 'class_attention')}`"))
        if hasattr(config, "token_count_buckets"):
            rows.append(("`token_count_buckets`", str(config.token_count_buckets)))
    return rows


def kept_tokens_text(config: TriLevelViTConfig) -> str:
    """`45 → 32 → 22 of 64`; for adaptive the range each image's count lies in (floor chain to cap chain)."""
    patches = num_patches(config.image_size, config.patch_size)
    layers = len(config.token_prune_layers)
    counts = token_schedule(patches, config.token_keep_rate, layers)
    if not counts:
        return f"all {patches}"
    if config.merges_tokens():  # a fixed-count selector: every image keeps the schedule, less the merges
        tokens = layer_tokens(config)
        counts = [tokens[layer].after_merge for layer in config.token_prune_layers]
        return f"{' → '.join(map(str, counts))} of {patches} (after the drop and the merge)"
    if selector_name(config) != "adaptive":
        return f"{' → '.join(map(str, counts))} of {patches}"
    floor = token_schedule(patches, min(float(config.token_min_keep_rate), config.token_keep_rate), layers)
    return f"per image, between {' → '.join(map(str, floor))} and {' → '.join(map(str, counts))} of {patches}"


def measured_kept_tokens(config: TriLevelViTConfig, metrics: dict) -> list[float] | None:
    """The measured mean kept patch tokens per pruning layer from `metrics` (`KEPT_TOKENS_METRIC`), or None unless
    every pruning layer has one."""
    keys = [KEPT_TOKENS_METRIC.format(layer=layer) for layer in config.token_prune_layers]
    if not keys or any(key not in metrics for key in keys):
        return None
    return [float(metrics[key]) for key in keys]


def settings_rows(
    config: TriLevelViTConfig, num_parameters: int | None, nonzero_weights: tuple[int, int] | None = None
) -> str:
    """The "Settings of this checkpoint" table: keep rates, selector, token schedule, architecture, input, classes.

    `nonzero_weights` (non-zero, total) over the weight matrices sparse training masks adds a row when some are zero.
    """
    patches = num_patches(config.image_size, config.patch_size)
    dense = " (dense)" if config.attention_keep_rate >= 1 else ""
    rows = [
        ("`token_keep_rate`", str(float(config.token_keep_rate))),
        ("`token_prune_layers`", str(list(config.token_prune_layers))),
        ("`token_fusion`", str(bool(config.token_fusion))),
        ("`attention_keep_rate`", str(float(config.attention_keep_rate)) + dense),
        *selector_rows(config),
        *merge_rows(config),
        ("patch tokens kept after each pruning layer", kept_tokens_text(config)),
        ("architecture", architecture_text(config)),
        *([("non-zero weights", nonzero_weights_text(nonzero_weights))] if _has_zeros(nonzero_weights) else []),
        (
            "input",
            f"{size_text(config.image_size)} px, {config.num_channels} channels, "
            f"{size_text(config.patch_size)} patches ({input_tokens_text(config, patches)})",
        ),
        ("classes", str(config.num_labels)),
    ]
    if num_parameters is not None:
        rows.append(("parameters", f"{num_parameters:,}"))
    return table_rows(rows)


def merge_rows(config: TriLevelViTConfig) -> list[tuple[str, str]]:
    """A merging checkpoint's `token_merge_r`, proportional attention and the patch tokens each layer leaves."""
    if not config.merges_tokens():
        return []
    left = [tokens.after_merge for tokens in layer_tokens(config)]
    patches = num_patches(config.image_size, config.patch_size)
    return [
        ("`token_merge_r`", merge_r_text(config)),
        ("`token_merge_proportional_attention`", str(bool(config.token_merge_proportional_attention))),
        ("patch tokens left after each layer (drop, then merge)", f"{' → '.join(map(str, left))} of {patches}"),
    ]


def _has_zeros(nonzero_weights: tuple[int, int] | None) -> bool:
    return nonzero_weights is not None and nonzero_weights[0] < nonzero_weights[1]


def slimmed_from(config: TriLevelViTConfig) -> TriLevelViTConfig | None:
    """`flops.full_width_config` of a slimmed config (some layer has fewer heads or neurons), else None."""
    heads, widths = layer_sizes(config)
    if set(heads) == {config.num_attention_heads} and set(widths) == {config.intermediate_size}:
        return None
    return full_width_config(config)


def results_text(accuracy_measured: bool, evaluation_text: str) -> str:
    if accuracy_measured:
        return f"Measured on {evaluation_text}."
    return "No accuracy was measured for this card (the run was not evaluated)."


def results_rows(config: TriLevelViTConfig, metrics: dict) -> str:
    """The "Results" table: accuracy, FLOPs against dense and their limit, measured speedup, training cost."""
    rows = []
    if "accuracy" in metrics:
        rows.append(("top-1 accuracy", f"{100 * metrics['accuracy']:.2f}%"))
    if "top5_accuracy" in metrics:
        rows.append(("top-5 accuracy", f"{100 * metrics['top5_accuracy']:.2f}%"))
    per_image = selector_name(config) not in FIXED_COUNT_SELECTORS  # counts differ per image: measure them
    measured = measured_kept_tokens(config, metrics)
    if per_image and measured is not None:
        patches = num_patches(config.image_size, config.patch_size)
        rows.append(
            (
                "patch tokens kept per image after each pruning layer (measured mean)",
                f"{' → '.join(f'{count:.1f}' for count in measured)} of {patches}",
            )
        )
    cap = ", at its cap: every image at `token_keep_rate`" if per_image else ""
    rows += [
        (f"forward FLOPs per image (this setting{cap})", format_flops(forward_flops(config))),
        ("forward FLOPs per image, dense (keep rates 1.0)", format_flops(forward_flops(dense_config(config)))),
        (f"FLOPs speedup limit{' (at the cap)' if per_image else ''}", f"{flops_speedup_limit(config):.2f}x"),
    ]
    full = slimmed_from(config)
    if full is not None:
        shape = f"{full.num_attention_heads} heads and MLP {full.intermediate_size} in every layer"
        full_flops = forward_flops(dense_config(full))
        rows += [
            (f"forward FLOPs per image, full-width dense ({shape})", format_flops(full_flops)),
            (
                f"FLOPs speedup limit against the full-width dense shape{' (at the cap)' if per_image else ''}",
                f"{full_flops / forward_flops(config):.2f}x",
            ),
        ]
    if per_image and "measured_gflops_per_image" in metrics and "measured_flops_speedup_limit" in metrics:
        rows += [
            (
                "forward FLOPs per image (measured: each evaluation image at its own counts, averaged)",
                format_flops(metrics["measured_gflops_per_image"] * 1e9),
            ),
            ("FLOPs speedup limit (measured counts)", f"{metrics['measured_flops_speedup_limit']:.2f}x"),
        ]
    if "measured_speedup" in metrics:
        setup = metrics.get("measured_speedup_setup")
        speedup = f"{metrics['measured_speedup']:.2f}x" + (f" ({setup})" if setup else "")
    else:
        speedup = "not measured for this card (`hf-trilevel bench inference`)"
    rows.append(("measured inference speedup over dense", speedup))
    if "train_runtime" in metrics:
        rows.append(("training time", format_duration(metrics["train_runtime"])))
    if "example_fraction_seen" in metrics:
        rows.append(
            ("training examples seen (share of epochs x data)", f"{100 * metrics['example_fraction_seen']:.1f}%")
        )
    return table_rows(rows)


def usage_text(config: TriLevelViTConfig, model_id: str) -> str:
    """Extra lines of the usage snippet: the selector's own run-time setting (adaptive: the mass), and for a merging
    checkpoint how to change `r` at load or on the loaded model and which patches were merged together."""
    if config.merges_tokens():
        merge_r = config.token_merge_r  # halved: fewer merges leave more tokens, so every layer's r still fits
        fewer = merge_r // 2 if isinstance(merge_r, int) else [r // 2 for r in merge_r]
        return (
            "\n# Token merging: another r (one for every layer, or one per layer; 0 turns it off), at load or on the "
            "loaded model:\n"
            f'model = AutoModelForImageClassification.from_pretrained("{model_id}", trust_remote_code=True, '
            f"token_merge_r={fewer}).eval()\n"
            f"model.set_keep_rates(token_merge_r={fewer})\n"
            "# For every original patch, the final token that holds it (merged patches share one; -1: dropped):\n"
            "sources = model(**inputs, output_token_sources=True).token_sources"
        )
    if selector_name(config) != "adaptive":
        return ""
    return (
        "\n# Adaptive selector: a lower mass keeps fewer tokens per image (read on the next forward):\n"
        "model.config.token_keep_mass = 0.8\n"
        "# Valid patch tokens each image kept after each pruning layer (adaptive counts differ per image):\n"
        "counts = model(**inputs, output_kept_token_indices=True).kept_token_counts"
    )


def training_text(metrics: dict, training: dict) -> str:
    """The "Training" paragraph: epochs, time, then each technique's sentence (`TECHNIQUE_CARDS`): the
    example-pruning policy with the share of data it served, dense/sparse training, weight sparsity."""
    trainer = "`hf_trilevel.TriLevelTrainer` (a `transformers.Trainer`)"
    epochs = metrics.get("epoch", training.get("num_train_epochs"))
    parts = [f"Trained for {epochs:g} epochs with {trainer}." if epochs is not None else f"Trained with {trainer}."]
    if "train_runtime" in metrics:
        parts.append(f"Training took {format_duration(metrics['train_runtime'])}.")
    parts += technique_sentences(training, metrics)
    return " ".join(parts)


def training_table(training: dict) -> str:
    """The hyperparameter table, in `TRAINING_FIELDS` order; empty when nothing is known."""
    rows = []
    for key, label in RUN_FIELDS.items():
        if key not in training:
            continue
        value = training[key]
        rows.append((label, settings_cell(value) if isinstance(value, dict) else str(value)))
    rows += technique_rows(training)
    if not rows:
        return ""
    return "| hyperparameter | value |\n|---|---|\n" + table_rows(rows)
