"""`berth dev`: a scheduler and one local agent, for trying Berth on one machine."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

from cli.allow import allow_list, allow_option
from cli.live_cmd import ADMIN_TOKEN_FILE, DEFAULT_ADDR
from cli.tls import server_tls_options, tls_pair
from scheduler.config import DEFAULT_LISTEN, DEFAULT_STATE_DIR, is_postgres_dsn

#: how long the scheduler may take to start answering
START_TIMEOUT_S = 30.0
#: how long each daemon gets to stop before it is killed
STOP_TIMEOUT_S = 15.0
#: seconds dockerd gets to list its images
DOCKER_TIMEOUT_S = 5
#: images a first job can run `echo` in, best first; matched by the last part of the
#: repository's name, so the test suite's berth-test/busybox counts as busybox
SMALL_IMAGES = ("busybox", "alpine", "debian", "ubuntu")
#: the image named in a first job for the process executor, which ignores it
PROCESS_IMAGE = "busybox"


@dataclass(frozen=True)
class LocalImage:
    tag: str
    size: int


@dataclass(frozen=True)
class FirstJob:
    """What `berth dev` suggests running first, and what to know about it."""

    #: a `berth run` command line, None when nothing would run as things are
    command: str | None
    note: str | None = None


def local_images() -> list[LocalImage] | None:
    """The tagged images dockerd holds locally; None when it does not answer.

    The agent decides between docker and processes the same way (a dockerd that
    answers), so this also tells which executor ``--executor auto`` gets.
    """
    import docker

    try:
        client = docker.from_env(timeout=DOCKER_TIMEOUT_S)
    except docker.errors.DockerException:
        return None
    try:
        client.ping()
        images = client.images.list()
    except Exception:
        return None
    finally:
        client.close()
    return [LocalImage(tag, int(i.attrs.get("Size") or 0)) for i in images for tag in i.tags]


def small_image(images: list[LocalImage]) -> str | None:
    """The best of SMALL_IMAGES present (the smaller of equals), else None."""
    ranked = []
    for image in images:
        repository = image.tag.rpartition(":")[0]
        name = repository.rpartition("/")[2]
        if name in SMALL_IMAGES:
            ranked.append((SMALL_IMAGES.index(name), image.size, image.tag))
    return min(ranked)[2] if ranked else None


def host_command() -> str:
    """A command that prints hello on this host (the process executor runs it here)."""
    echo = shutil.which("echo")
    if echo is not None:
        return "echo hello"
    return f"{shlex.quote(sys.executable)} -c 'print(\"hello\")'"


def first_job(executor: str, images: list[LocalImage] | None) -> FirstJob:
    """A first job that runs offline on this machine with the executor the local agent
    gets: an image dockerd already has (nothing to pull), or, for the process
    executor, a command of the host's."""
    if executor == "process" or (executor == "auto" and images is None):
        return FirstJob(
            f"berth run {PROCESS_IMAGE} -- {host_command()}",
            "jobs run as local processes (not a sandbox); the image is ignored",
        )
    if images is None:
        return FirstJob(
            None, "dockerd does not answer: start it, or run berth dev --executor process"
        )
    image = small_image(images)
    if image is None:
        wanted = ", ".join(SMALL_IMAGES)
        return FirstJob(
            None,
            f"no small image ({wanted}) is in the local Docker: docker pull or docker import "
            "one, or run berth dev --executor process to run jobs as local processes",
        )
    return FirstJob(f"berth run {shlex.quote(image)} -- echo hello")


def client_env(urls: list[str], state_dir: Path, ca_file: Path | None) -> list[str]:
    """``VAR=value`` words a client command in the current shell needs to reach this
    scheduler with its admin token: only those it would not find by itself."""
    words = []
    addr = ",".join(urls)
    if addr != (os.environ.get("BERTH_ADDR") or DEFAULT_ADDR):
        words.append(f"BERTH_ADDR={shlex.quote(addr)}")
    # A client takes $BERTH_TOKEN, else the admin token in $BERTH_STATE_DIR or ./state.
    admin = state_dir.resolve() / ADMIN_TOKEN_FILE
    token = os.environ.get("BERTH_TOKEN")
    if token:
        try:
            ours = admin.read_text().strip()
        except OSError:
            ours = ""
        if token.strip() != ours:
            words.append(f'BERTH_TOKEN="$(cat {shlex.quote(str(admin))})"')
    elif Path(os.environ.get("BERTH_STATE_DIR") or "state").resolve() != admin.parent:
        words.append(f"BERTH_STATE_DIR={shlex.quote(str(admin.parent))}")
    if ca_file is not None:
        words.append(f"BERTH_CA_FILE={shlex.quote(str(ca_file.resolve()))}")
    return words


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
        admin = (state_dir / ADMIN_TOKEN_FILE).resolve()
        lines = [
            "",
            "Berth is running.",
            f"  dashboard and API: {scheme}://{host}:{port}/",
            f"  admin token:       {admin}",
        ]
        first = first_job(executor, local_images())
        if first.command is not None:
            env = client_env(urls, state_dir, tls[0] if tls else None)
            lines.append(f"  try:               {' '.join([*env, first.command])}")
        if first.note is not None:
            lines.append(f"  {first.note}")
        if standbys:
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
