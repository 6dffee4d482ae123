"""The optional configuration file (TOML): defaults for any command's flags.

    [scheduler]
    state-dir = "/var/lib/berth"
    listen = "0.0.0.0:8750"

    [agent]
    scheduler = "http://10.0.0.5:8750"
    label = ["zone=a"]

    [client]            # every client command: run, logs, events, watch, jobs, ...
    addr = "http://10.0.0.5:8750"

    [token.create]      # a subcommand's own section: its group's name, a dot, its name
    role = "read"

Keys are flag names without the dashes (``state-dir`` or ``state_dir``). Flags on the
command line and BERTH_* variables win over the file. ``[client]`` reaches every
command that is not a daemon, subcommands of groups included.
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
    commands = subcommands(group)
    unknown = set(data) - set(commands) - {CLIENT_SECTION}
    if unknown:
        raise click.BadParameter(
            f"{path}: unknown section(s) {', '.join(sorted(unknown))}", param_hint="--config"
        )
    defaults: dict[str, dict[str, Any]] = {}
    client = data.get(CLIENT_SECTION, {})
    for name, command in commands.items():
        inherited = client if name not in DAEMONS else {}
        section = _section(path, name, command, data.get(name, {}), inherited)
        if section:
            defaults[name] = section
    return defaults


def subcommands(group: click.Group) -> dict[str, click.Command]:
    """The commands of ``group`` by name (a lazy group imports them here)."""
    ctx = click.Context(group)
    found = {}
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is not None:
            found[name] = command
    return found


def _section(
    path: Path, name: str, command: click.Command, own: Any, client: dict[str, Any]
) -> dict[str, Any]:
    """The default map of one command: its own section over the client settings; for a
    group, a map per subcommand (click looks a subcommand's defaults up by its name)."""
    if not isinstance(own, dict):
        raise click.BadParameter(f"{path}: [{name}] is not a table", param_hint="--config")
    if not isinstance(command, click.Group):
        return _by_param(path, name, command, {**client, **own})
    subs = subcommands(command)
    unknown = [k for k, v in own.items() if isinstance(v, dict) and k not in subs]
    if unknown:
        names = ", ".join(f"{name}.{k}" for k in sorted(unknown))
        raise click.BadParameter(f"{path}: unknown section(s) {names}", param_hint="--config")
    out = _by_param(path, name, command, {k: v for k, v in own.items() if k not in subs})
    for sub_name, sub in subs.items():
        sub_defaults = _section(path, f"{name}.{sub_name}", sub, own.get(sub_name, {}), client)
        if sub_defaults:
            out[sub_name] = sub_defaults
    return out


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
