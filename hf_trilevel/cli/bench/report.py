"""How benchmark results leave the process: a markdown table for people, JSON (figures + environment) for tools."""

import argparse
import json
import os
import platform
from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch
import transformers

from ..errors import CommandError


def environment(device: torch.device) -> dict[str, str | int | None]:
    """What a figure depends on: versions, processor or GPU name, and the thread count."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cuda": torch.version.cuda if device.type == "cuda" else None,
    }


def markdown_table(rows: list[dict[str, str]]) -> str:
    """Rows of already-formatted cells -> a markdown table; the first column left-aligned, the rest right."""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row[column] for column in header) + " |" for row in rows]
    return "\n".join(lines)


def check_writable(path: str | None) -> None:
    """Fail before minutes of timing, not after, when the JSON cannot be written."""
    if path is None:
        return
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise CommandError(f"--json {path}: the folder {parent} does not exist.")
    if Path(path).is_dir():
        raise CommandError(f"--json {path} is a folder; give a file path.")


def write_json(path: str, payload: dict) -> None:
    def encode(value: object) -> object:
        if is_dataclass(value):
            return asdict(value)
        return str(value)

    Path(path).expanduser().write_text(json.dumps(payload, indent=2, default=encode) + "\n")


def report_payload(command: str, args: argparse.Namespace, device: torch.device, **sections: object) -> dict:
    """The head every benchmark JSON starts with: the command, its arguments, `sections` (e.g. the shape) and the
    environment, in that order; the caller adds its results."""
    arguments = {name: value for name, value in vars(args).items() if name not in ("run", "parser")}
    return {"command": command, "arguments": arguments, **sections, "environment": environment(device)}


def write_report(path: str, payload: dict) -> None:
    """`write_json`, then say where the figures went."""
    write_json(path, payload)
    print(f"wrote {path}")


def mib(num_bytes: int | None) -> str:
    return "n/a" if num_bytes is None else f"{num_bytes / 2**20:.0f}"
