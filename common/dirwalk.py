"""Reading a directory tree that someone else may change meanwhile, never following a
path they control: a running job's /checkpoint, what it leaves in /workspace/out.

A job can swap any name in such a tree with a symbolic link to a host path between the
moment the reader looks at the name and the moment it opens it (renameat2 with
RENAME_EXCHANGE does it atomically, in a loop); a reader that checks with ``lstat`` and
then opens by path reads the host's file (CVE-2018-15664, in `docker cp`). So here:

- the tree's root is opened with ``O_DIRECTORY | O_NOFOLLOW``, and every entry below it
  relative to its parent's handle (``dir_fd``), with ``O_NOFOLLOW``: a path is never
  resolved again, and a link is never followed, whatever the tree holds;
- a file is first opened with ``O_PATH`` (nothing is opened: a device or fifo swapped
  in is never opened) and that handle's ``fstat`` must show the same device, inode and
  type as the listing's ``lstat``; only then is it opened for reading, through
  ``/proc/self/fd`` (that very inode), with ``O_NONBLOCK | O_NOCTTY``, and checked
  again. Else the entry changed while the tree was read, and the walk is refused
  (:class:`TreeRefused`, naming the entry), as is a directory that is no longer one.
  Content is read only through the checked handle;
- a link is given as its target's text (``readlink``), never as what it points to;
  fifos, sockets and devices are left out without being opened;
- an entry removed between the listing and the open is left out: nothing was read.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

#: how a directory of the tree is opened
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: how a file of the tree is opened
O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
#: opens a name without opening the file (Linux); 0 where there is no such flag
O_PATH: int = getattr(os, "O_PATH", 0)
#: the deepest directory read: the walk holds one handle per level
MAX_DEPTH = 256


class TreeRefused(Exception):
    """The tree cannot be read safely (an entry changed, or it is too deep)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Entry:
    """One entry below the root, with its name relative to the root ("/"-separated)."""

    name: str
    kind: Literal["dir", "file", "symlink"]
    #: of the opened handle (a file), else of the listing
    st: os.stat_result
    #: a link's target, as text
    link: str = ""
    #: a file's open handle: valid until the walk moves on
    fd: int = -1


def open_root(path: Path) -> int:
    """A handle on the directory ``path`` itself (not a link to one).

    Raises NotADirectoryError when it is a link or no directory, FileNotFoundError
    when it is missing.
    """
    try:
        return os.open(path, O_DIR)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotADirectoryError(errno.ENOTDIR, "a symbolic link", str(path)) from e
        raise


def has_entries(path: Path) -> bool:
    """True when ``path`` is a directory (not a link to one) with at least one entry."""
    try:
        fd = open_root(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        return bool(os.listdir(fd))
    finally:
        os.close(fd)


def walk(root_fd: int, *, max_depth: int = MAX_DEPTH) -> Iterator[Entry]:
    """Every entry below the directory ``root_fd``: a directory's entries sorted by
    name, then each of its subdirectories the same way (the order of ``os.walk``).

    Raises TreeRefused when an entry changed while it was read or the tree is deeper
    than ``max_depth``; OSError when a directory cannot be read.
    """
    yield from _walk_dir(root_fd, "", 0, max_depth)


def _walk_dir(dir_fd: int, prefix: str, depth: int, max_depth: int) -> Iterator[Entry]:
    subdirs: list[tuple[str, os.stat_result]] = []
    for name in sorted(os.listdir(dir_fd)):
        path = prefix + name
        try:
            listed = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        mode = listed.st_mode
        if stat.S_ISLNK(mode):
            target = _read_link(dir_fd, name, path)
            if target is not None:
                yield Entry(path, "symlink", listed, link=target)
        elif stat.S_ISREG(mode):
            fd = open_entry(dir_fd, name, listed, path)
            if fd is None:
                continue
            try:
                yield Entry(path, "file", os.fstat(fd), fd=fd)
            finally:
                os.close(fd)
        elif stat.S_ISDIR(mode):
            yield Entry(path, "dir", listed)
            subdirs.append((name, listed))
        # fifos, sockets and devices: left out, never opened
    for name, listed in subdirs:
        path = prefix + name
        if depth + 1 > max_depth:
            raise TreeRefused(f"{path} is more than {max_depth} directories deep")
        fd = open_entry(dir_fd, name, listed, path)
        if fd is None:
            continue
        try:
            yield from _walk_dir(fd, path + "/", depth + 1, max_depth)
        finally:
            os.close(fd)


def open_entry(dir_fd: int, name: str, listed: os.stat_result, path: str) -> int | None:
    """Open the file or directory ``name`` of ``dir_fd`` that the listing saw as
    ``listed``, without following a link; None when it was removed meanwhile.

    A file is first opened with ``O_PATH`` (which opens nothing: a device swapped in is
    never opened, so opening has no side effect such as arming a watchdog), checked,
    and only then opened for reading through ``/proc/self/fd``, which names that very
    inode. Without /proc (or O_PATH) it is opened directly, ``O_NONBLOCK|O_NOCTTY``.

    Raises TreeRefused when what was opened is not what was listed (``path`` names it).
    """
    if stat.S_ISDIR(listed.st_mode):
        return _checked(_open_nofollow(dir_fd, name, O_DIR, path), listed, path)
    if not O_PATH:
        return _checked(_open_nofollow(dir_fd, name, O_FILE, path), listed, path)
    flags = O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    handle = _checked(_open_nofollow(dir_fd, name, flags, path), listed, path)
    if handle is None:
        return None
    fd: int | None
    try:
        fd = os.open(f"/proc/self/fd/{handle}", O_FILE & ~os.O_NOFOLLOW)
    except FileNotFoundError:  # no /proc: the checked name, opened again
        fd = _open_nofollow(dir_fd, name, O_FILE, path)
    finally:
        os.close(handle)
    return _checked(fd, listed, path)


def _open_nofollow(dir_fd: int, name: str, flags: int, path: str) -> int | None:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise TreeRefused(
                f"{path} changed while it was archived (it is now a symbolic link or "
                "another kind of file)"
            ) from e
        raise


def _checked(fd: int | None, listed: os.stat_result, path: str) -> int | None:
    """``fd`` when it is the entry the listing saw; else it is closed and refused."""
    if fd is None:
        return None
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino, stat.S_IFMT(opened.st_mode)) == (
        listed.st_dev,
        listed.st_ino,
        stat.S_IFMT(listed.st_mode),
    ):
        return fd
    os.close(fd)
    now = "a symbolic link" if stat.S_ISLNK(opened.st_mode) else "another file"
    raise TreeRefused(f"{path} changed while it was archived (it is now {now})")


def _read_link(dir_fd: int, name: str, path: str) -> str | None:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.EINVAL:
            raise TreeRefused(
                f"{path} changed while it was archived (it is no longer a symbolic link)"
            ) from e
        raise
