"""Model cards (`README.md`) for TriLevel checkpoints, rendered from `template.md` and plain data.

`builder.py` renders the card, `sections.py` writes its variable parts, `sources.py` reads a run's files,
`folder.py` writes the card of a saved folder; each
technique folder writes its own section (`card.py` there), which `techniques.py` finds by the technique's name.
A trainer writes this card when given `TriLevelTrainer(card_writer=trainer_model_card)`.
"""

from .builder import build_model_card, trainer_model_card
from .folder import write_model_card

__all__ = ["build_model_card", "trainer_model_card", "write_model_card"]
