"""hf-trilevel: measure speedups (`bench`), draw what is kept (`visualize`), write cards (`card`), `slim`, `export`.

Each command lives in its own module, which exposes `add_arguments(parser)` and `run(args) -> int`; this module
only wires them together and turns bad input into a usage line, a one-line message and exit status 2, never a
traceback.
"""

import argparse
import sys
from collections.abc import Callable
from importlib import import_module

from .errors import CommandError

# name -> (module, help), or a group of them. A command's module is imported only when that command is named.
Command = tuple[str, str]
COMMANDS: dict[str, Command | dict[str, Command]] = {
    "bench": {
        "inference": ("hf_trilevel.cli.bench.inference", "Images/s of TriLevel settings against dense ViT."),
        "train": ("hf_trilevel.cli.bench.training", "Training steps/s, epoch time and time to accuracy."),
    },
    "visualize": {
        "kept-tokens": ("hf_trilevel.cli.visualize", "PNG grid of the patches each pruning layer keeps."),
        "operating-points": (
            "hf_trilevel.cli.visualize",
            "Accuracy against measured throughput for several keep rates.",
        ),
    },
    "card": ("hf_trilevel.cli.card", "Write the model card (README.md) of a saved TriLevel folder."),
    "slim": ("hf_trilevel.cli.slim", "Remove the pruned heads and MLP neurons of a saved TriLevel folder."),
    "export": {
        "onnx": ("hf_trilevel.cli.export", "model.onnx of a saved TriLevel classifier, checked against PyTorch."),
    },
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The full command tree; only the module of the command named in `argv` is imported and given its options."""
    parser = argparse.ArgumentParser(prog="hf-trilevel", description=__doc__.splitlines()[0])
    groups = parser.add_subparsers(dest="group", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for group, entry in COMMANDS.items():
        if isinstance(entry, tuple):
            _add_command(groups, group, entry, selected=argv[:1] == [group])
            continue
        group_parser = groups.add_parser(group, help=f"{group} commands")
        subcommands = group_parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(entry) + "}")
        for command, spec in entry.items():
            _add_command(subcommands, command, spec, selected=argv[:2] == [group, command])
    return parser


def _add_command(subparsers, name: str, spec: Command, selected: bool) -> None:
    """One command's parser; its module fills in the options only when the command is the one being run."""
    module_name, help_text = spec
    command_parser = subparsers.add_parser(
        name, help=help_text, description=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    if selected:
        module = import_module(module_name)
        _command_hook(module, "add_arguments", name)(command_parser)
        command_parser.set_defaults(run=_command_hook(module, "run", name), parser=command_parser)


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
