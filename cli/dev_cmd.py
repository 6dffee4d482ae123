"""`berth dev`: a scheduler and one local agent, for trying Berth on one machine."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click

from cli.allow import allow_list, allow_option
from cli.tls import server_tls_options, tls_pair
from scheduler.config import DEFAULT_LISTEN, DEFAULT_STATE_DIR

#: how long the scheduler may take to start answering
START_TIMEOUT_S = 30.0
#: how long each daemon gets to stop before it is killed
STOP_TIMEOUT_S = 15.0


def _daemon(*args: str) -> list[str]:
    return [sys.executable, "-c", "from cli.main import main; main()", *args]


def _wait_ready(proc: subprocess.Popen[bytes], host: str, port: int, token: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException("the scheduler exited while starting (see above)")
        if token.exists():
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return
            except OSError:
                pass
        time.sleep(0.1)
    raise click.ClickException(f"the scheduler did not answer on {host}:{port}")


def _stop(proc: subprocess.Popen[bytes], *, twice: bool = False) -> None:
    """SIGTERM (twice for the agent: the second cancels its running jobs), then kill."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    if twice:
        time.sleep(0.2)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@click.command()
@click.option(
    "--state-dir",
    envvar="BERTH_STATE_DIR",
    show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Where the database, tokens and the agent's state live.",
)
@click.option(
    "--listen", envvar="BERTH_LISTEN", show_envvar=True, default=DEFAULT_LISTEN, show_default=True
)
@click.option(
    "--executor",
    type=click.Choice(["auto", "docker", "process"]),
    default="auto",
    show_default=True,
    help="auto = docker when dockerd answers, else local processes (not a sandbox).",
)
@click.option("--max-parallel", type=click.IntRange(1, 1024), default=None)
@allow_option
@server_tls_options
def dev(
    state_dir: Path,
    listen: str,
    executor: str,
    max_parallel: int | None,
    allow: tuple[str, ...],
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """Run a scheduler and one local agent on an embedded SQLite store; Ctrl-C stops both.

    With --tls-cert/--tls-key the scheduler serves HTTPS and the agent trusts that
    certificate itself (as a self-signed one, or the chain the file holds).
    """
    tls = tls_pair(tls_cert, tls_key)
    scheme = "https" if tls else "http"
    tls_args = ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])] if tls else []
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    port = int(port_text)
    state_dir.mkdir(parents=True, exist_ok=True)
    join_token = state_dir / "join.token"
    # SIGTERM stops both daemons the same way Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # Own sessions: Ctrl-C reaches this process only, which stops the agent first.
    scheduler = subprocess.Popen(
        _daemon("scheduler", "--state-dir", str(state_dir), "--listen", listen, *tls_args),
        start_new_session=True,
    )
    agent: subprocess.Popen[bytes] | None = None
    try:
        _wait_ready(scheduler, host, port, join_token)
        agent_args = [
            "agent",
            "--scheduler",
            f"{scheme}://{host}:{port}",
            "--join-token-file",
            str(join_token),
            "--state-dir",
            str(state_dir / "agent"),
            "--executor",
            executor,
        ]
        if max_parallel is not None:
            agent_args += ["--max-parallel", str(max_parallel)]
        # The local agent allows nothing beyond the sandbox unless told here.
        for item in allow_list(allow):
            agent_args += ["--allow", item]
        if tls:
            agent_args += ["--ca-file", str(tls[0])]
        agent = subprocess.Popen(_daemon(*agent_args), start_new_session=True)
        admin = (state_dir / "admin.token").resolve()
        try_cmd = "berth run busybox -- echo hello"
        if tls:
            ca = tls[0].resolve()
            try_cmd = f"BERTH_ADDR=https://{host}:{port} BERTH_CA_FILE={ca} {try_cmd}"
        click.echo(
            f"\nBerth is running.\n"
            f"  dashboard and API: {scheme}://{host}:{port}/\n"
            f"  admin token:       {admin}\n"
            f"  try:               {try_cmd}\n"
            f"Ctrl-C stops the agent and the scheduler.\n",
            err=True,
        )
        while scheduler.poll() is None and agent.poll() is None:
            time.sleep(0.5)
        raise click.ClickException("a daemon exited; stopping the other")
    except KeyboardInterrupt:
        click.echo("\nstopping", err=True)
    finally:
        if agent is not None:
            _stop(agent, twice=True)
        _stop(scheduler)
