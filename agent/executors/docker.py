"""The docker executor: every attempt in its own locked-down container.

This is the only module of Berth that talks to Docker. The ``docker`` SDK is
blocking, so every call runs in the executor's own thread pool (never on the event
loop), and log following runs in one thread per container that hands chunks to the
loop through a bounded queue.

A container gets: ``nano_cpus`` from the job's cpu, ``mem_limit`` = ``memswap_limit``
(no swap), a pids limit, ``no-new-privileges``, every capability dropped, network
``none`` unless the job asks for ``bridge``, the job's env and workdir, and the labels
``berth.job``, ``berth.attempt``, ``berth.node`` (plus its timeout and memory limit,
so a restarted agent can re-adopt it).

Parameters of :class:`DockerExecutor` and their defaults (``agent.config``):

- ``pull_policy``: ``if-not-present`` (default), ``always`` or ``never``.
- ``pull_timeout_s``: give up pulling after this long (``DEFAULT_PULL_TIMEOUT_S``).
- ``pids_limit``: most processes per container (``DEFAULT_PIDS_LIMIT``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import docker
import docker.errors
from docker.utils import parse_repository_tag

from agent.config import DEFAULT_PIDS_LIMIT, DEFAULT_PULL_TIMEOUT_S, PullPolicy
from agent.executors.base import AttemptInfo, Execution, Executor, ExitStatus, StartError
from common.models import JobSpec

log = logging.getLogger("berth.agent.docker")

P = ParamSpec("P")
R = TypeVar("R")

LABEL_JOB = "berth.job"
LABEL_ATTEMPT = "berth.attempt"
LABEL_NODE = "berth.node"
LABEL_TIMEOUT = "berth.timeout_s"
LABEL_MEMORY = "berth.memory_mb"
#: seconds for one Docker API call (pulls and waits have their own bounds)
API_TIMEOUT_S = 60.0
#: seconds a health check may take before dockerd counts as not answering
PING_TIMEOUT_S = 5.0
#: bytes of output buffered between a log thread and the event loop
LOG_PIPE_BYTES = 1024 * 1024
#: error texts of a failed start that are the job's fault (bad command or workdir)
_JOB_START_ERRORS = (
    "executable file not found",
    "no such file or directory",
    "permission denied",
    "not a directory",
)


def container_name(job_id: str, attempt: int) -> str:
    return f"berth-{job_id}-{attempt}"


def container_options(
    info: AttemptInfo, spec: JobSpec, *, pids_limit: int = DEFAULT_PIDS_LIMIT
) -> dict[str, Any]:
    """The keyword arguments of ``containers.create`` for one attempt (pure)."""
    command: list[str] | None
    if spec.command is None:
        command = None
    elif isinstance(spec.command, str):
        command = ["sh", "-c", spec.command]
    else:
        command = list(spec.command)
    memory = f"{spec.resources.memory_mb}m"
    env = dict(spec.env)
    env.setdefault("BERTH_JOB_ID", info.job_id)
    env.setdefault("BERTH_ATTEMPT", str(info.attempt))
    opts: dict[str, Any] = {
        "image": spec.image,
        "command": command,
        "name": container_name(info.job_id, info.attempt),
        "detach": True,
        "environment": env,
        "labels": {
            LABEL_JOB: info.job_id,
            LABEL_ATTEMPT: str(info.attempt),
            LABEL_NODE: info.node_id,
            LABEL_TIMEOUT: repr(float(spec.timeout_s)),
            LABEL_MEMORY: str(spec.resources.memory_mb),
        },
        "nano_cpus": max(1, int(spec.resources.cpu * 1e9)),
        "mem_limit": memory,
        "memswap_limit": memory,
        "pids_limit": pids_limit,
        "security_opt": ["no-new-privileges"],
        "cap_drop": ["ALL"],
        "network_mode": "bridge" if spec.network == "bridge" else "none",
        "stdin_open": False,
        "tty": False,
    }
    if spec.workdir:
        opts["working_dir"] = spec.workdir
    return opts


def connect(timeout: float = API_TIMEOUT_S, pool_size: int = 32) -> Any:
    """A Docker client from the environment (DOCKER_HOST or the local socket)."""
    return docker.from_env(timeout=int(timeout), max_pool_size=pool_size)


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
        pull_policy: PullPolicy = "if-not-present",
        pull_timeout_s: float = DEFAULT_PULL_TIMEOUT_S,
        pids_limit: int = DEFAULT_PIDS_LIMIT,
        max_parallel: int = 4,
    ) -> None:
        self.pull_policy = pull_policy
        self.pull_timeout_s = pull_timeout_s
        self.pids_limit = pids_limit
        workers = 4 * max_parallel + 8
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="docker")
        self._client: Any = connect(pool_size=workers)

    async def call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a blocking Docker call in the executor's thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

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

    async def start(self, info: AttemptInfo, spec: JobSpec) -> DockerExecution:
        await self._ensure_image(spec.image)
        opts = container_options(info, spec, pids_limit=self.pids_limit)
        container = await self._create(opts)
        try:
            await self.call(container.start)
        except docker.errors.APIError as e:
            await self._remove_quietly(container)
            text = _explain(e)
            job_fault = any(s in text.lower() for s in _JOB_START_ERRORS)
            raise StartError(f"container could not start: {text}", infra=not job_fault) from e
        except docker.errors.DockerException as e:
            await self._remove_quietly(container)
            raise StartError(f"container could not start: {e}", infra=True) from e
        return DockerExecution(self, container, info, started_at=time.time())

    async def _create(self, opts: dict[str, Any]) -> Any:
        for tries in range(2):
            try:
                return await self.call(self._client.containers.create, **opts)
            except docker.errors.ImageNotFound as e:
                raise StartError(
                    f"image {opts['image']} not found: {_explain(e)}", infra=False
                ) from e
            except docker.errors.APIError as e:
                if e.status_code == 409 and tries == 0:
                    # A leftover of this very attempt (the agent died before starting it).
                    await self._remove_by_name(opts["name"])
                    continue
                raise StartError(
                    f"container could not be created: {_explain(e)}", infra=True
                ) from e
            except docker.errors.DockerException as e:
                raise StartError(f"container could not be created: {e}", infra=True) from e
        raise AssertionError("unreachable")

    async def _ensure_image(self, image: str) -> None:
        """Apply the pull policy; a missing image is the job's fault."""
        present = await self._image_present(image)
        if self.pull_policy == "never":
            if not present:
                raise StartError(
                    f"image {image} is not present on this node and the pull policy is never",
                    infra=False,
                )
            return
        if present and self.pull_policy == "if-not-present":
            return
        repo, tag = parse_repository_tag(image)
        try:
            await asyncio.wait_for(
                self.call(self._client.images.pull, repo, tag=tag or "latest"),
                self.pull_timeout_s,
            )
        except TimeoutError as e:
            raise StartError(
                f"image {image} could not be pulled within {self.pull_timeout_s:g} s", infra=False
            ) from e
        except docker.errors.DockerException as e:
            raise StartError(
                f"image {image} could not be pulled: {_explain(e)}", infra=False
            ) from e

    async def _image_present(self, image: str) -> bool:
        try:
            await self.call(self._client.images.get, image)
            return True
        except docker.errors.ImageNotFound:
            return False
        except docker.errors.DockerException as e:
            raise StartError(f"could not inspect image {image}: {e}", infra=True) from e

    async def _remove_by_name(self, name: str) -> None:
        try:
            old = await self.call(self._client.containers.get, name)
        except docker.errors.NotFound:
            return
        await self._remove_quietly(old)

    async def _remove_quietly(self, container: Any) -> None:
        try:
            await self.call(container.remove, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.DockerException as e:
            log.warning("could not remove container %s: %s", container.name, e)

    # --- re-adoption -------------------------------------------------------------------

    async def adopt(self, node_ids: set[str]) -> list[Execution]:
        found: list[Execution] = []
        for node_id in sorted(node_ids):
            containers = await self.call(
                self._client.containers.list, all=True, filters={"label": f"{LABEL_NODE}={node_id}"}
            )
            for c in containers:
                labels = c.labels or {}
                try:
                    info = AttemptInfo(
                        job_id=labels[LABEL_JOB],
                        attempt=int(labels[LABEL_ATTEMPT]),
                        node_id=labels[LABEL_NODE],
                        timeout_s=float(labels.get(LABEL_TIMEOUT, "0") or 0),
                        memory_mb=int(labels.get(LABEL_MEMORY, "0") or 0),
                    )
                except (KeyError, ValueError):
                    log.warning("removing container %s with unreadable berth labels", c.name)
                    await self._remove_quietly(c)
                    continue
                state = c.attrs.get("State", {})
                if state.get("Status") == "created":
                    # Created but never started: the assignment will be started afresh.
                    await self._remove_quietly(c)
                    continue
                found.append(
                    DockerExecution(self, c, info, started_at=_parse_time(state.get("StartedAt")))
                )
        return found


class DockerExecution(Execution):
    def __init__(
        self, executor: DockerExecutor, container: Any, info: AttemptInfo, started_at: float | None
    ) -> None:
        self._ex = executor
        self._container = container
        self.info = info
        self.started_at = started_at
        self._removed = False

    @property
    def container_id(self) -> str:
        return str(self._container.id)

    async def logs(self, skip: int = 0) -> AsyncIterator[bytes]:
        pipe = _Pipe(asyncio.get_running_loop(), LOG_PIPE_BYTES)
        container = self._container

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
                    if not hand_over(
                        container.logs(stream=True, follow=True, stdout=True, stderr=True)
                    ):
                        return
                    # A follower that lags behind may be cut off when the container
                    # exits, and the stream also ends when the connection to dockerd
                    # breaks: read what is stored, and follow again while it runs.
                    if not hand_over(
                        container.logs(stream=True, follow=False, stdout=True, stderr=True)
                    ):
                        return
                    container.reload()
                    if container.status not in ("running", "paused", "restarting"):
                        break
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

    async def wait(self) -> ExitStatus:
        while True:
            try:
                result = await self._ex.call(self._container.wait)
                break
            except docker.errors.NotFound:
                return ExitStatus(None, infra_error="the container disappeared")
            except docker.errors.DockerException as e:
                # dockerd restarted or the connection broke: the container may still run.
                log.warning("waiting for %s failed (%s); retrying", self._container.name, e)
                await asyncio.sleep(1.0)
        code = int(result.get("StatusCode", -1))
        oom = False
        try:
            await self._ex.call(self._container.reload)
            oom = bool(self._container.attrs.get("State", {}).get("OOMKilled"))
        except docker.errors.DockerException as e:
            log.warning("could not inspect %s after exit: %s", self._container.name, e)
        return ExitStatus(exit_code=_clamp(code), oom_killed=oom)

    async def stop(self, grace_s: float) -> None:
        try:
            await self._ex.call(self._container.stop, timeout=max(0, round(grace_s)))
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if "is paused" in _explain(e).lower():
                await self._ex.call(self._container.kill)
            else:
                raise

    async def pause(self) -> None:
        await self._ex.call(self._container.pause)

    async def resume(self) -> None:
        await self._ex.call(self._container.unpause)

    async def remove(self) -> None:
        if self._removed:
            return
        await self._ex._remove_quietly(self._container)
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
