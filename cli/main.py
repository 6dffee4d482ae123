"""Entry point of the `berth` command: a click group whose commands live in cli/*_cmd.py."""

from __future__ import annotations

import click

from common import __version__


@click.group(
    context_settings={"auto_envvar_prefix": "BERTH", "help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="berth")
def cli() -> None:
    """Berth: a resource-aware cluster scheduler for container jobs."""


def _register() -> None:
    from cli import scheduler_cmd

    cli.add_command(scheduler_cmd.scheduler)
    try:
        from cli import agent_cmd
    except ImportError:  # the agent command ships with the agent package
        return
    cli.add_command(agent_cmd.agent)


_register()


def main() -> None:
    cli(prog_name="berth")
