"""How each training technique reads in a card, found by its `name`: one registry line per technique.

A technique writes its own card text in its own folder (`example_pruning/card.py`, `token_training/card.py`,
`weight_sparsity/card.py`): plain functions of the plain-data settings its `card_settings()` returns. Cards sit above
the techniques, so this module imports those card modules, never the other way round, and the trainer imports
none of it: a live run's card (`trainer_model_card`) and a saved folder's (`hf-trilevel card FOLDER`) both render
through `build_model_card`, which reads this registry.
"""

from collections.abc import Callable
from dataclasses import dataclass

from ..example_pruning import card as example_pruning
from ..token_training import card as token_training
from ..weight_sparsity import card as weight_sparsity


def settings_cell(settings: dict) -> str:
    """A technique's settings as `key=value, ...`, for techniques without a cell of their own."""
    return ", ".join(f"{name}={setting}" for name, setting in settings.items())


@dataclass(frozen=True)
class TechniqueCard:
    """The card text of one technique, each part a function of its `card_settings()` dict.

    Attributes:
        label: the technique's row in the hyperparameter table.
        cell: the row's value.
        sentence: `(settings, metrics) -> str`, its sentence in the "Training" paragraph ("" for none).
        tags: its Hub tags.
    """

    label: str
    cell: Callable[[dict], str] = settings_cell
    sentence: Callable[[dict, dict], str] | None = None
    tags: Callable[[dict], list[str]] | None = None


# Keyed by `TrainingTechnique.name`, in the order the card lists them (table rows, sentences, tags).
TECHNIQUE_CARDS = {
    "example_pruning": TechniqueCard(
        example_pruning.LABEL,
        example_pruning.describe_policy,
        example_pruning.training_sentence,
        example_pruning.card_tags,
    ),
    "keep_rate_schedule": TechniqueCard(token_training.KEEP_RATE_SCHEDULE_LABEL),
    "token_selector_temperature": TechniqueCard(token_training.SELECTOR_TEMPERATURE_LABEL),
    "dense_sparse": TechniqueCard(
        token_training.DENSE_SPARSE_LABEL,
        token_training.describe_dense_sparse,
        lambda settings, metrics: token_training.dense_sparse_sentence(settings),
    ),
    "weight_sparsity": TechniqueCard(
        weight_sparsity.LABEL,
        weight_sparsity.describe_weight_sparsity,
        lambda settings, metrics: weight_sparsity.weight_sparsity_sentence(settings),
        weight_sparsity.card_tags,
    ),
}


def technique_rows(training: dict) -> list[tuple[str, str]]:
    """`(label, cell)` of every technique the training dict records; a value that is not a settings dict is shown
    as it is."""
    return [
        (card.label, card.cell(training[name]) if isinstance(training[name], dict) else str(training[name]))
        for name, card in TECHNIQUE_CARDS.items()
        if name in training
    ]


def technique_sentences(training: dict, metrics: dict) -> list[str]:
    """The "Training" paragraph's sentences of the techniques the training dict records, in registry order."""
    sentences = []
    for name, card in TECHNIQUE_CARDS.items():
        settings = training.get(name)
        if card.sentence is not None and isinstance(settings, dict):
            sentences.append(card.sentence(settings, metrics))
    return [sentence for sentence in sentences if sentence]


def technique_tags(training: dict) -> list[str]:
    """The Hub tags of the techniques the training dict records, in registry order."""
    tags = []
    for name, card in TECHNIQUE_CARDS.items():
        settings = training.get(name)
        if card.tags is not None and isinstance(settings, dict):
            tags += card.tags(settings)
    return tags


__all__ = ["TECHNIQUE_CARDS", "TechniqueCard", "technique_rows", "technique_sentences", "technique_tags"]
