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
from scheduler.config import DEFAULT_LISTEN, DEFAULT_STATE_DIR, is_postgres_dsn

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
@click.option(
    "--store",
    envvar="BERTH_STORE",
    show_envvar=True,
    default="",
    help="A postgresql:// DSN to run on instead of SQLite in the state directory.",
)
@click.option(
    "--standbys",
    type=click.IntRange(0, 8),
    default=0,
    show_default=True,
    help="Standby schedulers beside the leader, on the next ports (needs --store "
    "postgresql://...): kill the leader to watch one take over.",
)
@allow_option
@server_tls_options
def dev(
    state_dir: Path,
    listen: str,
    executor: str,
    max_parallel: int | None,
    store: str,
    standbys: int,
    allow: tuple[str, ...],
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """Run a scheduler and one local agent on an embedded SQLite store; Ctrl-C stops both.

    With --tls-cert/--tls-key the scheduler serves HTTPS and the agent trusts that
    certificate itself (as a self-signed one, or the chain the file holds). With
    --store postgresql://... --standbys N, N standby schedulers run beside the first
    on the ports after its own, and the agent knows them all: stop the leader (its
    process id is printed) and another takes over.
    """
    if store and not is_postgres_dsn(store):
        raise click.BadParameter(f"{store!r} is not a postgresql:// DSN", param_hint="--store")
    if standbys and not store:
        raise click.BadParameter(
            "standbys share the leader's database: give --store postgresql://...",
            param_hint="--standbys",
        )
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
    store_args = ["--store", store] if store else []
    scheduler = subprocess.Popen(
        _daemon(
            "scheduler", "--state-dir", str(state_dir), "--listen", listen, *tls_args, *store_args
        ),
        start_new_session=True,
    )
    schedulers = [scheduler]
    urls = [f"{scheme}://{host}:{port}"]
    agent: subprocess.Popen[bytes] | None = None
    try:
        _wait_ready(scheduler, host, port, join_token)
        for n in range(1, standbys + 1):
            # Each its own state directory (its id, its token files) and port.
            standby_listen = f"{host}:{port + n}"
            schedulers.append(
                subprocess.Popen(
                    _daemon(
                        "scheduler",
                        "--state-dir",
                        str(state_dir / f"standby-{n}"),
                        "--listen",
                        standby_listen,
                        *tls_args,
                        *store_args,
                    ),
                    start_new_session=True,
                )
            )
            urls.append(f"{scheme}://{standby_listen}")
        agent_args = [
            "agent",
            "--scheduler",
            ",".join(urls),
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
        lines = [
            "",
            "Berth is running.",
            f"  dashboard and API: {scheme}://{host}:{port}/",
            f"  admin token:       {admin}",
            f"  try:               {try_cmd}",
        ]
        if standbys:
            try_cmd = try_cmd.replace("berth run", f"BERTH_ADDR={','.join(urls)} berth run", 1)
            lines[-1] = f"  try:               {try_cmd}"
            for url, proc in zip(urls, schedulers, strict=True):
                lines.append(f"  scheduler {url} (pid {proc.pid})")
            lines.append(
                "  berth schedulers shows who leads; kill -9 the leader's pid to fail over."
            )
        lines.append("Ctrl-C stops the agent and the schedulers.\n")
        click.echo("\n".join(lines), err=True)
        # With standbys a scheduler may go (that is the point); one must stay.
        while agent.poll() is None and any(p.poll() is None for p in schedulers):
            if not standbys and scheduler.poll() is not None:
                break
            time.sleep(0.5)
        raise click.ClickException("a daemon exited; stopping the others")
    except KeyboardInterrupt:
        click.echo("\nstopping", err=True)
    finally:
        if agent is not None:
            _stop(agent, twice=True)
        for proc in schedulers:
            _stop(proc)
