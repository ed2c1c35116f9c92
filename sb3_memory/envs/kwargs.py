"""Env keyword arguments on the command line, in rl-zoo3's ``--env-kwargs key:value`` format, for every script."""

import argparse
import ast
from typing import Any, Optional

FORMAT = "key:value with a Python literal value, as rl-zoo3's --env-kwargs (e.g. corridor_length:10 name:'\"a\"')"


def parse_env_kwarg(item: str) -> tuple[str, Any]:
    """
    One ``key:value`` item as ``(key, value)``; the value is a Python literal.

    :param item: the command-line item
    :return: the key and the value
    :raises ValueError: naming the item and the format
    """
    key, colon, value = item.partition(":")
    if not colon or not key.isidentifier():
        hint = f" (not {key.partition('=')[0]}=...)" if "=" in key else ""
        raise ValueError(f"env kwarg {item!r} is not {FORMAT}{hint}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise ValueError(f"env kwarg {item!r}: {value!r} is not a Python literal; write {FORMAT}") from None


def parse_env_kwargs(items: Optional[list[str]]) -> dict[str, Any]:
    """
    ``key:value`` items as a dict (see :func:`parse_env_kwarg`).

    :param items: the command-line items, or ``None``
    :return: the keyword arguments
    """
    return dict(parse_env_kwarg(item) for item in items or [])


def env_kwarg_argument(item: str) -> str:
    """An argparse ``type=``: checks the item at parse time (argparse's one-line error) and keeps it as written."""
    try:
        parse_env_kwarg(item)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return item
