"""`berth agent`: run the agent daemon on a worker host.

Every flag also reads an environment variable ``BERTH_AGENT_<FLAG>`` (for example
``BERTH_AGENT_SCHEDULER``, ``BERTH_AGENT_JOIN_TOKEN_FILE``, ``BERTH_AGENT_MAX_PARALLEL``);
a repeated flag (``--label``) takes a space-separated list from its variable, except
``--allow``, which takes a comma-separated one (also from ``BERTH_ALLOW``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import cast, get_args

import click

from agent.config import (
    DEFAULT_MAX_JOB_DISK_MB,
    DEFAULT_PIDS_LIMIT,
    DEFAULT_PULL_POLICY,
    DEFAULT_PULL_TIMEOUT_S,
    DEFAULT_STATE_DIR,
    DEFAULT_STOP_GRACE_S,
    AgentConfig,
    ExecutorKind,
    GpuSelection,
    default_max_parallel,
)
from cli.allow import allow_list, allow_option
from cli.tls import CA_FILE_HELP
from common.models import PullPolicy
from common.tls import TLSSetupError, client_context


def parse_labels(items: tuple[str, ...]) -> dict[str, str]:
    """``("zone=a", "gpu=no")`` -> ``{"zone": "a", "gpu": "no"}``."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not key=value", param_hint="--label")
        labels[key.strip()] = value.strip()
    return labels


def _listen(value: str | None) -> tuple[str, int] | None:
    """``--metrics-listen``: HOST:PORT, or nothing."""
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r} is not HOST:PORT", param_hint="--metrics-listen")
    return host.strip("[]") or "127.0.0.1", int(port)


def _gpus(value: str) -> GpuSelection:
    """``--gpus``: auto, none, or GPU indices."""
    from agent.gpus import parse_selection

    try:
        return parse_selection(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--gpus") from e


@click.command()
@click.option(
    "--scheduler",
    "schedulers",
    envvar="BERTH_AGENT_SCHEDULER",
    required=True,
    show_envvar=True,
    help="Scheduler URL, or several separated by commas (failover).",
)
@click.option(
    "--join-token-file",
    required=True,
    show_envvar=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="File holding the scheduler's join token (its state dir's join.token).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    show_envvar=True,
    help="Where the agent keeps its node id, token and undelivered results.",
)
@click.option("--name", default=None, show_envvar=True, help="Node name [default: hostname].")
@click.option(
    "--label",
    "labels",
    envvar="BERTH_AGENT_LABEL",
    multiple=True,
    show_envvar=True,
    help="Node label key=value; repeatable.",
)
@click.option(
    "--max-parallel",
    type=click.IntRange(1, 1024),
    default=None,
    show_envvar=True,
    help="Jobs run at once [default: half the CPUs, at least 1].",
)
@click.option(
    "--executor",
    type=click.Choice(["auto", "docker", "process"]),
    default="auto",
    show_default=True,
    show_envvar=True,
    help="auto = docker when dockerd answers, else process (not a sandbox).",
)
@click.option(
    "--gpus",
    default="auto",
    show_default=True,
    show_envvar=True,
    callback=lambda _ctx, _param, value: _gpus(value),
    help="GPUs offered to jobs: auto (every one NVML finds), none, or indices like 0,1 "
    "(registered by index only where NVML is missing).",
)
@click.option(
    "--reserve-cpu",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    show_envvar=True,
    help="Cores kept for the host, not offered to jobs.",
)
@click.option(
    "--reserve-memory-mb",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    show_envvar=True,
    help="MiB of RAM kept for the host.",
)
@click.option(
    "--pull-policy",
    type=click.Choice(get_args(PullPolicy)),
    default=DEFAULT_PULL_POLICY,
    show_default=True,
    show_envvar=True,
    help="When the docker executor pulls a job's image, unless the job names its "
    "pull_policy: before every attempt (always), only when the node lacks it "
    "(if-not-present), or never.",
)
@click.option(
    "--pull-timeout",
    type=click.FloatRange(min=1),
    default=DEFAULT_PULL_TIMEOUT_S,
    show_default=True,
    show_envvar=True,
    help="Seconds before a pull fails the job.",
)
@click.option(
    "--stop-grace",
    type=click.FloatRange(min=0),
    default=DEFAULT_STOP_GRACE_S,
    show_default=True,
    show_envvar=True,
    help="Seconds between SIGTERM and SIGKILL on cancel or timeout.",
)
@click.option(
    "--ca-file",
    # BERTH_CA_FILE as for the client commands, so one setting serves a whole host.
    envvar=["BERTH_AGENT_CA_FILE", "BERTH_CA_FILE"],
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    show_envvar=True,
    help=CA_FILE_HELP,
)
@allow_option
@click.option(
    "--pids-limit",
    type=click.IntRange(16, 1_000_000),
    default=DEFAULT_PIDS_LIMIT,
    show_default=True,
    show_envvar=True,
    help="Most processes (threads included) in one job's container.",
)
@click.option(
    "--max-job-disk-mb",
    type=click.IntRange(1, None),
    default=DEFAULT_MAX_JOB_DISK_MB,
    show_default=True,
    show_envvar=True,
    help="Most MiB one job may write into its container's filesystem, workspace and "
    "checkpoint; past it the job fails (disk quota exceeded).",
)
@click.option(
    "--metrics-listen",
    default=None,
    show_envvar=True,
    callback=lambda _ctx, _param, value: _listen(value),
    help="HOST:PORT to serve the agent's Prometheus metrics on, at /metrics, without "
    "authentication (bind it to loopback or a private network) [default: not served].",
)
@click.option("--log-level", default="info", show_default=True, show_envvar=True)
def agent(
    schedulers: str,
    join_token_file: Path,
    state_dir: Path,
    name: str | None,
    labels: tuple[str, ...],
    max_parallel: int | None,
    executor: str,
    gpus: GpuSelection,
    reserve_cpu: float,
    reserve_memory_mb: int,
    pull_policy: str,
    pull_timeout: float,
    stop_grace: float,
    ca_file: str | None,
    allow: tuple[str, ...],
    pids_limit: int,
    max_job_disk_mb: int,
    metrics_listen: tuple[str, int] | None,
    log_level: str,
) -> None:
    """Run the agent daemon: register with the scheduler and run the jobs it assigns.

    The first SIGTERM drains (no new jobs; running ones finish and are reported); a
    second one cancels the running jobs, reports them cancelled and exits.
    """
    from agent.daemon import run_agent
    from common import gcpolicy
    from common.fdlimit import raise_nofile_limit

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if ca_file:
        try:
            # Checked here: a file that is not a CA bundle is a usage error, not a traceback.
            client_context(ca_file)
        except TLSSetupError as e:
            raise click.BadParameter(str(e), param_hint="--ca-file") from e
    token = join_token_file.read_text().strip()
    if not token:
        raise click.BadParameter("the file is empty", param_hint="--join-token-file")
    urls = [u.strip() for u in schedulers.split(",") if u.strip()]
    if not urls:
        raise click.BadParameter("no URL given", param_hint="--scheduler")
    config = AgentConfig(
        schedulers=urls,
        join_token=token,
        state_dir=state_dir,
        labels=parse_labels(labels),
        max_parallel=max_parallel or default_max_parallel(),
        executor=cast(ExecutorKind, executor),
        gpus=gpus,
        reserve_cpu=reserve_cpu,
        reserve_memory_mb=reserve_memory_mb,
        pull_policy=cast(PullPolicy, pull_policy),
        pull_timeout_s=pull_timeout,
        stop_grace_s=stop_grace,
        ca_file=ca_file,
        allow=allow_list(allow),
        pids_limit=pids_limit,
        max_job_disk_mb=max_job_disk_mb,
        metrics_listen=metrics_listen,
    )
    if name:
        config.name = name
    # Its connections to the scheduler, Docker's socket, log files and blobs in transfer.
    raise_nofile_limit()
    gcpolicy.tune()
    sys.exit(asyncio.run(run_agent(config)))
