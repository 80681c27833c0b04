"""Keyed randomness: every random draw of a technique uses a fresh `torch.Generator` seeded from its key.

Re-running an epoch or a sparse update reproduces it exactly, on every rank, and a resumed run needs no pickled
generator state (InfoBatch reseeds NumPy's global RNG instead; nothing here touches global state).
"""

import torch


def keyed_generator(seed: int, epoch: int, salt: int) -> torch.Generator:
    """A CPU generator that depends only on its key; the same key gives the same draws on every rank and rerun."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 1_009 + salt) % (2**63))


__all__ = ["keyed_generator"]
