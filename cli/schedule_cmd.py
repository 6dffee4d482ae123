"""`berth schedule create | list | show | pause | resume | delete | run`: periodic jobs.

A schedule submits its job at each time its cron expression names, in its timezone:
five fields (minute hour day month weekday), or six with seconds last. The job is
given as for `berth run` (IMAGE -- CMD with --cpu, --memory-mb ...) or as a JSON spec
file (--file, as `berth submit -f` reads it).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click

from cli.jobs_cmd import _read_specs, print_json
from cli.live_cmd import EXIT_OK, CommandError, client_options, run_client
from cli.run_cmd import parse_pairs
from cli.text import table
from common.client import BerthClient
from common.models import Constraints, JobResources, JobSpec
from common.schedule_models import Schedule, ScheduleSpec


def _when(ts: datetime | None) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if ts is not None else "-"


def schedule_rows(schedules: list[Schedule]) -> str:
    rows = [
        [
            s.name,
            s.cron,
            s.timezone,
            s.overlap,
            "paused" if s.paused else _when(s.next_run_at),
            _when(s.last_run_at),
            s.last_job_id or "-",
            s.owner,
        ]
        for s in schedules
    ]
    headers = ["NAME", "CRON", "TZ", "OVERLAP", "NEXT", "LAST RUN", "LAST JOB", "OWNER"]
    return table(headers, rows, flexible=0)


def schedule_detail(s: Schedule) -> str:
    lines = [
        f"name      {s.name}",
        f"cron      {s.cron}  ({s.timezone})",
        f"overlap   {s.overlap}   catch_up {s.catch_up}",
        f"owner     {s.owner}",
        f"next      {'paused' if s.paused else _when(s.next_run_at)}",
        f"last run  {_when(s.last_run_at)}  job {s.last_job_id or '-'}",
        f"job       {s.job.image} {s.job.command if s.job.command is not None else ''}".rstrip(),
    ]
    if s.skipped:
        lines.append(
            f"skipped   {s.skipped}, last {_when(s.last_skipped_at)}: {s.last_skip_reason}"
        )
    if s.recent_runs:
        lines.append("recent runs (berth job ID):")
        for run in reversed(s.recent_runs):
            due = f"  for {_when(run.due)}" if run.due is not None else "  by hand"
            lines.append(f"  {run.job_id}  {_when(run.at)}{due}")
    return "\n".join(lines)


def _spec_of(
    name: str,
    cron: str,
    timezone: str,
    overlap: str,
    catch_up: str,
    paused: bool,
    spec_file: str | None,
    image: str | None,
    command: tuple[str, ...],
    job: dict[str, object],
) -> ScheduleSpec:
    if (spec_file is None) == (image is None):
        raise click.UsageError("give --file SPEC.json or IMAGE [-- CMD...], not both")
    if spec_file is not None:
        specs = _read_specs(spec_file)
        if len(specs) != 1:
            raise CommandError(f"{spec_file}: a schedule runs one job spec, not a list", 2)
        spec = specs[0]
    else:
        assert image is not None
        if command[:1] == ("--",):
            # Options end at IMAGE, so click hands the separator on with the command.
            command = command[1:]
        spec = JobSpec(image=image, command=list(command) or None, **job)  # type: ignore[arg-type]
    return ScheduleSpec(
        name=name,
        cron=cron,
        timezone=timezone,
        job=spec,
        overlap=overlap,  # type: ignore[arg-type]
        catch_up=catch_up,  # type: ignore[arg-type]
        paused=paused,
    )


def _as_spec(s: Schedule, *, paused: bool) -> ScheduleSpec:
    return ScheduleSpec(
        name=s.name,
        cron=s.cron,
        timezone=s.timezone,
        job=s.job,
        overlap=s.overlap,
        catch_up=s.catch_up,
        paused=paused,
    )


@click.group()
def schedule() -> None:
    """Periodic jobs: a job submitted at the times a cron expression names."""


@schedule.command(context_settings={"allow_interspersed_args": False})
@client_options
@click.option("--name", required=True, help="The schedule's name (letters, digits, . _ -).")
@click.option(
    "--cron",
    required=True,
    help="Five fields (minute hour day month weekday), or six with seconds last: "
    "'0 3 * * *' is 03:00 every day.",
)
@click.option("--timezone", default="UTC", show_default=True, help="IANA name, e.g. Europe/Berlin.")
@click.option(
    "--overlap",
    type=click.Choice(["allow", "forbid", "replace"]),
    default="allow",
    show_default=True,
    help="While the previous run goes on: start another, skip, or cancel it and start.",
)
@click.option(
    "--catch-up",
    type=click.Choice(["none", "one"]),
    default="none",
    show_default=True,
    help="Firings missed while no scheduler ran: skip them, or run once for them all.",
)
@click.option("--paused", is_flag=True, help="Create it paused (resume to start firing).")
@click.option("-f", "--file", "spec_file", default=None, help="A JSON job spec; - reads stdin.")
@click.option("--job-name", default="", help="A name for each run (with IMAGE).")
@click.option("--cpu", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--memory-mb", type=click.IntRange(min=1), default=256, show_default=True)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=3600.0,
    show_default=True,
    help="Seconds before a run is stopped and timed out.",
)
@click.option("--env", "env", multiple=True, help="K=V for the job's environment; repeatable.")
@click.option(
    "--constraint", "constraints", multiple=True, help="K=V: run only on nodes with that label."
)
@click.option("--label", "labels", multiple=True, help="K=V: a label of every run.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.argument("image", required=False)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def create(
    addr: str,
    token: str | None,
    name: str,
    cron: str,
    timezone: str,
    overlap: str,
    catch_up: str,
    paused: bool,
    spec_file: str | None,
    job_name: str,
    cpu: float,
    memory_mb: int,
    timeout: float,
    env: tuple[str, ...],
    constraints: tuple[str, ...],
    labels: tuple[str, ...],
    as_json: bool,
    image: str | None,
    command: tuple[str, ...],
) -> None:
    """Create a schedule that runs IMAGE (with CMD after --), or the job of --file."""
    job = {
        "name": job_name,
        "env": parse_pairs(env, "--env"),
        "constraints": Constraints(labels=parse_pairs(constraints, "--constraint")),
        "resources": JobResources(cpu=cpu, memory_mb=memory_mb),
        "timeout_s": timeout,
        "labels": parse_pairs(labels, "--label"),
    }
    try:
        spec = _spec_of(
            name, cron, timezone, overlap, catch_up, paused, spec_file, image, command, job
        )
    except CommandError as e:
        click.echo(f"berth: {e.message}", err=True)
        sys.exit(e.code)

    async def body(client: BerthClient) -> int:
        made = await client.create_schedule(spec)
        if as_json:
            print_json(made)
        else:
            click.echo(made.name)
            click.echo(f"next run {_when(made.next_run_at)}", err=True)
        return EXIT_OK

    run_client(addr, token, body)


@schedule.command(name="list")
@client_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(addr: str, token: str | None, as_json: bool) -> None:
    """The schedules, with their next and last runs."""

    async def body(client: BerthClient) -> int:
        listing = await client.list_schedules()
        if as_json:
            print_json(listing)
        else:
            click.echo(schedule_rows(listing.schedules))
        return EXIT_OK

    run_client(addr, token, body)


@schedule.command()
@client_options
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(addr: str, token: str | None, name: str, as_json: bool) -> None:
    """One schedule, with its recent runs (their job ids)."""

    async def body(client: BerthClient) -> int:
        found = await client.get_schedule(name)
        if as_json:
            print_json(found)
        else:
            click.echo(schedule_detail(found))
        return EXIT_OK

    run_client(addr, token, body)


def _pausing(paused: bool) -> click.Command:
    verb = "pause" if paused else "resume"
    about = (
        "Stop firing the schedule (runs going on go on)."
        if paused
        else "Fire the schedule again, from its next time after now (nothing missed is run)."
    )

    @schedule.command(name=verb, help=about)
    @client_options
    @click.argument("name")
    def command(addr: str, token: str | None, name: str) -> None:
        async def body(client: BerthClient) -> int:
            found = await client.get_schedule(name)
            changed = await client.replace_schedule(_as_spec(found, paused=paused))
            shown = "paused" if changed.paused else f"next run {_when(changed.next_run_at)}"
            click.echo(f"{changed.name}: {shown}")
            return EXIT_OK

        run_client(addr, token, body)

    return command


pause = _pausing(True)
resume = _pausing(False)


@schedule.command()
@client_options
@click.argument("name")
def delete(addr: str, token: str | None, name: str) -> None:
    """Delete a schedule; its runs stay."""

    async def body(client: BerthClient) -> int:
        gone = await client.delete_schedule(name)
        click.echo(f"deleted {gone.name}")
        return EXIT_OK

    run_client(addr, token, body)


@schedule.command()
@client_options
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def run(addr: str, token: str | None, name: str, as_json: bool) -> None:
    """Start a run now, under the schedule's overlap policy; prints the job's id."""

    async def body(client: BerthClient) -> int:
        fired = await client.run_schedule(name)
        if as_json:
            print_json(fired)
        else:
            click.echo(fired.job.id)
        return EXIT_OK

    run_client(addr, token, body)
