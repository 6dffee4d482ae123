"""The optional configuration file (TOML): defaults for any command's flags.

    [scheduler]
    state-dir = "/var/lib/berth"
    listen = "0.0.0.0:8750"

    [agent]
    scheduler = "http://10.0.0.5:8750"
    label = ["zone=a"]

    [client]            # every client command: run, logs, events, watch, jobs, ...
    addr = "http://10.0.0.5:8750"

Keys are flag names without the dashes (``state-dir`` or ``state_dir``). Flags on the
command line and BERTH_* variables win over the file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import click

#: the section whose values apply to every command that is not a daemon
CLIENT_SECTION = "client"
DAEMONS = frozenset({"scheduler", "agent", "dev"})
#: client settings a command may not take (they are simply not applied to it)
_CLIENT_KEYS = frozenset({"addr", "token", "ca-file", "ca_file"})


def load(path: Path, group: click.Group) -> dict[str, dict[str, Any]]:
    """A click ``default_map`` for ``group`` from the file at ``path``."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise click.BadParameter(f"cannot read {path}: {e}", param_hint="--config") from e
    ctx = click.Context(group)
    commands = {}
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is not None:
            commands[name] = command
    unknown = set(data) - set(commands) - {CLIENT_SECTION}
    if unknown:
        raise click.BadParameter(
            f"{path}: unknown section(s) {', '.join(sorted(unknown))}", param_hint="--config"
        )
    defaults: dict[str, dict[str, Any]] = {}
    client = data.get(CLIENT_SECTION, {})
    for name, command in commands.items():
        section = dict(client) if name not in DAEMONS else {}
        section.update(data.get(name, {}))
        if section:
            defaults[name] = _by_param(path, name, command, section)
    return defaults


def _by_param(
    path: Path, name: str, command: click.Command, section: dict[str, Any]
) -> dict[str, Any]:
    """Keys named like flags, turned into the names click stores them under."""
    by_flag: dict[str, str] = {}
    for param in command.params:
        for opt in getattr(param, "opts", []):
            if opt.startswith("--"):
                by_flag[opt[2:]] = param.name or opt[2:]
    out: dict[str, Any] = {}
    for key, value in section.items():
        flag = key.replace("_", "-")
        if flag in by_flag:
            out[by_flag[flag]] = value
        elif key not in _CLIENT_KEYS:
            raise click.BadParameter(
                f"{path}: [{name}] has no setting {key!r}", param_hint="--config"
            )
    return out
