"""Entry point of the `berth` command: a click group whose commands live in cli/*_cmd.py.

Commands are imported when they are used, so `berth scheduler` does not load the
agent's or the client's modules (a shorter start, which matters for restarts).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import click

from cli import config
from common import __version__

#: command name -> "module:attribute", imported on first use
COMMANDS = {
    "dev": "cli.dev_cmd:dev",
    "scheduler": "cli.scheduler_cmd:scheduler",
    "agent": "cli.agent_cmd:agent",
    "run": "cli.run_cmd:run",
    "submit": "cli.jobs_cmd:submit",
    "array": "cli.array_cmd:array",
    "jobs": "cli.jobs_cmd:jobs",
    "job": "cli.jobs_cmd:job",
    "nodes": "cli.jobs_cmd:nodes",
    "cancel": "cli.jobs_cmd:cancel",
    "retry": "cli.jobs_cmd:retry",
    "pause": "cli.jobs_cmd:pause",
    "resume": "cli.jobs_cmd:resume",
    "drain": "cli.jobs_cmd:drain",
    "node": "cli.node_cmd:node",
    "schedulers": "cli.jobs_cmd:schedulers",
    "stats": "cli.stats_cmd:stats",
    "token": "cli.token_cmd:token",
    "schedule": "cli.schedule_cmd:schedule",
    "secret": "cli.secret_cmd:secret",
    "audit": "cli.token_cmd:audit",
    "logs": "cli.live_cmd:logs",
    "events": "cli.live_cmd:events",
    "watch": "cli.live_cmd:watch",
}


class LazyGroup(click.Group):
    """A group that imports each of its commands only when it is asked for."""

    def __init__(self, *args: object, lazy: dict[str, str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attr = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attr)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    # Flags without an explicit variable read BERTH_<COMMAND>_<FLAG>.
    context_settings={"auto_envvar_prefix": "BERTH", "help_option_names": ["-h", "--help"]},
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
        group = ctx.command
        assert isinstance(group, click.Group)
        ctx.default_map = config.load(config_file, group)


def main() -> None:
    cli(prog_name="berth")


if __name__ == "__main__":
    main()
