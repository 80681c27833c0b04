"""The model card's example-pruning parts: the method's data paragraph, the hyperparameter cell, the training sentence
and the tag, from `ExamplePruning.card_settings()` (the policy's `config()` dict: `{"policy": "forgetting",
"keep_fraction": 0.8, ...}`).

Plain functions of plain data, so a card reads the same from a live run or a saved folder;
`hf_trilevel.model_card` finds them by the technique's name.
"""

LABEL = "example pruning"  # the hyperparameter table's row
TAG = "data-pruning"


def prunes_examples(settings: dict | None) -> bool:
    """Whether the settings record a policy that removed anything (`"none"` trains on every example)."""
    return settings is not None and settings["policy"] != "none"


def describe_policy(settings: dict) -> str:
    """`the `forgetting` policy (keep_fraction=0.8, ...)` from a policy's `config()` dict."""
    details = ", ".join(f"{key}={value}" for key, value in settings.items() if key != "policy")
    return f"the `{settings['policy']}` policy" + (f" ({details})" if details else "")


def method_text(settings: dict | None) -> str:
    """The method section's sentence on this checkpoint's data: every example, or the policy that pruned them."""
    if not prunes_examples(settings):
        return "This checkpoint was trained on all its examples in every epoch."
    return f"This checkpoint was trained with {describe_policy(settings)}."


def training_sentence(settings: dict, metrics: dict) -> str:
    """The "Training" paragraph's sentence: the policy and the share of examples it served (`example_fraction_seen`),
    or "" when nothing was pruned."""
    if not prunes_examples(settings):
        return ""
    seen = metrics.get("example_fraction_seen")
    seen_text = f", which served {100 * seen:.1f}% of the examples over the run" if seen is not None else ""
    return f"Example pruning used {describe_policy(settings)}{seen_text}."


def card_tags(settings: dict) -> list[str]:
    return [TAG] if prunes_examples(settings) else []


__all__ = ["LABEL", "card_tags", "describe_policy", "method_text", "prunes_examples", "training_sentence"]
