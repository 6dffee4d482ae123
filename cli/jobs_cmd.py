"""`berth submit`, `jobs`, `job`, `nodes`, `schedulers`, `cancel`, `retry`, `pause`,
`resume`, `drain`.

Listings are tables sized to the terminal, or JSON with ``--json`` for scripts. Address,
token and exit codes are those of every client command (see ``berth logs --help``).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from cli.gpu_text import device_rows, gpu_cell, has_gpus
from cli.job_detail import job_detail
from cli.live_cmd import EXIT_FAILED, EXIT_OK, CommandError, client_options, run_client
from cli.run_cmd import image_pull_fields, image_pull_options, job_env, secret_env_option
from cli.text import ago, table
from common import codec
from common.client import BerthClient
from common.errors import CodecError
from common.models import Job, JobFilter, JobSelection, JobSpec, Node
from common.states import JobState

#: usage errors (click's own) exit with 2
EXIT_USAGE = 2
ACTIONS = ("cancel", "retry", "pause", "resume")


# --- formatting ------------------------------------------------------------------------


def _progress(job: Job) -> str:
    if job.progress is None:
        return "-"
    return f"{job.progress.percent:.0f}%"


def job_rows(jobs: list[Job]) -> str:
    now = datetime.now(UTC)
    rows = [
        [
            j.id,
            j.name or "-",
            j.state.value,
            j.node_id or "-",
            str(j.attempt),
            _progress(j),
            ago(j.created_at, now),
            j.reason or j.error or "",
        ]
        for j in jobs
    ]
    headers = ["ID", "NAME", "STATE", "NODE", "TRY", "PROGRESS", "SUBMITTED", "REASON"]
    return table(headers, rows, flexible=7)


def node_rows(nodes: list[Node]) -> str:
    """Like Slurm's sinfo: who can take work, and why not (GPUs where a node has any)."""
    now = datetime.now(UTC)
    gpus = has_gpus(nodes)
    rows = []
    for n in nodes:
        total_cpu = n.capacity.cpu - n.reserved.cpu
        total_mem = n.capacity.memory_mb - n.reserved.memory_mb
        reason = n.reason or ""
        if n.draining:
            reason = f"draining: {n.drain_reason}" if n.drain_reason else "draining"
        rows.append(
            [
                n.name,
                n.state.value,
                f"{n.allocated.cpu:g}/{total_cpu:g}",
                f"{n.allocated.memory_mb}/{total_mem} MiB",
                *([gpu_cell(n)] if gpus else []),
                f"{len(n.running_jobs)}/{n.max_parallel}",
                ago(n.last_heartbeat_at, now),
                reason,
            ]
        )
    headers = ["NAME", "STATE", "CPU", "MEMORY", *(["GPUS"] if gpus else []), "JOBS"]
    headers += ["HEARTBEAT", "REASON"]
    return table(headers, rows, flexible=len(headers) - 1)


def scheduler_rows(schedulers: list[dict[str, Any]], now: datetime | None = None) -> str:
    """The scheduler processes sharing the store: which one leads, how far each applied."""
    now = now or datetime.now(UTC)
    rows = [
        [
            _cell(s.get("id")),
            _cell(s.get("url")),
            _cell(s.get("role")),
            _cell(s.get("epoch")),
            _cell(s.get("applied_index")),
            ago(_parse_time(s.get("seen")), now),
        ]
        for s in schedulers
    ]
    headers = ["ID", "URL", "ROLE", "EPOCH", "APPLIED", "SEEN"]
    return table(headers, rows, flexible=1)


def _cell(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def _parse_time(value: object) -> datetime | None:
    """An RFC 3339 time as the scheduler writes it, or None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        return None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def print_json(obj: Any) -> None:
    click.echo(codec.encode(obj).decode())


# --- commands ----------------------------------------------------------------------------


def _specs_of(
    spec_file: str | None,
    array_range: str | None,
    name: str,
    env: tuple[str, ...],
    secret_env: tuple[str, ...],
    image: str | None,
    command: tuple[str, ...],
) -> list[JobSpec]:
    """What `berth submit` was given: a spec file or an image, perhaps as an array."""
    from cli.array_cmd import parse_array

    if (spec_file is None) == (image is None):
        raise click.UsageError("give -f SPEC.json or IMAGE [-- CMD...], not both")
    if image is not None:
        if command[:1] == ("--",):
            command = command[1:]
        spec = JobSpec(
            image=image, name=name, command=list(command) or None, env=job_env(env, secret_env)
        )
        specs = [spec]
    else:
        assert spec_file is not None
        specs = _read_specs(spec_file)
    if array_range is not None:
        if len(specs) != 1:
            raise click.UsageError("--array takes one spec, not a list")
        try:
            specs[0].array = parse_array(array_range)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--array") from None
    return specs


def _read_specs(path: str) -> list[JobSpec]:
    """One spec, a list of specs, or {"jobs": [...]}; errors name the field."""
    raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    data = codec.loads(raw)
    items = data["jobs"] if isinstance(data, dict) and "jobs" in data else data
    items = items if isinstance(items, list) else [items]
    specs = []
    for i, item in enumerate(items):
        try:
            specs.append(codec.convert(item, JobSpec))
        except CodecError as e:
            where = f"spec {i}: " if len(items) > 1 else ""
            raise CommandError(f"{path}: {where}{e.message}", EXIT_USAGE) from None
    if not specs:
        raise CommandError(f"{path}: no job spec in it", EXIT_USAGE)
    return specs


def _with_rules(specs: list[JobSpec], rules: dict[str, Any]) -> list[JobSpec]:
    """The specs with the fields given as flags (queue rules, image pulls), each checked
    as the API checks it."""
    if not rules:
        return specs
    out = []
    for spec in specs:
        try:
            out.append(codec.convert({**codec.to_builtins(spec), **rules}, JobSpec))
        except CodecError as e:
            raise CommandError(e.message, EXIT_USAGE) from None
    return out


def _dependency(text: str) -> str | dict[str, str]:
    """JOB (it must complete) or JOB:completed|ended|failed."""
    job, _, when = text.partition(":")
    if not when:
        return job
    if when not in ("completed", "ended", "failed"):
        raise click.BadParameter(f"{text!r}: after the colon comes completed, ended or failed")
    return {"job": job, "when": when}


def queue_rule_options(func: Any) -> Any:
    """Flags for a job's place in the queue and how it ends or goes on."""
    options = [
        click.option("--priority", type=click.IntRange(0, 100), default=None, help="0-100."),
        click.option("--max-retries", type=click.IntRange(min=0), default=None),
        click.option(
            "--max-requeues",
            type=click.IntRange(min=0),
            default=None,
            help="Requeues after losses the job did not cause (default 3).",
        ),
        click.option(
            "--queue-timeout",
            type=float,
            default=None,
            help="Seconds it may wait to start before it fails (queue_timeout).",
        ),
        click.option("--deadline", default=None, help="RFC 3339 time after which it is cancelled."),
        click.option(
            "--expected-runtime",
            type=float,
            default=None,
            metavar="SECONDS",
            help="How long it is expected to run, at most its timeout (expected_runtime_s): "
            "reservations are planned with it, and a shorter estimate lets it backfill "
            "sooner. Default: its timeout.",
        ),
        click.option(
            "--after",
            "after",
            multiple=True,
            metavar="JOB[:completed|ended|failed]",
            callback=lambda _c, _p, v: [_dependency(x) for x in v],
            help="Start after JOB ends so (default: completed). Repeatable.",
        ),
        click.option(
            "--retry-on-exit-code",
            "retry_on",
            type=int,
            multiple=True,
            help="Retry only failures with this exit code. Repeatable.",
        ),
        click.option(
            "--no-retry-on-exit-code",
            "no_retry_on",
            type=int,
            multiple=True,
            help="Never retry failures with this exit code. Repeatable.",
        ),
        click.option(
            "--preemptible",
            is_flag=True,
            default=None,
            help="A job of higher priority may stop and requeue it.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _rules_of(**given: Any) -> dict[str, Any]:
    """The JobSpec fields the queue-rule flags set (those not given are left alone)."""
    names = {
        "priority": "priority",
        "max_retries": "max_retries",
        "max_requeues": "max_requeues",
        "queue_timeout": "queue_timeout_s",
        "deadline": "deadline",
        "expected_runtime": "expected_runtime_s",
        "after": "depends_on",
        "retry_on": "retry_on_exit_codes",
        "no_retry_on": "no_retry_on_exit_codes",
        "preemptible": "preemptible",
    }
    return {
        names[flag]: list(value) if isinstance(value, tuple) else value
        for flag, value in given.items()
        if value is not None and value != [] and value != ()
    }


@click.command(context_settings={"allow_interspersed_args": False})
@client_options
@click.option(
    "-f",
    "--file",
    "spec_file",
    default=None,
    help="A JSON job spec, a list of specs, or {'jobs': [...]}; - reads stdin. "
    "Without it: IMAGE -- CMD...",
)
@click.option(
    "--array",
    "array_range",
    default=None,
    metavar="0-LAST[%MAX]|N",
    help="Run as a job array: 0-99%10 is 100 tasks, at most 10 at once; a plain count "
    "N is 0-(N-1). Each task gets $BERTH_ARRAY_INDEX and $BERTH_ARRAY_ID; prints the "
    "array id.",
)
@click.option("--name", default="", help="A name for the job (with IMAGE).")
@click.option("--env", "env", multiple=True, help="K=V for the job's environment (with IMAGE).")
@secret_env_option
@image_pull_options
@click.option(
    "--idempotency-key",
    default=None,
    help="Submitting again with this key returns the same job (default: a new key).",
)
@queue_rule_options
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as JSON.")
@click.argument("image", required=False)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def submit(
    addr: str,
    token: str | None,
    spec_file: str | None,
    array_range: str | None,
    name: str,
    env: tuple[str, ...],
    secret_env: tuple[str, ...],
    image_pull_secret: str | None,
    pull_policy: str | None,
    idempotency_key: str | None,
    as_json: bool,
    image: str | None,
    command: tuple[str, ...],
    **rules: Any,
) -> None:
    """Submit jobs from a JSON spec file, or IMAGE (with CMD after --); prints their ids.
    The queue-rule and image pull flags apply to every spec submitted."""
    try:
        specs = _specs_of(spec_file, array_range, name, env, secret_env, image, command)
        pulling = image_pull_fields(image_pull_secret, pull_policy)
        specs = _with_rules(specs, {**_rules_of(**rules), **pulling})
    except CommandError as e:
        click.echo(f"berth: {e.message}", err=True)
        sys.exit(e.code)

    async def body(client: BerthClient) -> int:
        if len(specs) == 1:
            jobs = [await client.submit_job(specs[0], idempotency_key=idempotency_key)]
        else:
            jobs = await client.submit_batch(specs)
        if as_json:
            print_json(jobs)
        else:
            for job in jobs:
                # An array's first task: its id is the array's.
                click.echo(job.id)
                if job.array_id is not None and job.spec.array is not None:
                    click.echo(f"array {job.array_id}: {job.spec.array.count} tasks", err=True)
        return EXIT_OK

    run_client(addr, token, body)


@click.command()
@client_options
@click.option(
    "--state",
    type=click.Choice([s.value for s in JobState]),
    default=None,
    help="Only jobs in this state.",
)
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def jobs(addr: str, token: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """List jobs, newest first."""

    async def body(client: BerthClient) -> int:
        page = await client.list_jobs(state=state, limit=limit)
        if as_json:
            print_json(page.jobs)
        elif page.jobs:
            click.echo(job_rows(page.jobs))
        return EXIT_OK

    run_client(addr, token, body)


@click.command()
@client_options
@click.argument("job_id", metavar="JOB")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def job(addr: str, token: str | None, job_id: str, as_json: bool) -> None:
    """One job: its state, why it waits, and every attempt."""

    async def body(client: BerthClient) -> int:
        found = await client.get_job(job_id)
        if as_json:
            print_json(found)
        else:
            click.echo(job_detail(found))
        return EXIT_OK

    run_client(addr, token, body)


@click.command()
@client_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def nodes(addr: str, token: str | None, as_json: bool) -> None:
    """Node status, like sinfo: state, reason, CPU, memory and GPUs used, jobs,
    heartbeat; then each GPU with the job that holds it and its live use."""

    async def body(client: BerthClient) -> int:
        listing = await client.list_nodes()
        if as_json:
            print_json(listing.nodes)
        elif listing.nodes:
            click.echo(node_rows(listing.nodes))
            if has_gpus(listing.nodes):
                click.echo("")
                click.echo(device_rows(listing.nodes))
        return EXIT_OK

    run_client(addr, token, body)


@click.command()
@client_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def schedulers(addr: str, token: str | None, as_json: bool) -> None:
    """The scheduler processes sharing the store: the leader and its standbys."""

    async def body(client: BerthClient) -> int:
        found = await client.schedulers()
        if as_json:
            print_json(found)
        elif found:
            click.echo(scheduler_rows(found))
        return EXIT_OK

    run_client(addr, token, body)


def _action(action: str) -> click.Command:
    @click.command(name=action)
    @client_options
    @click.argument("job_ids", nargs=-1, metavar="[JOB]...")
    @click.option(
        "--state",
        type=click.Choice([s.value for s in JobState]),
        default=None,
        help="Every job in this state (with --label: and these labels).",
    )
    @click.option("--label", "labels", multiple=True, help="k=v: every job with this label.")
    @click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
    def command(
        addr: str,
        token: str | None,
        job_ids: tuple[str, ...],
        state: str | None,
        labels: tuple[str, ...],
        as_json: bool,
    ) -> None:
        if job_ids and (state or labels):
            raise click.UsageError("give job ids or a filter (--state, --label), not both")
        if not job_ids and not (state or labels):
            raise click.UsageError("give job ids or a filter (--state, --label)")
        pairs = {}
        for item in labels:
            key, sep, value = item.partition("=")
            if not sep:
                raise click.BadParameter(f"{item!r} is not key=value", param_hint="--label")
            pairs[key] = value
        if job_ids:
            selection = JobSelection(ids=list(job_ids))
        else:
            job_state = JobState(state) if state else None
            selection = JobSelection(filter=JobFilter(state=job_state, labels=pairs))

        async def body(client: BerthClient) -> int:
            results = await client.act_many(action, selection)
            if as_json:
                print_json(results.results)
            for r in results.results:
                if as_json:
                    continue
                if r.ok:
                    click.echo(f"{r.job_id}  {r.state.value if r.state else ''}")
                else:
                    message = (r.error or {}).get("message", "refused")
                    click.echo(f"{r.job_id}  refused: {message}", err=True)
            return EXIT_OK if all(r.ok for r in results.results) else EXIT_FAILED

        run_client(addr, token, body)

    command.help = (
        f"{action.capitalize()} jobs: one, several, or every job matching a filter. "
        "Exits 1 if any of them was refused."
    )
    return command


cancel, retry, pause, resume = (_action(a) for a in ACTIONS)


@click.command()
@client_options
@click.argument("node", metavar="NODE")
@click.option("--reason", default="", help="Shown with the node's status.")
@click.option("--undo", is_flag=True, help="Take jobs again.")
@click.option(
    "--requeue",
    is_flag=True,
    help="Stop the node's jobs now and queue them again elsewhere (not a retry).",
)
def drain(addr: str, token: str | None, node: str, reason: str, undo: bool, requeue: bool) -> None:
    """Stop giving a node new jobs (running ones finish, or are requeued with
    --requeue); --undo reverses it.

    NODE is a node id or name."""

    async def body(client: BerthClient) -> int:
        node_id = node
        listing = await client.list_nodes()
        by_name = {n.name: n.id for n in listing.nodes}
        node_id = by_name.get(node, node)
        changed = await client.drain_node(
            node_id, drain=not undo, reason=reason, requeue=requeue and not undo
        )
        state = "draining" if changed.draining else "taking jobs"
        click.echo(f"{changed.name}  {state}")
        return EXIT_OK

    run_client(addr, token, body)


COMMANDS = [submit, jobs, job, nodes, schedulers, cancel, retry, pause, resume, drain]
