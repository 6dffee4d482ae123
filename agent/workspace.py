"""An attempt's files on this node: its workspace (inputs in, outputs out) and checkpoint.

Layout, per attempt, under ``<state_dir>/workspaces/<job>-<attempt>/``::

    workspace/      mounted at /workspace (process executor: the cwd, $BERTH_WORKSPACE)
      in/           the job's input archive (``spec.inputs``), extracted
      out/          what the job leaves here is archived (tar.gz) and uploaded as its
                    outputs when it ends
    checkpoint/     mounted at /checkpoint ($BERTH_CHECKPOINT); the job's latest
                    checkpoint is restored here before it starts, and the agent
                    uploads it on pause, cancel, a stale attempt, the end of an attempt
                    that did not complete, and every ``spec.checkpoint_interval_s``
                    (a running attempt is frozen while it is archived)
    *.tar.gz        archives on their way (never mounted)

Archives are checked (sha256) and extracted with :func:`common.archives.extract`, which
refuses anything that would write outside, links that lead out, devices, and
archives past the bounds (``max_bytes``, ``max_members``). A refused input is the
job's fault, not the node's. Outputs and checkpoints are archived by
:func:`common.archives.create_tar_gz`, which never follows a path the job controls
(:mod:`common.dirwalk`): a link swapped in meanwhile refuses the archive.

The blocking methods of :class:`Workspace` are plain file work (unit-tested); the
coroutines at the bottom add the transfers and keep disk work off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import shutil
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from agent.config import RETRY_BASE_S, RETRY_MAX_S
from agent.executors.base import Mounts
from agent.link import Link
from common.archives import (
    MAX_EXPANDED_BYTES,
    MAX_MEMBERS,
    ArchiveError,
    create_tar_gz,
    extract,
    has_content,
    sha256_file,
)
from common.client import Backoff
from common.errors import BerthError, Forbidden, InvalidRequest, NotFound, Unauthorized

log = logging.getLogger(__name__)

#: holds a running attempt still (paused) while its checkpoint is archived
Freeze = Callable[[], AbstractAsyncContextManager[None]]

#: how often a download whose bytes arrived corrupted is tried again
CORRUPT_RETRIES = 3

_DIR_NAME = re.compile(r"^([A-Za-z0-9_\-]+)-([0-9]+)$")


class WorkspaceError(Exception):
    """An attempt's files could not be prepared; ``infra``: the node's fault."""

    def __init__(self, message: str, *, infra: bool) -> None:
        super().__init__(message)
        self.message = message
        self.infra = infra


class Workspace:
    """The directories of one attempt (see the module doc)."""

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int = MAX_EXPANDED_BYTES,
        max_members: int = MAX_MEMBERS,
    ) -> None:
        self.root = root.absolute()
        self.max_bytes = max_bytes
        self.max_members = max_members
        self._archives = itertools.count()

    @property
    def mounts(self) -> Mounts:
        return Mounts(self.root / "workspace", self.root / "checkpoint")

    @property
    def inputs_dir(self) -> Path:
        return self.root / "workspace" / "in"

    @property
    def outputs_dir(self) -> Path:
        return self.root / "workspace" / "out"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoint"

    def exists(self) -> bool:
        return self.root.is_dir()

    def create(self) -> None:
        """Make the directories (afresh). The job may write to them whatever user its
        image runs as; the agent's state dir (0700) keeps other host users out."""
        if os.path.lexists(self.root):
            shutil.rmtree(self.root)
        self.root.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(self.root)
        for d in (self.mounts.workspace, self.inputs_dir, self.outputs_dir, self.checkpoint_dir):
            os.mkdir(d)
        for d in (self.mounts.workspace, self.outputs_dir, self.checkpoint_dir):
            os.chmod(d, 0o777)

    def remove_if_untouched(self) -> bool:
        """Remove the directories if the attempt left them empty (a few syscalls, no
        walk); False if something is in them (then :meth:`remove` it is)."""
        try:
            for d in (self.inputs_dir, self.outputs_dir, self.mounts.workspace):
                os.rmdir(d)
            os.rmdir(self.checkpoint_dir)
            os.rmdir(self.root)
        except FileNotFoundError:
            return not os.path.lexists(self.root)
        except OSError:
            return False
        return True

    def extract(self, archive: Path, into: Path, what: str) -> None:
        """Extract an archive safely; a refusal is the job's fault."""
        try:
            extract(archive, into, max_bytes=self.max_bytes, max_members=self.max_members)
        except ArchiveError as e:
            raise WorkspaceError(f"{what} refused: {e.message}", infra=False) from e
        finally:
            archive.unlink(missing_ok=True)

    def archive(self, which: Path) -> Path | None:
        """A tar.gz of ``which`` (the outputs or the checkpoint dir), or None if it is
        empty, missing or not a real directory (a job may replace it by a link)."""
        if not has_content(which):
            return None
        dest = self.root / f"{which.name}-{next(self._archives)}.tar.gz"
        create_tar_gz(which, dest, max_bytes=self.max_bytes, max_members=self.max_members)
        return dest

    def download_path(self, what: str) -> Path:
        return self.root / f"{what}-{next(self._archives)}.blob"

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class Workspaces:
    """Where this agent keeps its attempts' workspaces, and their bounds."""

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int = MAX_EXPANDED_BYTES,
        max_members: int = MAX_MEMBERS,
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.max_members = max_members

    def of(self, job_id: str, attempt: int) -> Workspace:
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", job_id):
            raise ValueError(f"unexpected job id {job_id!r}")
        return Workspace(
            self.root / f"{job_id}-{attempt}",
            max_bytes=self.max_bytes,
            max_members=self.max_members,
        )

    def leftovers(self, keep: set[tuple[str, int]]) -> list[Path]:
        """Workspaces of attempts not in ``keep`` (left by an earlier run)."""
        if not self.root.is_dir():
            return []
        out = []
        for path in self.root.iterdir():
            m = _DIR_NAME.match(path.name)
            if m is None or (m.group(1), int(m.group(2))) not in keep:
                out.append(path)
        return out


# --- with the scheduler -----------------------------------------------------------------


async def prepare(
    ws: Workspace, link: Link, *, inputs: str | None, checkpoint: str | None
) -> Mounts:
    """Create the attempt's directories, fetch and extract its inputs and checkpoint."""
    try:
        if inputs is None and checkpoint is None:
            ws.create()  # a few mkdirs: cheaper on the loop than a hop to a thread
        else:
            await asyncio.to_thread(ws.create)
    except OSError as e:
        raise WorkspaceError(f"the workspace could not be created: {e}", infra=True) from e
    for digest, into, what in (
        (inputs, ws.inputs_dir, "input archive"),
        (checkpoint, ws.checkpoint_dir, "checkpoint"),
    ):
        if digest is None:
            continue
        path = ws.download_path(what.split()[0])
        await fetch(link, digest, path, what)
        await asyncio.to_thread(ws.extract, path, into, f"{what} {digest[:12]}")
    return ws.mounts


async def fetch(link: Link, digest: str, dest: Path, what: str) -> None:
    """Download a blob, its sha256 checked; retried while the scheduler is away."""
    corrupt = 0
    backoff = Backoff(RETRY_BASE_S, RETRY_MAX_S)
    while True:
        await link.registered.wait()
        try:
            await link.client.download_blob(digest, dest)
            link.note_reachable(True)
            return
        except NotFound as e:
            raise WorkspaceError(
                f"the {what} {digest} is not stored on the scheduler", infra=False
            ) from e
        except InvalidRequest as e:
            corrupt += 1
            if corrupt > CORRUPT_RETRIES:
                raise WorkspaceError(
                    f"the {what} could not be fetched: {e.message}", infra=True
                ) from e
        except Unauthorized as e:
            link.lost_registration(e.message)
            continue
        except Forbidden as e:
            raise WorkspaceError(f"the {what} could not be fetched: {e.message}", infra=True) from e
        except BerthError as e:
            link.note_reachable(False, e.message)
        except OSError as e:
            raise WorkspaceError(f"the {what} could not be written: {e}", infra=True) from e
        await asyncio.sleep(backoff.next())


async def archive(ws: Workspace, which: Path) -> tuple[Path, str] | None:
    """Archive a directory off the loop: ``(path, sha256)``, or None when it is empty.

    Raises ArchiveError when it is past the bounds or changed while it was read.
    """

    if not has_content(which):
        return None  # the common case, told without a hop to a thread

    def make() -> tuple[Path, str] | None:
        path = ws.archive(which)
        if path is None:
            return None
        return path, sha256_file(path)

    return await asyncio.to_thread(make)


class AttemptFiles:
    """One attempt's workspace and checkpoint, kept in step with the scheduler.

    ``restored``: the digest of the checkpoint the attempt starts from; an unchanged
    checkpoint is never uploaded again.
    """

    def __init__(
        self,
        ws: Workspace,
        link: Link,
        job_id: str,
        attempt: int,
        *,
        restored: str | None = None,
    ) -> None:
        self.ws = ws
        self.job_id = job_id
        self.attempt = attempt
        self._link = link
        self._lock = asyncio.Lock()
        #: the digest of the checkpoint last restored or uploaded
        self.checkpoint_digest = restored

    @property
    def mounts(self) -> Mounts:
        return self.ws.mounts

    async def prepare(self, inputs: str | None) -> Mounts:
        return await prepare(self.ws, self._link, inputs=inputs, checkpoint=self.checkpoint_digest)

    async def save_checkpoint(self, why: str, freeze: Freeze | None = None) -> str | None:
        """Upload /checkpoint if it changed; returns the new digest, None if nothing was
        sent. Failures are logged, never raised: a checkpoint is worth a try.

        ``freeze``: held while the directory is archived (not while it is uploaded), so
        that a running attempt cannot change it meanwhile: its files are consistent,
        and no link can be swapped in (the archive would refuse it)."""
        async with self._lock:
            try:
                async with freeze() if freeze is not None else contextlib.nullcontext():
                    made = await archive(self.ws, self.ws.checkpoint_dir)
            except ArchiveError as e:
                log.warning("checkpoint of %s (%s) not saved: %s", self.job_id, why, e.message)
                return None
            if made is None:
                return None
            path, digest = made
            try:
                if digest == self.checkpoint_digest:
                    return None
                await self._link.retrying(
                    lambda: self._link.client.upload_checkpoint(
                        self._link.node_id, self.job_id, self.attempt, path
                    )
                )
            except BerthError as e:
                log.warning("checkpoint of %s (%s) refused: %s", self.job_id, why, e.message)
                return None
            finally:
                await asyncio.to_thread(path.unlink, True)
            self.checkpoint_digest = digest
            log.info("checkpoint of %s/%d saved (%s)", self.job_id, self.attempt, why)
            return digest

    async def save_outputs(self) -> tuple[str | None, str | None]:
        """Upload the archive of /workspace/out: ``(digest, None)``, ``(None, None)``
        when the job left nothing there, ``(None, why)`` when it could not be stored."""
        try:
            made = await archive(self.ws, self.ws.outputs_dir)
        except ArchiveError as e:
            return None, f"outputs not stored: {e.message}"
        if made is None:
            return None, None
        path, _ = made
        try:
            digest = await self._link.retrying(lambda: self._link.client.upload_blob(path))
        except BerthError as e:
            return None, f"outputs not stored: {e.message}"
        finally:
            await asyncio.to_thread(path.unlink, True)
        return digest, None

    async def remove(self) -> None:
        if not self.ws.remove_if_untouched():
            await asyncio.to_thread(self.ws.remove)


__all__ = [
    "AttemptFiles",
    "Mounts",
    "Workspace",
    "WorkspaceError",
    "Workspaces",
    "archive",
    "fetch",
    "prepare",
]
