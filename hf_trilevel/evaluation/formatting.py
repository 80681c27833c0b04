"""How the tools print what people read: durations, FLOP counts and markdown tables.

One home so that an epoch time in `hf-trilevel bench train` and a training time in a model card read alike, and a
benchmark's table and a card's operating-point table have one layout.
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


def markdown_table(rows: list[dict[str, str]]) -> str:
    """Rows of already-formatted cells -> a markdown table; the first column left-aligned, the rest right."""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row[column] for column in header) + " |" for row in rows]
    return "\n".join(lines)


__all__ = ["format_duration", "format_flops", "markdown_table"]
