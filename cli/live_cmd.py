"""`berth logs`, `berth events`, `berth watch`: what the scheduler does, live.

Every command reads the scheduler's address from ``--addr`` / ``BERTH_ADDR`` (default
``http://127.0.0.1:8750``; several URLs separated by commas are tried in turn) and its
token from ``--token`` / ``BERTH_TOKEN``, else from the admin token file
``$BERTH_STATE_DIR/admin.token`` (``./state/admin.token``) when it is there. https URLs
are checked against the system's CAs, or those of ``--ca-file`` / ``BERTH_CA_FILE``.

Exit codes:

====  =================================================================================
0     done; for ``logs -f``, the job completed
N     ``logs -f``: the job failed with exit code N (a kill by signal S gives 128 + S)
1     ``logs -f``: the job failed without an exit code (it could not start, was lost)
124   ``logs -f``: the job timed out (as timeout(1) does)
130   ``logs -f``: the job was cancelled; any command: interrupted with Ctrl-C
66    no such job
69    the scheduler could not be reached, or is not ready
70    the scheduler refused the request for another reason
77    the token is missing, invalid, or not allowed to do this
====  =================================================================================

A job's own exit code may of course be one of the numbers the command uses itself;
the one-line message on stderr tells them apart.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from cli.loop import event_loop_factory
from cli.tls import CA_FILE_HELP
from common import codec
from common.client import BerthClient, SchedulerUnreachable, SchedulerUntrusted
from common.errors import BerthError, Forbidden, NotFound, Unauthorized, Unavailable
from common.models import Job
from common.tls import TLSSetupError

DEFAULT_ADDR = "http://127.0.0.1:8750"
ADMIN_TOKEN_FILE = "admin.token"
#: where ``--ca-file`` is kept for run_client (in the click context's meta)
_CA_FILE = "berth.ca_file"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_TIMED_OUT = 124
EXIT_CANCELLED = 130
EXIT_INTERRUPTED = 130
EXIT_NO_SUCH_JOB = 66
EXIT_UNREACHABLE = 69
EXIT_REFUSED = 70
EXIT_AUTH = 77

#: the shortest time between two redraws of `berth watch`
WATCH_REDRAW_S = 0.1
#: width of the progress bar of `berth watch`, in characters
BAR_WIDTH = 20

F = TypeVar("F", bound=Callable[..., Any])


class CommandError(Exception):
    """A one-line message for stderr and the exit code that goes with it."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# --- shared plumbing -------------------------------------------------------------------


def _keep_ca_file(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    ctx.meta[_CA_FILE] = value


def client_options(f: F) -> F:
    """The address, token and CA options every client command takes.

    ``--ca-file`` is not passed to the command: run_client, which builds the client,
    reads it from the click context, so commands do not carry it along.
    """
    f = click.option(
        "--ca-file",
        envvar="BERTH_CA_FILE",
        show_envvar=True,
        type=click.Path(dir_okay=False, exists=True),
        default=None,
        expose_value=False,
        callback=_keep_ca_file,
        help=CA_FILE_HELP,
    )(f)
    f = click.option(
        "--token",
        envvar="BERTH_TOKEN",
        show_envvar=True,
        default=None,
        help="Bearer token [default: the admin token of ./state when present].",
    )(f)
    f = click.option(
        "--addr",
        envvar="BERTH_ADDR",
        show_envvar=True,
        default=DEFAULT_ADDR,
        show_default=True,
        help="Scheduler URL, or several separated by commas.",
    )(f)
    return f


def resolve_token(token: str | None) -> str | None:
    """The token given, else the admin token of the local state directory, if any."""
    if token:
        return token.strip()
    path = Path(os.environ.get("BERTH_STATE_DIR") or "state") / ADMIN_TOKEN_FILE
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _exit_for(error: BaseException, addr: str, token: str | None) -> CommandError:
    if isinstance(error, SchedulerUntrusted):
        if "mismatch" in error.message:
            hint = "connect with a host name or address the certificate was issued for"
        else:
            hint = "pass --ca-file (or set BERTH_CA_FILE) with the CA that signed it"
        return CommandError(f"{error.message}; {hint}", EXIT_UNREACHABLE)
    if isinstance(error, SchedulerUnreachable):
        return CommandError(f"cannot reach the scheduler at {addr}", EXIT_UNREACHABLE)
    if isinstance(error, Unauthorized):
        if token is None:
            hint = "no token: pass --token or set BERTH_TOKEN"
        else:
            hint = f"the scheduler refused the token ({error.message})"
        return CommandError(hint, EXIT_AUTH)
    if isinstance(error, Forbidden):
        return CommandError(f"the token may not do this ({error.message})", EXIT_AUTH)
    if isinstance(error, NotFound):
        return CommandError(error.message, EXIT_NO_SUCH_JOB)
    if isinstance(error, Unavailable):
        return CommandError(f"the scheduler at {addr} is unavailable", EXIT_UNREACHABLE)
    if isinstance(error, BerthError):
        return CommandError(f"{error.message} ({error.code})", EXIT_REFUSED)
    raise error


def run_client(
    addr: str,
    token: str | None,
    body: Callable[[BerthClient], Coroutine[Any, Any, int]],
    *,
    interrupted: int = EXIT_INTERRUPTED,
) -> None:
    """Run ``body`` with a client on uvloop; turn errors into one line and an exit code."""
    token = resolve_token(token)
    ctx = click.get_current_context(silent=True)
    ca_file = ctx.meta.get(_CA_FILE) if ctx is not None else None
    try:
        # Built outside the loop: a CA file that is not a CA bundle is a usage error.
        client = BerthClient(addr, token, ca_file=ca_file)
    except TLSSetupError as e:
        raise click.BadParameter(str(e), param_hint="--ca-file") from e

    async def main() -> int:
        async with client:
            return await body(client)

    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            code = runner.run(main())
    except KeyboardInterrupt:
        code = interrupted
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as cat does.
        _silence_stdout()
        code = EXIT_OK
    except (BerthError, CommandError) as e:
        err = e if isinstance(e, CommandError) else _exit_for(e, addr, token)
        click.echo(f"berth: {err.message}", err=True)
        code = err.code
    sys.exit(code)


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def exit_code_of(state: str, exit_code: int | None) -> int:
    """The exit code `berth logs -f` ends with for a job that ended this way."""
    if state == "completed":
        return EXIT_OK
    if state == "timed_out":
        return EXIT_TIMED_OUT
    if state == "cancelled":
        return EXIT_CANCELLED
    if exit_code is None or exit_code == 0:
        return EXIT_FAILED
    if exit_code < 0:
        # Killed by signal -exit_code, as a shell reports it.
        return min(255, 128 - exit_code)
    return min(255, exit_code)


def _write(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


# --- berth logs ------------------------------------------------------------------------


def _attempt_outcome(job: Job, attempt: int) -> tuple[str, int | None] | None:
    """How ``attempt`` of the job ended, or None while it (or the job) goes on."""
    if attempt == job.attempt:
        if job.state in ("completed", "failed", "cancelled", "timed_out"):
            return job.state.value, job.exit_code
        return None
    for past in job.attempts:
        if past.attempt == attempt:
            return past.state.value, past.exit_code
    return "failed", None


async def _logs(client: BerthClient, job_id: str, attempt: int | None, follow: bool) -> int:
    if not follow:
        data, _, _ = await client.read_logs(job_id, attempt=attempt)
        _write(data)
        return EXIT_OK
    job = await client.get_job(job_id)
    current = attempt or job.attempt
    while True:
        async for chunk in client.follow_logs(job_id, attempt=current):
            _write(chunk)
        job = await client.get_job(job_id)
        if attempt is None and job.attempt > current:
            # Retried: the job goes on with its next attempt.
            click.echo(f"berth: attempt {current} ended; following attempt {job.attempt}", err=True)
            current = job.attempt
            continue
        outcome = _attempt_outcome(job, current)
        if outcome is None:
            continue
        state, code = outcome
        if state != "completed":
            detail = f" with exit code {code}" if code is not None else ""
            click.echo(f"berth: job {job_id} attempt {current} {state}{detail}", err=True)
        return exit_code_of(state, code)


@click.command()
@client_options
@click.option("-f", "--follow", is_flag=True, help="Follow the output until the job ends.")
@click.option(
    "--attempt",
    type=click.IntRange(min=1),
    default=None,
    help="Which attempt [default: the current one; -f goes on with retries].",
)
@click.argument("job_id", metavar="JOB")
def logs(addr: str, token: str | None, follow: bool, attempt: int | None, job_id: str) -> None:
    """Print a job's output (stdout and stderr, as the agent shipped it).

    With -f, follow it as it is written until the job ends, then exit with the job's
    exit code: 0 completed, the job's own code when it failed with one, 1 when it
    failed without one, 124 when it timed out, 130 when it was cancelled.

    Errors exit with 66 (no such job), 69 (scheduler unreachable), 77 (token missing
    or refused) or 70 (any other refusal), after one line on stderr.
    """
    run_client(addr, token, lambda c: _logs(c, job_id, attempt, follow))


# --- berth events ----------------------------------------------------------------------


def _topics(raw: str | None) -> list[str] | None:
    if not raw:
        return None
    topics = [t.strip() for t in raw.split(",") if t.strip()]
    for t in topics:
        if t not in ("jobs", "nodes", "stats"):
            raise click.BadParameter(f"{t!r} is not jobs, nodes or stats", param_hint="--topics")
    return topics


async def _events(
    client: BerthClient,
    topics: list[str] | None,
    job_id: str | None,
    since: int | None,
    count: int | None,
) -> int:
    if count == 0:
        return EXIT_OK
    seen = 0
    async for event in client.stream_events(topics=topics, job_id=job_id, since=since):
        _write(codec.dumps(event) + b"\n")
        if event.get("type") == "reset":
            click.echo(
                f"berth: events before {event.get('oldest')} are no longer kept; "
                f"going on after {event.get('index')}",
                err=True,
            )
            continue
        seen += 1
        if count is not None and seen >= count:
            break
    return EXIT_OK


@click.command()
@client_options
@click.option(
    "--topics",
    default=None,
    help="Some of jobs, nodes, stats, comma-separated [default: all three].",
)
@click.option("--job", "job_id", default=None, help="Only the events of this job.")
@click.option(
    "--since",
    type=click.IntRange(min=0),
    default=None,
    help="First replay the events after this index [default: only new events].",
)
@click.option(
    "-n",
    "--count",
    type=click.IntRange(min=0),
    default=None,
    help="Exit after this many events [default: run until interrupted].",
)
def events(
    addr: str,
    token: str | None,
    topics: str | None,
    job_id: str | None,
    since: int | None,
    count: int | None,
) -> None:
    """Print the event stream, one JSON event per line.

    A dropped connection is resumed where it stopped, so no event is missed or printed
    twice. When --since is older than what the scheduler keeps, a line with
    "type": "reset" (and "oldest", the first index kept) says so, and the stream goes
    on with the events after its "index".
    """
    wanted = _topics(topics)
    run_client(addr, token, lambda c: _events(c, wanted, job_id, since, count), interrupted=0)


# --- berth watch -----------------------------------------------------------------------


@dataclass
class Row:
    id: str
    name: str
    state: str
    node_id: str | None = None
    attempt: int = 1
    percent: float | None = None
    message: str = ""


class Board:
    """The jobs `berth watch` shows, kept up to date from the event stream."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.rows: dict[str, Row] = {}
        self.node_names: dict[str, str] = {}
        self.index = 0

    def load(self, jobs: list[Job], nodes: dict[str, str], index: int) -> None:
        self.rows = {}
        for job in jobs:
            progress = job.progress.percent if job.progress is not None else None
            message = job.progress.message if job.progress is not None else ""
            self.rows[job.id] = Row(
                job.id, job.name, job.state.value, job.node_id, job.attempt, progress, message
            )
        self.node_names = dict(nodes)
        self.index = index

    def apply(self, event: dict[str, Any]) -> None:
        """Take one event into the board."""
        self.index = max(self.index, int(event.get("index") or 0))
        kind = event.get("type")
        data = event.get("data") or {}
        job_id = event.get("job_id")
        if kind == "node.registered" and event.get("node_id"):
            self.node_names[event["node_id"]] = str(data.get("name", ""))
            return
        if not job_id or not isinstance(data, dict):
            return
        row = self.rows.get(job_id)
        if kind == "job.created":
            self.rows[job_id] = Row(job_id, str(data.get("name", "")), "queued")
        elif kind == "job.state":
            if row is None:
                row = self.rows[job_id] = Row(job_id, "", str(data.get("state", "")))
            row.state = str(data.get("state", row.state))
            row.attempt = int(data.get("attempt", row.attempt))
            if row.state == "queued":
                row.node_id, row.percent, row.message = None, None, ""
            else:
                row.node_id = data.get("node_id", row.node_id)
            if row.state == "completed" and row.percent is not None:
                row.percent = 100.0
        elif kind == "job.progress" and row is not None:
            row.percent = float(data.get("percent", 0.0))
            row.message = str(data.get("message", ""))
        self._trim()

    def _trim(self) -> None:
        if len(self.rows) > self.limit:
            # Ids sort by submission: drop the oldest rows past the limit.
            for job_id in sorted(self.rows)[: len(self.rows) - self.limit]:
                del self.rows[job_id]

    def render(self, width: int) -> str:
        head = f"{'JOB':<14}  {'NAME':<16}  {'STATE':<9}  {'NODE':<12}  {'TRY':>3}  PROGRESS"
        lines = [f"berth watch  event index {self.index}  jobs shown {len(self.rows)}", head]
        for job_id in sorted(self.rows, reverse=True):
            row = self.rows[job_id]
            node = self.node_names.get(row.node_id or "", row.node_id or "-")
            lines.append(
                f"{row.id:<14}  {row.name[:16]:<16}  {row.state:<9}  {node[:12]:<12}  "
                f"{row.attempt:>3}  {progress_bar(row.percent, row.message)}"
            )
        return "\n".join(line[:width] for line in lines)


def progress_bar(percent: float | None, message: str = "") -> str:
    """``[#########-----------]  45% Searching``; empty without progress."""
    if percent is None:
        return ""
    p = max(0.0, min(100.0, percent))
    filled = round(p / 100 * BAR_WIDTH)
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    text = f"[{bar}] {p:3.0f}%"
    return f"{text} {message}" if message else text


async def _snapshot(client: BerthClient, board: Board) -> None:
    nodes = await client.list_nodes()
    jobs = await client.list_jobs(limit=board.limit)
    board.load(jobs.jobs, {n.id: n.name for n in nodes.nodes}, jobs.index)


async def _watch(client: BerthClient, limit: int) -> int:
    board = Board(limit)
    tty = sys.stdout.isatty()
    dirty = True

    def draw() -> None:
        nonlocal dirty
        dirty = False
        width = shutil.get_terminal_size((120, 40)).columns if tty else 1000
        text = board.render(width)
        # On a terminal redraw in place; otherwise print one table after another.
        _write(("\x1b[H\x1b[2J" + text + "\n").encode() if tty else (text + "\n\n").encode())

    async def redraw() -> None:
        # Events often come in bursts: draw at most every WATCH_REDRAW_S.
        while True:
            if dirty:
                draw()
            await asyncio.sleep(WATCH_REDRAW_S)

    await _snapshot(client, board)
    painter = asyncio.create_task(redraw())
    try:
        async for event in client.stream_events(since=board.index):
            if event.get("type") == "reset":
                await _snapshot(client, board)
            else:
                board.apply(event)
            dirty = True
    finally:
        painter.cancel()
    return EXIT_OK


@click.command()
@client_options
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=30,
    show_default=True,
    help="Jobs shown, newest first.",
)
def watch(addr: str, token: str | None, limit: int) -> None:
    """A live table of jobs: state, node, attempt and progress, redrawn as events arrive.

    Stop it with Ctrl-C.
    """
    run_client(addr, token, lambda c: _watch(c, limit), interrupted=0)
