"""`berth run`: submit a job, follow its output, fetch its outputs, exit with its code.

::

    berth run [--input DIR] [--output DIR] [--cpu C] [--memory-mb M] [--timeout S]
              [--env K=V ...] [--secret-env K=SECRET ...] [--image-pull-secret SECRET]
              [--pull-policy always|if-not-present|never] IMAGE -- CMD...

``--input DIR`` is archived (tar.gz), uploaded as a blob and extracted into the job's
``/workspace/in``; what the job leaves in ``/workspace/out`` is downloaded into
``--output DIR`` once it ends, extracted with the same checks the agent applies to
inputs (nothing is written outside DIR). The job's output goes to stdout as it comes,
attempt after attempt when it is retried; Berth's own messages go to stderr. Ctrl-C
cancels the job.

The scheduler's address and token are read as every client command reads them
(``--addr`` / ``BERTH_ADDR``, ``--token`` / ``BERTH_TOKEN``, else ``./state/admin.token``),
and the exit codes are those of ``berth logs -f`` (see :mod:`cli.live_cmd`): the job's
own exit code when it failed with one, 0 when it completed, 1 when it failed without
one or its outputs could not be fetched, 124 when it timed out, 130 when it was
cancelled or interrupted, 69/70/77 when the scheduler could not be reached, refused
the job or the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, cast, get_args

import click

from cli.live_cmd import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    CommandError,
    client_options,
    exit_code_of,
    run_client,
)
from common.archives import ArchiveError, create_tar_gz, extract
from common.client import BerthClient
from common.errors import BerthError, NotFound
from common.models import Constraints, Job, JobResources, JobSpec, PullPolicy, SecretRef
from common.states import TERMINAL, JobState

#: how long one blocking wait for the job's end may last
WAIT_S = 30.0


def parse_pairs(items: tuple[str, ...], option: str) -> dict[str, str]:
    """``("A=1", "B=x=y")`` -> ``{"A": "1", "B": "x=y"}``."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not K=V", param_hint=option)
        pairs[key] = value
    return pairs


def job_env(env: tuple[str, ...], secret_env: tuple[str, ...]) -> dict[str, str | SecretRef]:
    """A job's env from ``--env K=V`` and ``--secret-env K=SECRET`` (the value of the
    stored secret SECRET, given to the job when it starts)."""
    out: dict[str, str | SecretRef] = dict(parse_pairs(env, "--env"))
    for key, name in parse_pairs(secret_env, "--secret-env").items():
        out[key] = SecretRef(name)
    return out


#: the option of ``berth run`` and ``berth submit`` that names secrets for the env
secret_env_option = click.option(
    "--secret-env",
    "secret_env",
    multiple=True,
    metavar="K=SECRET",
    help="Set K to the value of the stored secret SECRET (berth secret set); repeatable.",
)


def image_pull_options(func: Any) -> Any:
    """``--image-pull-secret NAME`` and ``--pull-policy``, for ``berth run`` and
    ``berth submit``."""
    func = click.option(
        "--pull-policy",
        type=click.Choice(get_args(PullPolicy)),
        default=None,
        help="When the node pulls the image: before every attempt (always), only when "
        "it lacks it (if-not-present), or never. Default: the agent's --pull-policy.",
    )(func)
    return click.option(
        "--image-pull-secret",
        default=None,
        metavar="SECRET",
        help="Pull the image with the registry credentials in the stored secret SECRET "
        '(berth secret set): {"registry", "username", "password"} or a Docker config JSON.',
    )(func)


def image_pull_fields(image_pull_secret: str | None, pull_policy: str | None) -> dict[str, Any]:
    """The JobSpec fields those options set (those not given are left out)."""
    fields: dict[str, Any] = {}
    if image_pull_secret is not None:
        fields["image_pull_secret"] = image_pull_secret
    if pull_policy is not None:
        fields["pull_policy"] = pull_policy
    return fields


def _say(message: str) -> None:
    click.echo(f"berth: {message}", err=True)


@click.command(context_settings={"allow_interspersed_args": False})
@client_options
@click.option(
    "--input",
    "input_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Directory sent to the job as /workspace/in.",
)
@click.option(
    "--output",
    "output_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory that receives what the job left in /workspace/out.",
)
@click.option("--cpu", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--memory-mb", type=click.IntRange(min=1), default=256, show_default=True)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=3600.0,
    show_default=True,
    help="Seconds before the job is stopped and timed out.",
)
@click.option("--env", "env", multiple=True, help="K=V for the job's environment; repeatable.")
@secret_env_option
@image_pull_options
@click.option(
    "--constraint",
    "constraints",
    multiple=True,
    help="K=V: run only on a node with that label; repeatable.",
)
@click.option("--name", default="", help="A name for the job.")
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(
    addr: str,
    token: str | None,
    input_dir: Path | None,
    output_dir: Path | None,
    cpu: float,
    memory_mb: int,
    timeout: float,
    env: tuple[str, ...],
    secret_env: tuple[str, ...],
    image_pull_secret: str | None,
    pull_policy: str | None,
    constraints: tuple[str, ...],
    name: str,
    image: str,
    command: tuple[str, ...],
) -> None:
    """Run IMAGE (with CMD after --) as a job: follow its output, exit with its code."""
    if command[:1] == ("--",):
        # Options end at IMAGE, so click hands the separator on with the command.
        command = command[1:]
    spec = JobSpec(
        image=image,
        name=name,
        command=list(command) or None,
        env=job_env(env, secret_env),
        constraints=Constraints(labels=parse_pairs(constraints, "--constraint")),
        resources=JobResources(cpu=cpu, memory_mb=memory_mb),
        timeout_s=timeout,
        image_pull_secret=image_pull_secret,
        pull_policy=cast(PullPolicy | None, pull_policy),
    )
    run_client(addr, token, lambda client: _run(client, spec, input_dir, output_dir))


async def _run(
    client: BerthClient, spec: JobSpec, input_dir: Path | None, output_dir: Path | None
) -> int:
    with tempfile.TemporaryDirectory(prefix="berth-run-") as tmp:
        if input_dir is not None:
            spec.inputs = await _send_inputs(client, input_dir, Path(tmp))
        # The client gives the submit an Idempotency-Key, so a lost reply is resent safely.
        job = await client.submit_job(spec)
        _say(f"job {job.id} submitted")
        job = await _follow_until_cancelled(client, job)
        if output_dir is not None:
            await _fetch_outputs(client, job, output_dir, Path(tmp))
    if job.state is not JobState.COMPLETED:
        why = f": {job.error}" if job.error else ""
        _say(f"job {job.id} {job.state.value}{why}")
    return exit_code_of(job.state.value, job.exit_code)


async def _send_inputs(client: BerthClient, input_dir: Path, tmp: Path) -> str:
    archive = tmp / "inputs.tar.gz"
    try:
        count = await asyncio.to_thread(create_tar_gz, input_dir, archive)
    except ArchiveError as e:
        raise CommandError(f"--input {input_dir}: {e.message}", EXIT_FAILED) from e
    digest = await client.upload_blob(archive)
    size = (await asyncio.to_thread(os.stat, archive)).st_size
    _say(f"sent {count} files from {input_dir} ({size} bytes compressed)")
    return digest


async def _follow_until_cancelled(client: BerthClient, job: Job) -> Job:
    """Follow the job to its end; on SIGINT cancel it first."""
    loop = asyncio.get_running_loop()
    follow = asyncio.create_task(_follow(client, job))
    interrupted = asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
    stop = asyncio.create_task(interrupted.wait())
    try:
        await asyncio.wait({follow, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
    if follow.done():
        return follow.result()
    follow.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await follow
    _say(f"interrupted: cancelling job {job.id}")
    with contextlib.suppress(BerthError):
        await client.cancel_job(job.id)
    raise CommandError(f"job {job.id} cancelled", EXIT_CANCELLED)


async def _follow(client: BerthClient, job: Job) -> Job:
    """Copy each attempt's output to stdout until the job has ended; the ended job."""
    attempt = job.attempt
    out = sys.stdout.buffer
    while True:
        async for chunk in client.follow_logs(job.id, attempt=attempt):
            await asyncio.to_thread(_write, out, chunk)
        job = await client.get_job(job.id)
        while job.state not in TERMINAL and job.attempt == attempt:
            # The attempt's output ended before its state was committed.
            job = await client.get_job(job.id, index=job.index, wait=WAIT_S)
        if job.state in TERMINAL and job.attempt == attempt:
            return job
        _say(f"attempt {attempt} of job {job.id} ended; attempt {job.attempt} follows")
        attempt = job.attempt


def _write(out: BinaryIO, data: bytes) -> None:
    out.write(data)
    out.flush()


async def _fetch_outputs(client: BerthClient, job: Job, output_dir: Path, tmp: Path) -> None:
    if job.outputs is None:
        _say(f"job {job.id} left no outputs (nothing in /workspace/out)")
        return
    archive = tmp / "outputs.tar.gz"
    try:
        await client.download_outputs(job.id, archive)
    except NotFound as e:
        raise CommandError(e.message, EXIT_FAILED) from e
    try:
        count = await asyncio.to_thread(extract, archive, output_dir)
    except ArchiveError as e:
        raise CommandError(
            f"the outputs of job {job.id} were refused: {e.message}", EXIT_FAILED
        ) from e
    _say(f"received {count} files into {output_dir}")
