"""How benchmark results leave the process: a markdown table for people, JSON (figures + environment) for tools.

The table and the environment record are the library's (`hf_trilevel.evaluation.formatting.markdown_table`,
`hf_trilevel.evaluation.timing.environment`), so a benchmark's report and a run's `operating_points.json` agree.
"""

import argparse
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch

from ...evaluation.timing import environment
from ..errors import CommandError


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


__all__ = [
    "check_writable",
    "mib",
    "report_payload",
    "write_json",
    "write_report",
]
