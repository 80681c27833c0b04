"""Errors shared by the command-line tools."""


class CommandError(ValueError):
    """Bad input found after parsing (e.g. `--device cuda` without a GPU): reported as a usage error, exit 2."""
