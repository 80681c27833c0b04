"""hf-trilevel: measure TriLevel ViT speedups (`bench inference|train`) and draw what it keeps (`visualize`).

Each subcommand lives in its own module, which exposes `add_arguments(parser)` and `run(args) -> int`; this module
only wires them together and turns bad input into a one-line message and exit status 2, never a traceback.
"""

import argparse
import sys
from collections.abc import Callable
from importlib import import_module

from .errors import CommandError

# name -> (module, help). A command's module is imported only when that command is named.
COMMANDS: dict[str, dict[str, tuple[str, str]]] = {
    "bench": {
        "inference": ("hf_trilevel.benchmarks.inference", "Images/s of TriLevel settings against dense ViT."),
        "train": ("hf_trilevel.benchmarks.training", "Training steps/s, epoch time and time to accuracy."),
    },
    "visualize": {
        "kept-tokens": ("hf_trilevel.visualize", "PNG grid of the patches each pruning layer keeps."),
        "operating-points": ("hf_trilevel.visualize", "Accuracy against measured throughput for several keep rates."),
    },
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The full command tree; only the module of the command named in `argv` is imported and given its options."""
    parser = argparse.ArgumentParser(prog="hf-trilevel", description=__doc__.splitlines()[0])
    groups = parser.add_subparsers(dest="group", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for group, commands in COMMANDS.items():
        group_parser = groups.add_parser(group, help=f"{group} commands")
        subcommands = group_parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(commands) + "}")
        for command, (module_name, help_text) in commands.items():
            command_parser = subcommands.add_parser(
                command, help=help_text, description=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter
            )
            if argv[:2] == [group, command]:
                module = import_module(module_name)
                _command_hook(module, "add_arguments", command)(command_parser)
                command_parser.set_defaults(run=_command_hook(module, "run", command), parser=command_parser)
    return parser


def _command_hook(module: object, name: str, command: str) -> Callable:
    """`add_<command>_arguments` / `run_<command>` when one module serves several commands, else `add_arguments`."""
    specific = f"{name}_{command.replace('-', '_')}" if name == "run" else f"add_{command.replace('-', '_')}_arguments"
    return getattr(module, specific, None) or getattr(module, name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except CommandError as error:
        args.parser.error(str(error))  # prints usage and the message, exits 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
