"""The docker executor: every attempt in its own locked-down container.

This is the only module of Berth that talks to Docker. The ``docker`` SDK is
blocking, so every call runs in the executor's own thread pool (never on the event
loop), and log following runs in one thread per container that hands chunks to the
loop through a bounded queue.

A container gets: ``nano_cpus`` from the job's cpu, ``mem_limit`` = ``memswap_limit``
(no swap), a pids limit, ``no-new-privileges``, every capability dropped, network
``none`` unless the job asks for ``bridge``, the job's env and workdir, its workspace
and checkpoint directories bind-mounted at /workspace and /checkpoint (nothing else of
the host, never the docker socket), and the labels ``berth.job``, ``berth.attempt``,
``berth.node`` (plus its timeout, memory limit and checkpoint interval, so a restarted
agent can re-adopt it, and the names of the env variables that hold secrets, so that it
masks their values again). Resource use is sampled with ``docker stats``. A job given
GPUs gets exactly those: a device request for their UUIDs (indices where the agent does
not know them) with the ``gpu`` capability, which the NVIDIA container toolkit turns
into the devices and driver libraries in the container; ``$BERTH_GPUS`` names their
indices on the host.

A job may also ask for its image's ``user``, a ``read_only`` root filesystem (then a
small tmpfs at /tmp stays writable, as do /workspace and /checkpoint), and, on nodes
whose allow-list permits them (checked by :mod:`agent.policy` before this module sees
the job), ``privileged`` mode, the host's network and host ``mounts``. A mount binds
the very file the policy checked, pinned by :mod:`agent.hostmount` (a path swapped for
a link afterwards changes nothing), and the container is removed unless what dockerd
recorded and what the started container shows are that file.

A job's image is pulled as its ``pull_policy`` says (the executor's when it names none):
before every attempt (``always``), only when the node lacks it (``if-not-present``), or
never. A job that names an ``image_pull_secret`` is pulled with the credentials it
holds for the image's registry (:mod:`agent.registryauth`), handed to dockerd with the
request and written nowhere; a registry that refuses them fails the attempt as
``unauthorized``, the job's fault.

Parameters of :class:`DockerExecutor` and their defaults (``agent.config``):

- ``pull_policy``: ``if-not-present`` (default), ``always`` or ``never``; for the jobs
  whose spec names no ``pull_policy``.
- ``pull_timeout_s``: give up pulling after this long (``DEFAULT_PULL_TIMEOUT_S``).
- ``pids_limit``: most processes per container (``DEFAULT_PIDS_LIMIT``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import docker
import docker.errors
import docker.types
from docker.utils import parse_repository_tag

from agent.config import (
    CONTAINER_LOG_MAX_FILES,
    CONTAINER_LOG_MAX_SIZE,
    DEFAULT_MAX_JOB_DISK_MB,
    DEFAULT_PIDS_LIMIT,
    DEFAULT_PULL_POLICY,
    DEFAULT_PULL_TIMEOUT_S,
)
from agent.executors.base import (
    AttemptInfo,
    Execution,
    Executor,
    ExitStatus,
    Mounts,
    StartError,
    UsageSample,
)
from agent.hostmount import MountRefused, PinnedMounts
from agent.policy import NodePolicy
from agent.registryauth import PullSecret, PullSecretError, image_registry
from agent.secretvalues import plain_env
from common.models import JobSpec, PullPolicy

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

LABEL_JOB = "berth.job"
LABEL_ATTEMPT = "berth.attempt"
LABEL_NODE = "berth.node"
LABEL_TIMEOUT = "berth.timeout_s"
LABEL_MEMORY = "berth.memory_mb"
LABEL_CHECKPOINT = "berth.checkpoint_interval_s"
#: the env variables holding secrets' values, comma-separated (their names, never values)
LABEL_SECRET_ENV = "berth.secret_env"
#: where the workspace and checkpoint directories appear in a container
CONTAINER_WORKSPACE = "/workspace"
CONTAINER_CHECKPOINT = "/checkpoint"
#: size of the writable /tmp of a container with a read-only root filesystem
READ_ONLY_TMP = "/tmp"
READ_ONLY_TMP_OPTIONS = "rw,nosuid,nodev,size=64m"
#: seconds for one Docker API call (pulls and waits have their own bounds)
API_TIMEOUT_S = 60.0
#: the API version assumed when dockerd does not answer at start (Docker 20.10+)
FALLBACK_API_VERSION = "1.41"
#: seconds a health check may take before dockerd counts as not answering
PING_TIMEOUT_S = 5.0
#: seconds a log follower waits for the exit to be noticed before asking dockerd
EXIT_NOTICE_S = 2.0
#: bytes of output buffered between a log thread and the event loop
LOG_PIPE_BYTES = 1024 * 1024
#: error texts of a failed start that are the job's fault (bad command or workdir)
_JOB_START_ERRORS = (
    "executable file not found",
    "no such file or directory",
    "permission denied",
    "not a directory",
)
#: the job's ``network`` -> docker's network mode
_NETWORK_MODES = {"none": "none", "bridge": "bridge", "host": "host"}


def container_name(job_id: str, attempt: int) -> str:
    return f"berth-{job_id}-{attempt}"


def container_options(
    info: AttemptInfo,
    spec: JobSpec,
    *,
    pids_limit: int = DEFAULT_PIDS_LIMIT,
    mounts: Mounts | None = None,
    sources: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of the API's ``create_container`` for one attempt (pure);
    ``host_config`` holds those of ``create_host_config``. ``sources`` are the host
    paths of the job's mounts with links resolved (by default as the job wrote them)."""
    command: list[str] | None
    if spec.command is None:
        command = None
    elif isinstance(spec.command, str):
        command = ["sh", "-c", spec.command]
    else:
        command = list(spec.command)
    memory = f"{spec.resources.memory_mb}m"
    env = plain_env(spec)
    env.setdefault("BERTH_JOB_ID", info.job_id)
    env.setdefault("BERTH_ATTEMPT", str(info.attempt))
    if mounts is not None:
        env.setdefault("BERTH_WORKSPACE", CONTAINER_WORKSPACE)
        env.setdefault("BERTH_CHECKPOINT", CONTAINER_CHECKPOINT)
    grant = info.gpus
    env["BERTH_GPUS"] = ",".join(str(i) for i in grant.indices) if grant is not None else ""
    opts: dict[str, Any] = {
        "image": spec.image,
        "command": command,
        "name": container_name(info.job_id, info.attempt),
        "detach": True,
        "stdin_open": False,
        "tty": False,
        "environment": env,
        "labels": {
            LABEL_JOB: info.job_id,
            LABEL_ATTEMPT: str(info.attempt),
            LABEL_NODE: info.node_id,
            LABEL_TIMEOUT: repr(float(spec.timeout_s)),
            LABEL_MEMORY: str(spec.resources.memory_mb),
        },
        "use_config_proxy": False,
        "host_config": {
            "nano_cpus": max(1, int(spec.resources.cpu * 1e9)),
            "mem_limit": memory,
            "memswap_limit": memory,
            "pids_limit": pids_limit,
            "security_opt": ["no-new-privileges"],
            "network_mode": _NETWORK_MODES[spec.network],
            # Rotated and bounded: a flood of output cannot fill the agent's disk.
            "log_config": {
                "type": "json-file",
                "config": {
                    "max-size": CONTAINER_LOG_MAX_SIZE,
                    "max-file": str(CONTAINER_LOG_MAX_FILES),
                },
            },
        },
    }
    host = opts["host_config"]
    if spec.privileged:
        # Every capability and the host's devices: what the node's policy allowed.
        host["privileged"] = True
    else:
        host["cap_drop"] = ["ALL"]
    if grant is not None and grant.ids:
        host["device_requests"] = [
            docker.types.DeviceRequest(device_ids=list(grant.ids), capabilities=[["gpu"]])
        ]
    if spec.user is not None:
        opts["user"] = spec.user
    if spec.read_only:
        host["read_only"] = True
        if not any(m.target.rstrip("/") == READ_ONLY_TMP for m in spec.mounts):
            host["tmpfs"] = {READ_ONLY_TMP: READ_ONLY_TMP_OPTIONS}
    if spec.mounts:
        paths = [m.source for m in spec.mounts] if sources is None else sources
        host["mounts"] = [
            docker.types.Mount(target=m.target, source=src, type="bind", read_only=m.read_only)
            for m, src in zip(spec.mounts, paths, strict=True)
        ]
    if spec.checkpoint_interval_s is not None:
        opts["labels"][LABEL_CHECKPOINT] = repr(float(spec.checkpoint_interval_s))
    if info.secret_env:
        opts["labels"][LABEL_SECRET_ENV] = ",".join(info.secret_env)
    if mounts is not None:
        host["binds"] = {
            str(mounts.workspace.absolute()): {"bind": CONTAINER_WORKSPACE, "mode": "rw"},
            str(mounts.checkpoint.absolute()): {"bind": CONTAINER_CHECKPOINT, "mode": "rw"},
        }
    if spec.workdir:
        opts["working_dir"] = spec.workdir
    return opts


def secret_values(attrs: dict[str, Any], names: str) -> tuple[str, ...]:
    """The values a container's environment holds for the variables ``names`` lists
    (its LABEL_SECRET_ENV): a re-adopted attempt's output is masked with them."""
    wanted = {n for n in names.split(",") if n}
    if not wanted:
        return ()
    env = (attrs.get("Config") or {}).get("Env") or []
    pairs = (str(item).partition("=") for item in env)
    return tuple(value for key, _, value in pairs if key in wanted and value)


def usage_from_stats(stats: dict[str, Any]) -> UsageSample | None:
    """CPU % and memory from one ``docker stats`` reply, computed as the docker CLI does
    (memory without the inactive page cache). None when the container is not running."""
    cpu = stats.get("cpu_stats") or {}
    pre = stats.get("precpu_stats") or {}
    mem = stats.get("memory_stats") or {}
    if not mem.get("usage"):
        return None  # not running: dockerd reports nothing
    total = (cpu.get("cpu_usage") or {}).get("total_usage", 0)
    pre_total = (pre.get("cpu_usage") or {}).get("total_usage", 0)
    system = cpu.get("system_cpu_usage", 0) or 0
    pre_system = pre.get("system_cpu_usage", 0) or 0
    cpus = (
        cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or []) or 1
    )
    cpu_delta, system_delta = total - pre_total, system - pre_system
    percent = 0.0
    if cpu_delta > 0 and system_delta > 0 and pre_total:
        percent = cpu_delta / system_delta * cpus * 100.0
    details = mem.get("stats") or {}
    if "inactive_file" in details:  # cgroup v2
        cache = details["inactive_file"]
    else:  # cgroup v1
        cache = details.get("total_inactive_file", details.get("cache", 0))
    used = max(0, int(mem.get("usage", 0)) - int(cache or 0))
    return UsageSample(cpu_percent=max(0.0, percent), memory_mb=used / (1024 * 1024))


def connect(timeout: float = API_TIMEOUT_S, pool_size: int = 32) -> Any:
    """A Docker client from the environment (DOCKER_HOST or the local socket).

    Blocking: it asks dockerd for its API version. When dockerd does not answer, the
    client is made for ``FALLBACK_API_VERSION`` so that the agent still starts, reports
    its executor broken, and works again once dockerd is back.
    """
    try:
        return docker.from_env(timeout=int(timeout), max_pool_size=pool_size)
    except docker.errors.DockerException as e:
        log.warning("dockerd does not answer (%s); assuming API %s", e, FALLBACK_API_VERSION)
        return docker.from_env(
            version=FALLBACK_API_VERSION, timeout=int(timeout), max_pool_size=pool_size
        )


def docker_answers(timeout: float = PING_TIMEOUT_S) -> bool:
    """True when a dockerd answers a ping (blocking; call it off the event loop)."""
    try:
        client = connect(timeout=timeout, pool_size=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


class DockerExecutor(Executor):
    kind = "docker"

    def __init__(
        self,
        *,
        pull_policy: PullPolicy = DEFAULT_PULL_POLICY,
        pull_timeout_s: float = DEFAULT_PULL_TIMEOUT_S,
        pids_limit: int = DEFAULT_PIDS_LIMIT,
        max_parallel: int = 4,
        allow: Sequence[str] = (),
        max_job_disk_mb: int = DEFAULT_MAX_JOB_DISK_MB,
    ) -> None:
        self.pull_policy = pull_policy
        self.max_job_disk_mb = max_job_disk_mb
        #: whether dockerd bounds a writable layer (``storage_opt``); None: not asked yet
        self._sized_layers: bool | None = None
        #: the node's allow-list, to pin what a host mount binds (agent.hostmount)
        self._policy = NodePolicy(allow)
        self.pull_timeout_s = pull_timeout_s
        self.pids_limit = pids_limit
        workers = 4 * max_parallel + 8
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="docker")
        self._client: Any = connect(pool_size=workers)
        self._api: Any = self._client.api

    async def call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a blocking Docker call in the executor's thread pool.

        A dockerd that is down or restarting surfaces from the SDK as the transport's
        error (requests' ConnectionError, an OSError), not as a DockerException: it
        is raised as one, so that every caller's handling of Docker failures (wait
        again, report an infrastructure failure) applies to it too.
        """
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
        except docker.errors.DockerException:
            raise  # dockerd answered (an APIError is an OSError too, through requests)
        except OSError as e:
            raise docker.errors.DockerException(f"dockerd cannot be reached: {e}") from e

    async def check(self) -> str | None:
        try:
            await asyncio.wait_for(self.call(self._client.ping), PING_TIMEOUT_S)
            return None
        except TimeoutError:
            return f"dockerd did not answer a ping within {PING_TIMEOUT_S:g} s"
        except Exception as e:
            return f"dockerd does not answer: {e}"

    async def close(self) -> None:
        await self.call(self._client.close)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- start -------------------------------------------------------------------------

    async def start(
        self,
        info: AttemptInfo,
        spec: JobSpec,
        mounts: Mounts | None = None,
        *,
        pull_secret: PullSecret | None = None,
    ) -> DockerExecution:
        pinned = await asyncio.to_thread(_pin_mounts, spec, self._policy)
        try:
            opts = container_options(
                info, spec, pids_limit=self.pids_limit, mounts=mounts, sources=pinned.paths
            )
            pull = _Pull(spec.image, spec.pull_policy or self.pull_policy, pull_secret)
            if pull.policy == "always":
                await self._pull(pull)
            container_id = await self._create(opts, pull)
            await self._verify_mounts(container_id, spec, pinned, started=False)
            try:
                await self.call(self._api.start, container_id)
            except docker.errors.APIError as e:
                await self.remove_container(container_id)
                text = _explain(e)
                job_fault = any(s in text.lower() for s in _JOB_START_ERRORS)
                raise StartError(f"container could not start: {text}", infra=not job_fault) from e
            except docker.errors.DockerException as e:
                await self.remove_container(container_id)
                raise StartError(f"container could not start: {e}", infra=True) from e
            await self._verify_mounts(container_id, spec, pinned, started=True)
        finally:
            # The started container keeps its copies of the mounts.
            await asyncio.to_thread(pinned.release)
        return DockerExecution(self, container_id, info, started_at=time.time())

    async def _verify_mounts(
        self, container_id: str, spec: JobSpec, pinned: PinnedMounts, *, started: bool
    ) -> None:
        """Compare the container's host mounts with the pinned sources: what dockerd
        recorded (after create) and what the container shows (after start, while it
        runs). On a mismatch the container is removed and the job fails."""
        if not spec.mounts:
            return
        try:
            attrs = await self.call(self._api.inspect_container, container_id)
        except docker.errors.DockerException as e:
            await self.remove_container(container_id)
            raise StartError(f"container could not be inspected: {e}", infra=True) from e
        targets = [m.target.rstrip("/") or "/" for m in spec.mounts]
        if started:
            pid = int((attrs.get("State") or {}).get("Pid") or 0)
            if not pid:
                return  # it has already exited: nothing is shown any more
            wrong = await asyncio.to_thread(_shown_mismatch, pid, targets, pinned)
        else:
            by_target = {
                (m.get("Destination") or "").rstrip("/") or "/": str(m.get("Source") or "")
                for m in attrs.get("Mounts") or []
            }
            seen = [by_target.get(t, "") for t in targets]
            wrong = await asyncio.to_thread(pinned.mismatch, seen)
        if wrong is not None:
            await self.remove_container(container_id)
            where = "the started container shows" if started else "dockerd would mount"
            raise StartError(f"refused: {where} {wrong}; the container was removed", infra=False)

    async def _create(self, opts: dict[str, Any], pull: _Pull) -> str:
        """Create the container; pull a missing image first unless the policy forbids."""
        pulled = pull.policy == "always"
        removed_leftover = False
        if self._sized_layers is None:
            self._sized_layers = await self.call(self._layers_can_be_sized)
        while True:
            kwargs = dict(opts)
            host = dict(opts["host_config"])
            if self._sized_layers:
                host["storage_opt"] = {"size": f"{self.max_job_disk_mb}M"}
            kwargs["host_config"] = self._api.create_host_config(**host)
            try:
                created = await self.call(self._api.create_container, **kwargs)
                return str(created["Id"])
            except docker.errors.ImageNotFound as e:
                image = opts["image"]
                if pulled or pull.policy == "never":
                    why = "the pull policy is never" if not pulled else _explain(e)
                    raise StartError(
                        f"image {image} is not present on this node ({why})", infra=False
                    ) from e
                await self._pull(pull)
                pulled = True
            except docker.errors.APIError as e:
                if self._sized_layers and "storage" in _explain(e).lower():
                    # dockerd would not size it after all: the runner's watch remains.
                    log.warning("dockerd cannot bound writable layers: %s", _explain(e))
                    self._sized_layers = False
                    continue
                if e.status_code == 409 and not removed_leftover:
                    # A leftover of this very attempt (the agent died before starting it).
                    await self.remove_container(opts["name"])
                    removed_leftover = True
                    continue
                raise StartError(
                    f"container could not be created: {_explain(e)}", infra=True
                ) from e
            except docker.errors.DockerException as e:
                raise StartError(f"container could not be created: {e}", infra=True) from e

    def _layers_can_be_sized(self) -> bool | None:
        """Whether dockerd's storage driver takes ``storage_opt size`` (overlay2 on xfs,
        which must be mounted with pquota; blocking). Where it does not, the runner's
        watch bounds the writable layer."""
        try:
            info = self._client.info()
        except Exception:
            return None  # asked again at the next creation
        status = {str(p[0]): str(p[1]) for p in info.get("DriverStatus") or [] if len(p) == 2}
        return bool(info.get("Driver") == "overlay2" and status.get("Backing Filesystem") == "xfs")

    async def _pull(self, pull: _Pull) -> None:
        """Pull an image within the pull timeout, with the job's credentials when it
        names a pull secret (else those of the agent's user's Docker config, as the
        Docker SDK finds them); failing to is the job's fault.

        The credentials go to dockerd with the request and nowhere else; an error's
        text is masked with them before it is raised (it is logged and reported)."""
        image = pull.image
        repo, tag = parse_repository_tag(image)
        auth: dict[str, str] | None = None
        if pull.secret is not None:
            try:
                auth = pull.secret.auth_for(image).auth_config()
            except PullSecretError as e:
                raise StartError(f"image {image} cannot be pulled: {e.message}", infra=False) from e
        try:
            await asyncio.wait_for(
                self.call(self._pull_image, repo, tag or "latest", auth), self.pull_timeout_s
            )
        except TimeoutError as e:
            raise StartError(
                f"image {image} could not be pulled within {self.pull_timeout_s:g} s", infra=False
            ) from e
        except docker.errors.DockerException as e:
            text = _explain(e)
            if pull.secret is not None:
                text = pull.secret.redact(text)
            if _unauthorized(e, text):
                # A registry that refuses the credentials, or asks for some, refuses
                # every node alike: the job (its owner's secret) is at fault, not this
                # node, which must not go into cooldown for it.
                with_what = (
                    f"with the credentials of image_pull_secret {pull.secret.name!r}"
                    if pull.secret is not None
                    else "without credentials (the job names no image_pull_secret)"
                )
                raise StartError(
                    f"unauthorized: registry {image_registry(image)} refused to let image "
                    f"{image} be pulled {with_what}: {text}",
                    infra=False,
                ) from e
            raise StartError(f"image {image} could not be pulled: {text}", infra=False) from e

    def _pull_image(self, repo: str, tag: str, auth: dict[str, str] | None) -> None:
        """Pull, reading the progress to its end (blocking): dockerd reports an error
        that comes after the pull began in the stream, not as the reply's status."""
        for line in self._api.pull(repo, tag=tag, stream=True, decode=True, auth_config=auth):
            error = line.get("error") if isinstance(line, dict) else None
            if error:
                raise docker.errors.APIError(str(error), explanation=str(error))

    async def remove_container(self, container: str) -> None:
        """Remove a container by id or name, running or not; never raises."""
        try:
            await self.call(self._api.remove_container, container, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.DockerException as e:
            log.warning("could not remove container %s: %s", container, e)

    # --- re-adoption -------------------------------------------------------------------

    async def adopt(self, node_ids: set[str]) -> list[Execution]:
        found: list[Execution] = []
        for node_id in sorted(node_ids):
            listed = await self.call(
                self._api.containers, all=True, filters={"label": f"{LABEL_NODE}={node_id}"}
            )
            for row in listed:
                container_id = str(row["Id"])
                labels = row.get("Labels") or {}
                try:
                    info = AttemptInfo(
                        job_id=labels[LABEL_JOB],
                        attempt=int(labels[LABEL_ATTEMPT]),
                        node_id=labels[LABEL_NODE],
                        timeout_s=float(labels.get(LABEL_TIMEOUT, "0") or 0),
                        memory_mb=int(labels.get(LABEL_MEMORY, "0") or 0),
                        checkpoint_interval_s=float(labels[LABEL_CHECKPOINT])
                        if labels.get(LABEL_CHECKPOINT)
                        else None,
                    )
                except (KeyError, ValueError):
                    log.warning("removing container %s with unreadable berth labels", container_id)
                    await self.remove_container(container_id)
                    continue
                if row.get("State") == "created":
                    # Created but never started: the assignment will be started afresh.
                    await self.remove_container(container_id)
                    continue
                try:
                    attrs = await self.call(self._api.inspect_container, container_id)
                except docker.errors.NotFound:
                    continue
                state = attrs["State"]
                execution = DockerExecution(
                    self, container_id, info, started_at=_parse_time(state.get("StartedAt"))
                )
                execution.paused = bool(state.get("Paused"))
                execution.masked = secret_values(attrs, labels.get(LABEL_SECRET_ENV, ""))
                found.append(execution)
        return found

    def log_stream(self, container_id: str, *, follow: bool, tail: str = "all") -> Iterator[bytes]:
        """A container's output (stdout and stderr, not a tty) as a blocking iterator;
        ``tail``: only its last so many lines."""
        api = self._api
        params = {"stdout": 1, "stderr": 1, "timestamps": 0, "follow": int(follow), "tail": tail}
        # Berth's containers never have a tty: skip the inspect that the public
        # ``api.logs`` makes on every call to find that out.
        res = api._get(api._url("/containers/{0}/logs", container_id), params=params, stream=True)
        stream: Iterator[bytes] = api._get_result_tty(True, res, False)
        return stream


class DockerExecution(Execution):
    keeps_output = True

    def __init__(
        self,
        executor: DockerExecutor,
        container_id: str,
        info: AttemptInfo,
        started_at: float | None,
    ) -> None:
        self._ex = executor
        self.container_id = container_id
        self.info = info
        self.started_at = started_at
        self._exited = threading.Event()
        self._removed = False

    def _status(self) -> str:
        state = self._ex._api.inspect_container(self.container_id)["State"]
        return str(state.get("Status", ""))

    async def logs(self, skip: int = 0) -> AsyncIterator[bytes]:
        pipe = _Pipe(asyncio.get_running_loop(), LOG_PIPE_BYTES)
        stream_of = self._ex.log_stream
        cid = self.container_id

        def follow() -> None:
            emitted = skip  # stream position up to which output has been handed over

            def hand_over(chunks: Iterator[bytes]) -> bool:
                nonlocal emitted
                pos = 0
                for chunk in chunks:
                    start, pos = pos, pos + len(chunk)
                    if pos <= emitted:
                        continue
                    piece = chunk[max(0, emitted - start) :]
                    emitted = pos
                    if not pipe.put(piece):
                        return False
                return True

            try:
                while True:
                    if not hand_over(stream_of(cid, follow=True)):
                        return
                    # The stream ends when the container exits, or when the connection
                    # to dockerd broke (then it is followed again).
                    running = not self._exited.wait(EXIT_NOTICE_S) and self._status() in (
                        "running",
                        "paused",
                        "restarting",
                    )
                    if not running:
                        # A follower that lags behind may be cut off at the exit: read
                        # what is stored past what was handed over.
                        hand_over(stream_of(cid, follow=False))
                        return
            except Exception as e:
                pipe.close(e)
            finally:
                pipe.close()

        thread = threading.Thread(target=follow, name=f"logs-{self.info.job_id}", daemon=True)
        thread.start()
        try:
            while True:
                data = await pipe.get()
                if data is None:
                    if pipe.error is not None:
                        log.warning("log stream of %s broke: %s", self.info.job_id, pipe.error)
                    return
                yield data
        finally:
            pipe.stop()

    async def tail(self, max_bytes: int) -> bytes | None:
        """The end of the output from dockerd's log files (bounded by their rotation)."""
        stream_of = self._ex.log_stream
        # A json-file entry holds at most 16 KiB: enough lines for max_bytes of full
        # ones, and of short ones as many as a 64-byte line each makes.
        lines = str(max(64, max_bytes // 64))

        def read() -> bytes:
            kept = bytearray()
            for chunk in stream_of(self.container_id, follow=False, tail=lines):
                kept += chunk
                if len(kept) > 2 * max_bytes:
                    del kept[:-max_bytes]
            return bytes(kept[-max_bytes:])

        try:
            return await self._ex.call(read)
        except docker.errors.DockerException as e:
            log.warning("could not read the end of the output of %s: %s", self.info.job_id, e)
            return b""

    async def disk_paths(self) -> list[str]:
        """The container's writable layer on the host (overlay2's upper directory)."""
        try:
            attrs = await self._ex.call(self._ex._api.inspect_container, self.container_id)
        except docker.errors.DockerException:
            return []
        upper = ((attrs.get("GraphDriver") or {}).get("Data") or {}).get("UpperDir")
        return [str(upper)] if upper else []

    async def wait(self) -> ExitStatus:
        api = self._ex._api
        while True:
            try:
                result = await self._ex.call(api.wait, self.container_id)
                break
            except docker.errors.NotFound:
                self._exited.set()
                return ExitStatus(None, infra_error="the container disappeared")
            except docker.errors.DockerException as e:
                # dockerd restarted or the connection broke: the container may still run.
                log.warning("waiting for %s failed (%s); retrying", self.info.job_id, e)
                await asyncio.sleep(1.0)
        self._exited.set()
        code = int(result.get("StatusCode", -1))
        oom = False
        try:
            state = (await self._ex.call(api.inspect_container, self.container_id))["State"]
            oom = bool(state.get("OOMKilled"))
        except docker.errors.DockerException as e:
            log.warning("could not inspect %s after exit: %s", self.info.job_id, e)
        return ExitStatus(exit_code=_clamp(code), oom_killed=oom)

    async def stop(self, grace_s: float) -> None:
        api = self._ex._api
        try:
            await self._ex.call(api.stop, self.container_id, timeout=max(0, round(grace_s)))
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if "is paused" in _explain(e).lower():
                await self._ex.call(api.kill, self.container_id)
            else:
                raise

    async def pause(self) -> None:
        await self._ex.call(self._ex._api.pause, self.container_id)

    async def usage(self) -> UsageSample | None:
        """One ``docker stats`` sample (it takes about a second: dockerd measures the
        CPU over an interval), in the executor's threads."""
        try:
            stats = await self._ex.call(self._ex._api.stats, self.container_id, stream=False)
        except docker.errors.DockerException:
            return None
        return usage_from_stats(stats) if isinstance(stats, dict) else None

    async def resume(self) -> None:
        await self._ex.call(self._ex._api.unpause, self.container_id)

    async def remove(self) -> None:
        if not self._removed:
            await self._ex.remove_container(self.container_id)
            self._removed = True


class _Pipe:
    """Bytes from a thread to the event loop, joined up, with a bound on what waits.

    The thread side blocks while ``limit`` bytes wait; the loop side gets everything
    waiting in one piece, and None once the thread closed the pipe.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self._loop = loop
        self._limit = limit
        self._cond = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._closed = False
        self._stopped = False
        self._ready = asyncio.Event()
        self.error: BaseException | None = None

    # --- thread side ---

    def put(self, data: bytes) -> bool:
        """Hand bytes over; False when the reader went away."""
        with self._cond:
            while self._size >= self._limit and not self._stopped:
                self._cond.wait(0.5)
            if self._stopped:
                return False
            wake = not self._chunks
            self._chunks.append(data)
            self._size += len(data)
        if wake:
            self._wake()
        return True

    def close(self, error: BaseException | None = None) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self.error = error
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed
            self._loop.call_soon_threadsafe(self._ready.set)

    # --- loop side ---

    async def get(self) -> bytes | None:
        while True:
            with self._cond:
                if self._chunks:
                    data = b"".join(self._chunks)
                    self._chunks.clear()
                    self._size = 0
                    self._cond.notify_all()
                    return data
                if self._closed:
                    return None
                self._ready.clear()
            await self._ready.wait()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()


def _pin_mounts(spec: JobSpec, node_policy: NodePolicy) -> PinnedMounts:
    """The job's mount sources pinned (blocking, see :mod:`agent.hostmount`); a missing
    or swapped one is the job's fault (dockerd would create a missing one)."""
    try:
        return PinnedMounts([m.source for m in spec.mounts], node_policy)
    except MountRefused as e:
        raise StartError(e.message, infra=e.infra) from e


def _shown_mismatch(pid: int, targets: Sequence[str], pinned: PinnedMounts) -> str | None:
    """What a running container shows at its mount targets, compared with the pinned
    sources (blocking); None when all match or the container is already gone."""
    wrong = pinned.mismatch([f"/proc/{pid}/root{t}" for t in targets])
    if wrong is not None and not os.path.exists(f"/proc/{pid}/root/"):
        return None  # it exited meanwhile: nothing was compared
    return wrong


#: error texts of a pull that mean the registry wants credentials or refused them
_UNAUTHORIZED_PULL = (
    "unauthorized",
    "no basic auth credentials",
    "authentication required",
    "access denied",
    "denied:",
)


def _unauthorized(e: docker.errors.DockerException, text: str) -> bool:
    """Whether a failed pull was refused for its credentials (or their absence)."""
    status = getattr(e, "status_code", None)
    return status in (401, 403) or any(s in text.lower() for s in _UNAUTHORIZED_PULL)


@dataclass(frozen=True)
class _Pull:
    """How one attempt's image is pulled: its policy and the job's pull secret."""

    image: str
    policy: PullPolicy
    secret: PullSecret | None


def _explain(e: Exception) -> str:
    explanation = getattr(e, "explanation", None)
    if explanation:
        return str(explanation.decode() if isinstance(explanation, bytes) else explanation)
    return str(e)


def _clamp(code: int) -> int:
    return max(-255, min(255, code))


def _parse_time(text: str | None) -> float | None:
    """Docker's RFC 3339 time with nanoseconds, as epoch seconds."""
    if not text or text.startswith("0001-"):
        return None
    head, _, frac = text.rstrip("Z").partition(".")
    try:
        base = datetime.fromisoformat(head + "+00:00").timestamp()
    except ValueError:
        return None
    digits = "".join(ch for ch in frac if ch.isdigit())[:6]
    return base + (int(digits) / 10 ** len(digits) if digits else 0.0)
