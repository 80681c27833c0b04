"""The model card's token-training parts: the labels of the three techniques' hyperparameter rows, the learned
selector's temperature schedule, and for dense/sparse (SaiT) checkpoints the training sentence, the hyperparameter
cell and the "Operating points" section.

Dense/sparse text says what one set of weights serves at each keep rate, from `DenseSparseTraining.card_settings()`,
the config's `dense_sparse_keep_rates` and a measured `operating_points.json`. Plain functions of plain data;
`hf_trilevel.model_card` finds them by the techniques' names.
"""

from ..modeling.configuration_trilevel_vit import TriLevelViTConfig
from .dense_sparse import OperatingPoint, operating_point
from .operating_points import OPERATING_POINTS_FILE, format_rate, measurement_setup, operating_points_markdown

# The hyperparameter table's rows, by technique.
KEEP_RATE_SCHEDULE_LABEL = "token keep-rate warm-up"
SELECTOR_TEMPERATURE_LABEL = "learned scores' Gumbel temperature"
DENSE_SPARSE_LABEL = "dense/sparse training (one set of weights for every keep rate)"
DENSE_SPARSE_TAG = "dense-sparse-weight-sharing"


def temperature_text(settings: dict | None) -> str:
    """`, its temperature annealed linearly from 10 to 0.1 over the run`, from
    `SelectorTemperatureSchedule.card_settings()`, or "" when the settings do not record the schedule."""
    if not isinstance(settings, dict) or "start" not in settings or "end" not in settings:
        return ""
    return f", its temperature annealed linearly from {settings['start']:g} to {settings['end']:g} over the run"


def rates_text(rates: list) -> str:
    """`1.0, 0.7 and 0.5`."""
    names = [format_rate(rate) for rate in rates]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def distillation_text(settings: dict) -> str:
    """How the sparse passes learned beside the labels: `, the sparse passes distilled from the dense pass (...)`."""
    distillation = settings.get("distillation", "none")
    if distillation in (None, "none"):
        return ", without distillation"
    source = "the dense pass of the same weights" if distillation == "self" else "a teacher"
    if distillation == "teacher" and settings.get("teacher"):
        source = f"the teacher `{settings['teacher']}`"
    details = [
        f"{label} {settings[key]:g}"
        for key, label in (("distillation_temperature", "temperature"), ("distillation_weight", "weight"))
        if isinstance(settings.get(key), (int, float))
    ]
    return f", the sparse passes distilled from {source}" + (f" ({', '.join(details)})" if details else "")


def dense_sparse_sentence(settings: dict) -> str:
    """The "Training" paragraph's sentence on dense/sparse training, from `DenseSparseTraining.card_settings()`."""
    rates = settings.get("keep_rates")
    rates_part = f" at token keep rates {rates_text(list(rates))}" if rates else ""
    schedule = f" (schedule `{settings['schedule']}`)" if settings.get("schedule") else ""
    importance = settings.get("importance_weight")
    importance_part = (
        f"; token-importance distillation weight {importance:g}"
        if isinstance(importance, (int, float)) and importance > 0
        else ""
    )
    return (
        f"Dense/sparse training (SaiT) updated one set of weights{rates_part}{schedule}"
        f"{distillation_text(settings)}{importance_part}."
    )


def describe_dense_sparse(settings: dict) -> str:
    """The hyperparameter-table cell of dense/sparse training: every `card_settings()` entry, rates as a list."""
    order = ("keep_rates", "schedule", "distillation", "teacher", "distillation_temperature", "distillation_weight")
    keys = [key for key in order if key in settings] + [key for key in settings if key not in order]
    return ", ".join(f"{key}={settings[key]}" for key in keys)


# -- operating points -------------------------------------------------------------------------------------------------


def trained_keep_rates(config: TriLevelViTConfig) -> list[float] | None:
    """The keep rates a dense/sparse checkpoint was trained for, or None for a checkpoint trained at one rate."""
    rates = getattr(config, "dense_sparse_keep_rates", None)
    return [float(rate) for rate in rates] if rates else None


def operating_points_text(config: TriLevelViTConfig, report: dict | None) -> str:
    """The card's "Operating points" section (heading included), or "" for a single-rate checkpoint without a table.

    With a report (`operating_points.json`, see `hf_trilevel.token_training.operating_points`): the measured table,
    how one set of weights serves every row, and where the throughput was measured. With only
    `config.dense_sparse_keep_rates`: the rates the checkpoint was trained for, and how to measure the table.
    """
    rates = trained_keep_rates(config)
    if report is None and rates is None:
        return ""
    switch = "`model.set_keep_rates(token_keep_rate=r, attention_keep_rate=a)`"
    if report is None:
        first, *others = trained_operating_points(config)
        pairs = f"`r` = {format_rate(first[0])} with `a` = {format_rate(first[1])}"
        pairs += " (the dense model)" if first[0] >= 1 else ""
        pairs += "".join(f", {format_rate(point[0])} with {format_rate(point[1])}" for point in others)
        pairs += merging_text(config)
        return (
            "\n## Operating points\n\n"
            f"This checkpoint was trained with dense/sparse training (SaiT) for token keep rates {rates_text(rates)}: "
            f"one set of weights serves every one of them. {switch} picks one; training paired {pairs}. No "
            "operating-point table was measured for this card: `hf-trilevel visualize operating-points --model FOLDER "
            f"--json FOLDER/{OPERATING_POINTS_FILE} --output FOLDER/operating_points.png` measures accuracy and "
            "images/s per rate, and the card shows them once the file is there.\n"
        )
    if rates is not None:
        trained = (
            f"This checkpoint was trained with dense/sparse training (SaiT) for token keep rates {rates_text(rates)}"
        )
    else:
        trained = (
            f"This checkpoint was trained at one setting (`token_keep_rate` = {float(config.token_keep_rate):g}); the "
            "other rows run the same weights at rates they were not trained for"
        )
    points = report["points"]
    # Name the dense row only if the table has one (keep 1.0 at attention 1.0, no merging); a table measured with
    # attention held lower, or without rate 1.0, has no dense row.
    dense_rows = [
        p
        for p in points
        if p.get("token_keep_rate") == 1.0 and p.get("attention_keep_rate") == 1.0 and not p.get("token_merge_r")
    ]
    dense = "; the keep rate 1.0 row is the dense model" if dense_rows else ""
    measured = f"{report['num_examples']} images" if isinstance(report.get("num_examples"), int) else "the evaluation"
    split = f" of the `{report['split']}` split" if isinstance(report.get("split"), str) else ""
    return (
        "\n## Operating points\n\n"
        f"{trained}. One set of weights serves every row: {switch} picks one (`r` and `a` from the row){dense}.\n\n"
        f"{operating_points_markdown(points)}\n\n"
        f"Accuracy over {measured}{split}. Throughput measured on {measurement_setup(report)}, every rate on the "
        "same batch in interleaved rounds; it depends on the hardware and batch size, and `hf-trilevel visualize "
        "operating-points` measures it on yours. The FLOPs limit is dense FLOPs over the row's FLOPs.\n"
    )


def trained_operating_points(config: TriLevelViTConfig) -> list[OperatingPoint]:
    """`(token_keep_rate, attention_keep_rate, token_merge_r)` of each rate a dense/sparse checkpoint was trained
    for."""
    return [operating_point(config, rate) for rate in trained_keep_rates(config) or []]


def merging_text(config: TriLevelViTConfig) -> str:
    """`; every rate below 1.0 also merges 2 tokens per layer (`token_merge_r`), keep 1.0 none (`token_merge_r=0`)`,
    or "" for a checkpoint without token merging."""
    merge_r = getattr(config, "token_merge_r", 0)
    if not config.merges_tokens():
        return ""
    amount = f"{merge_r} tokens per layer" if isinstance(merge_r, int) else f"per layer {list(merge_r)} tokens"
    return f"; every rate below 1.0 also merges {amount} (`token_merge_r`), keep 1.0 none (`token_merge_r=0`)"


__all__ = [
    "DENSE_SPARSE_LABEL",
    "DENSE_SPARSE_TAG",
    "KEEP_RATE_SCHEDULE_LABEL",
    "SELECTOR_TEMPERATURE_LABEL",
    "dense_sparse_sentence",
    "describe_dense_sparse",
    "merging_text",
    "operating_points_text",
    "rates_text",
    "temperature_text",
    "trained_keep_rates",
    "trained_operating_points",
]
