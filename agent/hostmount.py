"""Host mounts that bind what was checked, not a path that can change afterwards.

A job that may write under an allowed directory can swap a path there between a real
directory and a link out of it. Checking the path and then handing it to dockerd
leaves a window: runc resolves the path again when it mounts, and may follow the link
swapped in since. So a mount's source is *pinned* instead:

1. its links and ``..`` are resolved (``realpath``) and the result checked against the
   node's allow-list, as :mod:`agent.policy` does;
2. the resolved path is opened one component at a time from ``/`` with
   ``O_PATH | O_NOFOLLOW``: a component that is a link now was swapped in since step
   1, and the mount is refused;
3. the opened file's directory chain is walked up with ``..`` to an allowed
   directory, comparing device and inode numbers (names can lie, inodes cannot);
4. the agent bind-mounts that descriptor (``/proc/self/fd/N``, a magic link to the
   very inode opened) onto a directory of its own (``/tmp/berth-mount-*``, mode 0700,
   which no job can reach) and hands dockerd that path. (dockerd cannot be given the
   ``/proc`` link itself: runc mounts from a new mount namespace, and the kernel
   refuses to bind from a mount of another one.) The executor compares what dockerd
   reports, and what the started container shows, with the descriptor
   (:func:`same_file`), and unmounts its own path once the container has started: the
   container keeps its private copy of the mount.

So the docker executor makes host mounts only as root beside dockerd (it needs
``CAP_SYS_ADMIN`` in dockerd's mount namespace); elsewhere a mount job fails with the
reason. Blocking (system calls on the host's filesystem): run it off the event loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agent.policy import NodePolicy, host_path
from common import policy

_OPEN_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
#: mount(2) and umount2(2) flags (linux/mount.h)
_MS_BIND = 0x1000
_MNT_DETACH = 0x2


class MountRefused(Exception):
    """A mount's source may not be bound; ``message`` says why. ``infra``: the node
    cannot pin mounts at all (not the job's fault)."""

    def __init__(self, message: str, *, infra: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.infra = infra


@dataclass
class PinnedSource:
    """An open ``O_PATH`` descriptor of a mount's source, beneath an allowed directory."""

    #: the source as the job wrote it
    source: str
    #: where it was found (links resolved), for messages
    resolved: str
    fd: int
    dev: int
    ino: int
    is_dir: bool

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class PinnedMounts:
    """The pinned sources of one container, each bound at a path of the agent's own
    (``paths``, in the job's order) until :meth:`release`."""

    def __init__(self, sources: Sequence[str], node_policy: NodePolicy) -> None:
        """Pin and stage every source, or none: MountRefused for the first that may
        not be bound."""
        self.pinned: list[PinnedSource] = []
        self.paths: list[str] = []
        self._stage: str | None = None
        try:
            for source in sources:
                self.pinned.append(pin(source, node_policy))
            if self.pinned:
                self._stage = tempfile.mkdtemp(prefix="berth-mount-")
                for i, p in enumerate(self.pinned):
                    self.paths.append(_bind(p, os.path.join(self._stage, str(i))))
        except BaseException:
            self.release()
            raise

    def mismatch(self, sources: Sequence[str]) -> str | None:
        """The first of ``sources`` (what dockerd or the container reports, in the job's
        order) that is not the pinned file, described; None when all are."""
        for path, p in zip(sources, self.pinned, strict=True):
            if not same_file(path, p):
                return f"{path} is not the checked {p.resolved}"
        return None

    def release(self) -> None:
        """Unmount the agent's paths (a started container keeps its copies) and close
        the descriptors; never raises."""
        self.paths = []
        if self._stage is not None:
            # Never a recursive removal: through a mount still in place it would
            # delete the host's files. A path still mounted is left behind.
            for name in os.listdir(self._stage):
                path = os.path.join(self._stage, name)
                _unmount(path)
                with contextlib.suppress(OSError):
                    if os.path.isdir(path) and not os.path.islink(path):
                        os.rmdir(path)
                    else:
                        os.unlink(path)
            with contextlib.suppress(OSError):
                os.rmdir(self._stage)
            self._stage = None
        for p in self.pinned:
            p.close()


def pin(source: str, node_policy: NodePolicy) -> PinnedSource:
    """Open ``source`` so that what is bound is what the allow-list permits."""
    need = policy.MOUNT + policy.clean_path(source)
    resolved = host_path(source)
    allowed_dirs = node_policy.mount_dirs()
    if not policy.permits([policy.MOUNT + d for d in allowed_dirs], policy.MOUNT + resolved):
        raise MountRefused(policy.refusal(need))
    fd, parent = _open_nofollow(source, resolved)
    try:
        st = os.fstat(fd)
        allowed_ids = _identities(allowed_dirs)
        if not _beneath(st, parent, allowed_ids):
            raise MountRefused(
                f"{policy.refusal(need)} (it no longer lies under an allowed directory)"
            )
    except BaseException:
        os.close(fd)
        raise
    finally:
        os.close(parent)
    return PinnedSource(source, resolved, fd, st.st_dev, st.st_ino, stat.S_ISDIR(st.st_mode))


def same_file(path: str, pinned: PinnedSource) -> bool:
    """Whether ``path`` (as dockerd reports a bind's source) is the pinned file."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (pinned.dev, pinned.ino)


_libc = ctypes.CDLL(None, use_errno=True)


def _bind(p: PinnedSource, at: str) -> str:
    """Bind-mount the pinned file at ``at`` (made here); returns ``at``."""
    if p.is_dir:
        os.mkdir(at, 0o700)
    else:
        os.close(os.open(at, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    source = f"/proc/self/fd/{p.fd}".encode()
    if _libc.mount(source, at.encode(), None, _MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise MountRefused(
            f"mount source {p.source} cannot be pinned on this node: bind mount failed "
            f"({os.strerror(err)}; the docker executor makes host mounts only as root "
            "beside dockerd)",
            infra=True,
        )
    if not same_file(at, p):
        _unmount(at)
        raise MountRefused(f"mount source {p.source} could not be pinned", infra=True)
    return at


def _unmount(path: str) -> None:
    _libc.umount2(path.encode(), _MNT_DETACH)


def _open_nofollow(source: str, resolved: str) -> tuple[int, int]:
    """Descriptors of ``resolved`` and of its parent directory, opened without
    following any link; MountRefused when a component is (now) a link or missing."""
    parts = [p for p in resolved.split("/") if p]
    parent = os.open("/", _OPEN_FLAGS | os.O_DIRECTORY)
    current = os.dup(parent)
    try:
        for i, part in enumerate(parts):
            try:
                nxt = os.open(part, _OPEN_FLAGS, dir_fd=current)
            except FileNotFoundError:
                raise MountRefused(f"mount source {source} does not exist on this node") from None
            except OSError as e:
                raise MountRefused(f"mount source {source} cannot be opened: {e.strerror}") from e
            os.close(parent)
            parent, current = current, nxt
            mode = os.fstat(current).st_mode
            if stat.S_ISLNK(mode):
                raise MountRefused(
                    f"mount source {source} changed while it was checked "
                    f"({'/' + '/'.join(parts[: i + 1])} became a link); refused"
                )
    except BaseException:
        os.close(current)
        os.close(parent)
        raise
    return current, parent


def _identities(dirs: Iterable[str]) -> set[tuple[int, int]]:
    out = set()
    for d in dirs:
        try:
            st = os.stat(d)
        except OSError:
            continue  # an allowed directory that is not there allows nothing
        out.add((st.st_dev, st.st_ino))
    return out


def _beneath(st: os.stat_result, parent: int, allowed: set[tuple[int, int]]) -> bool:
    """Whether the file ``st`` (in directory ``parent``) is an allowed directory or lies
    under one, following ``..`` up to the root."""
    if (st.st_dev, st.st_ino) in allowed:
        return True
    fd = os.dup(parent)
    try:
        while True:
            here = os.fstat(fd)
            if (here.st_dev, here.st_ino) in allowed:
                return True
            up = os.open("..", _OPEN_FLAGS | os.O_DIRECTORY, dir_fd=fd)
            above = os.fstat(up)
            os.close(fd)
            fd = up
            if (above.st_dev, above.st_ino) == (here.st_dev, here.st_ino):
                return False  # the root is its own parent
    finally:
        os.close(fd)
