"""How the recipe runs on several processes: whether it was launched on several, and the teardown at exit."""

import os

import torch


def launched_on_several_processes() -> bool:
    """True under `accelerate launch --num_processes N` / `torchrun --nproc_per_node N` with N > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def end_distributed(wait_for_all: bool = True) -> None:
    """Tear the process group down, after a barrier when every rank finished normally.

    Without the teardown gloo processes intermittently abort at exit (SIGABRT). Without the barrier, a rank that
    finishes first (rank 0 still writes the model card) can hang in it. After an error there is no barrier: the
    other ranks may be stuck in a collective, and the launcher stops them when this process exits.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if wait_for_all:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


__all__ = ["end_distributed", "launched_on_several_processes"]
