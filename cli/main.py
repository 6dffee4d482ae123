"""Entry point of the `berth` command: a click group whose commands live in cli/*_cmd.py."""

from __future__ import annotations

import click

from common import __version__


@click.group(
    # Flags without an explicit variable read BERTH_<COMMAND>_<FLAG>.
    context_settings={"auto_envvar_prefix": "BERTH", "help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="berth")
def cli() -> None:
    """Berth: a resource-aware cluster scheduler for container jobs."""


def _register() -> None:
    # Imported here so that `berth --help` does not load every daemon's modules twice.
    from cli import agent_cmd, live_cmd, run_cmd, scheduler_cmd

    cli.add_command(scheduler_cmd.scheduler)
    cli.add_command(agent_cmd.agent)
    cli.add_command(run_cmd.run)
    cli.add_command(live_cmd.logs)
    cli.add_command(live_cmd.events)
    cli.add_command(live_cmd.watch)


_register()


def main() -> None:
    cli(prog_name="berth")
