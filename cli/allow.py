"""The ``--allow`` option of ``berth agent`` and ``berth dev``: the node's allow-list."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from common import policy

#: variables read when --allow is not given, comma separated
ALLOW_ENVVARS = ["BERTH_AGENT_ALLOW", "BERTH_ALLOW"]

ALLOW_HELP = (
    "Let jobs on this node ask for more than the sandbox: privileged, host-network, or "
    "mount:/DIR (host paths at or under DIR); repeatable. Nothing by default."
)


F = TypeVar("F", bound=Callable[..., Any])


class AllowItem(click.ParamType[str]):
    """One allow-list entry, checked and made canonical; a variable lists them with commas."""

    name = "privileged|host-network|mount:/DIR"
    envvar_list_splitter = ","

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not str(value).strip():
            return ""  # a stray comma in the variable
        try:
            return policy.normalise(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


def allow_option(f: F) -> F:
    """Add ``--allow`` (the command gets ``allow``: a tuple of entries)."""
    return click.option(
        "--allow",
        "allow",
        type=AllowItem(),
        multiple=True,
        envvar=ALLOW_ENVVARS,
        show_envvar=True,
        help=ALLOW_HELP,
    )(f)


def allow_list(items: tuple[str, ...]) -> list[str]:
    """The entries without repeats or blanks (``BERTH_ALLOW="privileged, "``), in order."""
    return list(dict.fromkeys(i for i in items if i))
