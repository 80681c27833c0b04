"""Errors shared by the command-line tools, and the bridge from the library's `ValueError` checks to them."""

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class CommandError(ValueError):
    """Bad input found after parsing (e.g. `--device cuda` without a GPU): reported as a usage error, exit 2."""


def checked_option(check: Callable[..., T], flag: str, value: object, *args, **kwargs) -> T:
    """`check(flag, value, ...)` from `hf_trilevel.modeling.value_checks`, its `ValueError` raised again as a
    `CommandError`.

    The library's checks already name the argument, the value and the allowed range; a command only has to turn
    that message into a usage error (exit status 2, no traceback).
    """
    try:
        return check(flag, value, *args, **kwargs)
    except ValueError as error:
        raise CommandError(str(error)) from None
