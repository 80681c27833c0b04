"""How the tools print quantities people read: durations and FLOP counts.

One home so that an epoch time in `hf-trilevel bench train` and a training time in a model card read alike.
"""


def format_duration(seconds: float) -> str:
    """Seconds under two minutes, minutes under two hours, hours beyond: `42.0 s`, `5.0 min`, `17.27 h`."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def format_flops(flops: int) -> str:
    """A FLOP count in the largest unit it reaches: `1.26 GFLOPs`, `3.41 MFLOPs`, `900 FLOPs`."""
    for unit, scale in (("GFLOPs", 1e9), ("MFLOPs", 1e6), ("kFLOPs", 1e3)):
        if flops >= scale:
            return f"{flops / scale:.2f} {unit}"
    return f"{flops} FLOPs"


__all__ = ["format_duration", "format_flops"]
