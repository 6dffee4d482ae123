"""deploy/berth.toml lists every setting of every command with its default.

The file is read line by line, commented-out settings included: a section per command
(``[GROUP.NAME]`` for a subcommand), ``KEY = VALUE`` per flag. A setting's value is its
default unless its comment ends with ``[default: ...]``; then that is the default,
either a TOML value (compared with click's) or words (for a flag without one).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import click
import pytest

from cli import config
from cli.main import cli
from tests.support import REPO

BERTH_TOML = REPO / "deploy" / "berth.toml"
#: the flags every client command takes, set once in [client]
CLIENT_FLAGS = frozenset({"addr", "token", "ca-file"})
_SECTION = re.compile(r"^\[([A-Za-z0-9_.-]+)\]\s*(#.*)?$")
_SETTING = re.compile(r"^(#\s*)?([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(.+)$")
_DEFAULT = re.compile(r"\[default: (.*)\]\s*$")
#: what click holds for a flag that has no default (a sentinel from click 8.3 on)
_UNSET = getattr(click.core, "UNSET", None)


@dataclass(frozen=True)
class Setting:
    key: str
    value: Any
    #: the text of [default: ...], when the line has one
    default: str | None
    line: int


def read_settings(text: str) -> dict[str, dict[str, Setting]]:
    """Every section's settings, commented out or not, by key."""
    sections: dict[str, dict[str, Setting]] = {}
    current: dict[str, Setting] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        header = _SECTION.match(line)
        if header:
            current = sections.setdefault(header.group(1), {})
            continue
        found = _SETTING.match(line)
        if not found:
            continue
        key, rest = found.group(2), found.group(3)
        try:
            value = tomllib.loads(f"v = {rest}")["v"]
        except tomllib.TOMLDecodeError:
            if found.group(1):
                continue  # prose in a comment, not a setting
            raise
        assert current is not None, f"line {number}: {key} before any section"
        assert key not in current, f"line {number}: {key} is listed twice"
        default = _DEFAULT.search(rest)
        current[key] = Setting(key, value, default.group(1) if default else None, number)
    return sections


def leaf_commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    """Every command that runs (not a group), by its section name."""
    found: dict[str, click.Command] = {}
    for name, command in config.subcommands(group).items():
        if isinstance(command, click.Group):
            found.update(leaf_commands(command, f"{prefix}{name}."))
        else:
            found[f"{prefix}{name}"] = command
    return found


def options(command: click.Command) -> dict[str, click.Option]:
    """The settable flags of a command by the key the file names them with."""
    out: dict[str, click.Option] = {}
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            long = [o for o in param.opts if o.startswith("--")]
            out[long[0][2:]] = param
    return out


def is_client(command: click.Command) -> bool:
    return set(options(command)) >= CLIENT_FLAGS


def click_default(option: click.Option) -> Any:
    """The built-in default as TOML would write it (None: it has none)."""
    default = option.default
    if callable(default):
        default = default()
    if default is None or default is _UNSET:
        return [] if option.multiple else None
    if option.multiple:
        return [str(v) if isinstance(v, PurePath) else v for v in default]
    return str(default) if isinstance(default, PurePath) else default


SETTINGS = read_settings(BERTH_TOML.read_text())
COMMANDS = leaf_commands(cli)


def test_every_section_is_a_command_or_the_client_settings() -> None:
    unknown = set(SETTINGS) - set(COMMANDS) - {config.CLIENT_SECTION}
    assert not unknown, f"sections that are not commands: {sorted(unknown)}"
    # The file as a whole is also one the CLI accepts.
    assert config.load(BERTH_TOML, cli)


def test_the_client_section_holds_the_settings_every_client_command_takes() -> None:
    assert set(SETTINGS[config.CLIENT_SECTION]) == CLIENT_FLAGS
    clients = [name for name, command in COMMANDS.items() if is_client(command)]
    assert "run" in clients and "token.create" in clients
    assert not {"scheduler", "agent", "dev"} & set(clients)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_flag_of_the_command_is_listed_and_nothing_else(name: str) -> None:
    command = COMMANDS[name]
    flags = set(options(command))
    if is_client(command):
        flags -= CLIENT_FLAGS
    listed = set(SETTINGS.get(name, {}))
    assert not flags - listed, f"[{name}] lacks {sorted(flags - listed)}"
    assert not listed - flags, (
        f"[{name}] lists what `berth` has no flag for: {sorted(listed - flags)}"
    )


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_default_stated_is_the_commands_own(name: str) -> None:
    command = COMMANDS[name]
    flags = options(command)
    sections = [name, config.CLIENT_SECTION] if is_client(command) else [name]
    for section in sections:
        for key, setting in SETTINGS.get(section, {}).items():
            if key not in flags:
                continue  # the other test names it
            expected = click_default(flags[key])
            where = f"[{section}] {key} (line {setting.line})"
            if setting.default is None:
                assert setting.value == expected, f"{where}: the default is {expected!r}"
                continue
            try:
                stated = tomllib.loads(f"v = {setting.default}")["v"]
            except tomllib.TOMLDecodeError:
                # Words: only for a flag whose default is worked out when it runs.
                assert expected is None, f"{where}: the default is {expected!r}"
            else:
                assert stated == expected, f"{where}: the default is {expected!r}"


def test_the_reader_sees_commented_settings_and_their_defaults() -> None:
    text = (
        "# Prose = not a setting here\n"
        "[scheduler]\n"
        'listen = "0.0.0.0:1"   # [default: "127.0.0.1:8750"]\n'
        "# fd-reserve = 4096   # kept [default: 1/16 of the limit]\n"
        "#max-spec-bytes = 65536\n"
    )
    found = read_settings(text)["scheduler"]
    assert found["listen"].value == "0.0.0.0:1"
    assert found["listen"].default == '"127.0.0.1:8750"'
    assert found["fd-reserve"].default == "1/16 of the limit"
    assert found["max-spec-bytes"].value == 65536 and found["max-spec-bytes"].default is None
    with pytest.raises(AssertionError, match="twice"):
        read_settings("[agent]\nexecutor = 'auto'\n# executor = 'docker'\n")
