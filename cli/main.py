"""Entry point of the `berth` command: a click group whose commands live in cli/*_cmd.py."""

from __future__ import annotations

from pathlib import Path

import click

from cli import config
from common import __version__


@click.group(
    # Flags without an explicit variable read BERTH_<COMMAND>_<FLAG>.
    context_settings={"auto_envvar_prefix": "BERTH", "help_option_names": ["-h", "--help"]}
)
@click.option(
    "--config",
    "config_file",
    envvar="BERTH_CONFIG",
    show_envvar=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A TOML file of defaults for any command's flags (see deploy/berth.toml).",
)
@click.version_option(__version__, prog_name="berth")
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None) -> None:
    """Berth: a resource-aware cluster scheduler for container jobs."""
    if config_file is not None:
        assert isinstance(ctx.command, click.Group)
        ctx.default_map = config.load(config_file, ctx.command)


def _register() -> None:
    # Imported here so that `berth --help` does not load every daemon's modules twice.
    from cli import agent_cmd, dev_cmd, jobs_cmd, live_cmd, run_cmd, scheduler_cmd

    cli.add_command(dev_cmd.dev)
    cli.add_command(scheduler_cmd.scheduler)
    cli.add_command(agent_cmd.agent)
    cli.add_command(run_cmd.run)
    for command in jobs_cmd.COMMANDS:
        cli.add_command(command)
    cli.add_command(live_cmd.logs)
    cli.add_command(live_cmd.events)
    cli.add_command(live_cmd.watch)


_register()


def main() -> None:
    cli(prog_name="berth")
