"""Archives of a job's files: inputs, outputs and checkpoints.

Made as tar.gz, reproducibly (sorted members, no owners, whole-second times, a gzip
header without a time), so that the same tree gives the same archive and the same
blob digest. Read back from tar (plain, gzip, bzip2, xz) or zip by :func:`extract`,
which treats every archive as hostile: it writes only below the destination and
refuses, with an :class:`ArchiveError` a user can read,

- absolute member names and names with a ``..`` component;
- symbolic links whose target is absolute or leads outside the destination, and hard
  links to anything but a file extracted before them;
- device files, fifos and sockets;
- archives with more than ``max_members`` members, or whose files add up to more than
  ``max_bytes`` (the sizes the archive declares are checked before anything is read,
  and the bytes actually written are counted too);
- tar members whose headers (long names, pax records, sparse maps) or skipped data
  take more than ``MAX_HEADER_BYTES``: tarfile would read a long name or pax record
  whole into memory, and inflate skipped bytes, before returning the member.

Files are written with ``O_NOFOLLOW`` after any earlier entry of the same name is
removed, their modes lose setuid, setgid and sticky bits, and owners are ignored.
Symbolic links are made last and then checked once more against the finished tree
(``realpath``), so that no chain of links inside the archive can lead out of it.
A refused archive may leave what was extracted before the refusal, inside the
destination only.
"""

from __future__ import annotations

import bz2
import contextlib
import datetime
import gzip
import hashlib
import io
import lzma
import os
import posixpath
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from common.dirwalk import TreeRefused, has_entries, open_root, walk

#: the most bytes the files of one archive may expand to
MAX_EXPANDED_BYTES = 1024 * 1024 * 1024
#: the most members (files, directories, links) one archive may hold
MAX_MEMBERS = 100_000
#: bytes copied at a time
CHUNK = 1024 * 1024
#: the longest symbolic link target accepted (Linux's PATH_MAX)
MAX_LINK_TARGET = 4096
#: the most bytes tar may read or skip to reach one member (its headers, a long name,
#: pax records): far more than any real header, far less than memory
MAX_HEADER_BYTES = 1024 * 1024
#: how the compressed tars tarfile reads begin
_GZIP, _BZIP2, _XZ = b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"


class ArchiveError(Exception):
    """An archive was refused or could not be read or made; the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def sha256_file(path: Path) -> str:
    """The sha256 of a file's content, as hex (blocking)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def has_content(root: Path) -> bool:
    """True when ``root`` is a real directory (not a link) with at least one entry."""
    return has_entries(root)


# --- making ------------------------------------------------------------------------------


def create_tar_gz(
    src: Path,
    dest: Path,
    *,
    max_bytes: int = MAX_EXPANDED_BYTES,
    max_members: int = MAX_MEMBERS,
) -> int:
    """Write the tree below ``src`` (not ``src`` itself) as a tar.gz at ``dest``.

    The tree may belong to a running job: it is read with :mod:`common.dirwalk`, which
    never follows a path the job controls. Links are stored as links, never followed;
    fifos, sockets and devices are left out. Returns the number of members. Raises
    ArchiveError when ``src`` is not a real directory, when the tree passes a bound,
    or when an entry changed while it was read (the message names it).
    """
    try:
        root_fd = open_root(src)
    except NotADirectoryError:
        raise ArchiveError(f"{src} is not a directory") from None
    except FileNotFoundError:
        raise ArchiveError(f"{src} does not exist") from None
    except OSError as e:
        raise ArchiveError(f"could not archive {src}: {e}") from e
    try:
        return _write_tar_gz(root_fd, dest, max_bytes, max_members)
    except ArchiveError:
        dest.unlink(missing_ok=True)
        raise
    except TreeRefused as e:
        dest.unlink(missing_ok=True)
        raise ArchiveError(e.message) from e
    except OSError as e:
        dest.unlink(missing_ok=True)
        raise ArchiveError(f"could not archive {src}: {e}") from e
    finally:
        os.close(root_fd)


def _write_tar_gz(root_fd: int, dest: Path, max_bytes: int, max_members: int) -> int:
    members = 0
    total = 0
    #: (device, inode) of files with more than one name -> the member that has it
    linked: dict[tuple[int, int], str] = {}
    with (
        open(dest, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for entry in walk(root_fd):
            members += 1
            if members > max_members:
                raise ArchiveError(f"more than {max_members} files to archive")
            info = tarfile.TarInfo(entry.name)
            info.mode = entry.st.st_mode & 0o777
            # Directory times change with every entry: left out, an unchanged tree
            # gives the same archive.
            info.mtime = 0 if entry.kind == "dir" else int(entry.st.st_mtime)
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = entry.link
                tar.addfile(info)
            else:
                key = (entry.st.st_dev, entry.st.st_ino)
                if entry.st.st_nlink > 1 and key in linked:
                    info.type = tarfile.LNKTYPE
                    info.linkname = linked[key]
                    tar.addfile(info)
                    continue
                if entry.st.st_nlink > 1:
                    linked[key] = entry.name
                info.size = entry.st.st_size
                total += info.size
                if total > max_bytes:
                    raise ArchiveError(f"more than {_mib(max_bytes)} to archive")
                # Read through the handle the walk checked, never by path; a file
                # that shrinks meanwhile fails the archive ("unexpected end of data").
                with os.fdopen(entry.fd, "rb", closefd=False) as f:
                    tar.addfile(info, f)
    return members


# --- extracting --------------------------------------------------------------------------


@dataclass
class _Member:
    name: str
    kind: str  # "dir", "file", "symlink", "hardlink"
    size: int = 0
    mode: int = 0o644
    mtime: float | None = None
    link: str = ""
    open: Callable[[], IO[bytes]] | None = None


def extract(
    archive: Path,
    dest: Path,
    *,
    max_bytes: int = MAX_EXPANDED_BYTES,
    max_members: int = MAX_MEMBERS,
) -> int:
    """Extract a tar or zip archive below ``dest`` safely (see the module doc).

    Returns the number of members extracted; raises ArchiveError when refused.
    """
    dest.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(dest)
    with open(archive, "rb") as f:
        magic = f.read(6)
    try:
        if magic[:2] == b"PK":
            with zipfile.ZipFile(archive) as zf:
                members = _zip_members(zf, max_bytes, max_members)
                return _extract(members, root, max_bytes, max_members)
        with _open_tar(archive, magic) as (tar, guard):
            return _extract(_tar_members(tar, guard), root, max_bytes, max_members)
    except ArchiveError:
        raise
    except (
        tarfile.TarError,
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        zlib.error,
        lzma.LZMAError,
        NotImplementedError,
        RuntimeError,  # an encrypted zip member
        UnicodeDecodeError,
    ) as e:
        raise ArchiveError(f"corrupt or unsupported archive: {e}") from e
    except OSError as e:
        raise ArchiveError(f"could not extract the archive: {e}") from e


class _HeaderGuard(io.RawIOBase):
    """The decompressed tar stream, as tarfile reads it: while tarfile looks for the
    next member (``headers()``), what it reads or skips is counted, and past
    ``MAX_HEADER_BYTES`` it is refused. A member's content, read by the caller once the
    member is known and its declared size checked (``content()``), is not counted."""

    def __init__(self, stream: io.BufferedIOBase) -> None:
        super().__init__()
        self._stream = stream
        self._counting = True
        self._spent = 0

    def headers(self) -> None:
        self._counting = True
        self._spent = 0

    def content(self) -> None:
        self._counting = False

    def _spend(self, n: int) -> None:
        if self._counting:
            self._spent += n
            if self._spent > MAX_HEADER_BYTES:
                raise ArchiveError(
                    f"a member's tar headers take more than {_mib(MAX_HEADER_BYTES)} "
                    "(an oversized long name, pax record or skipped member)"
                )

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            raise ArchiveError("a tar member of unbounded size")
        self._spend(size)
        return self._stream.read(size)

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            # Skipping forward in a compressed stream inflates what is skipped.
            self._spend(max(0, offset - self._stream.tell()))
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()


def _decompressed(raw: io.BufferedReader, magic: bytes) -> io.BufferedIOBase:
    """``raw`` inflated, by the decompressor its first bytes name (or as it is)."""
    if magic.startswith(_GZIP):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic.startswith(_BZIP2):
        return bz2.BZ2File(raw, mode="rb")
    if magic.startswith(_XZ):
        return lzma.LZMAFile(raw, mode="rb")
    return raw


@contextlib.contextmanager
def _open_tar(archive: Path, magic: bytes) -> Iterator[tuple[tarfile.TarFile, _HeaderGuard]]:
    """The archive as a tar, inflated here (not by tarfile) so that the guard sees the
    bytes tarfile reads."""
    with (
        open(archive, "rb") as raw,
        _decompressed(raw, magic) as stream,
        _HeaderGuard(stream) as guard,
        _read_tar(guard) as tar,
    ):
        yield tar, guard


def _read_tar(stream: _HeaderGuard) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=stream, mode="r:")
    except tarfile.ReadError:
        raise ArchiveError("not a tar or zip archive") from None


def _tar_members(tar: tarfile.TarFile, guard: _HeaderGuard) -> Iterator[_Member]:
    while True:
        guard.headers()
        info = tar.next()
        guard.content()
        if info is None:
            return
        # Members already handled need not be kept: a long archive stays small in memory.
        tar.members = []  # type: ignore[attr-defined]
        if info.isdir():
            yield _Member(info.name, "dir", mode=info.mode)
        elif info.isreg():
            opener = _tar_opener(tar, info)
            yield _Member(info.name, "file", info.size, info.mode, info.mtime, open=opener)
        elif info.issym():
            yield _Member(info.name, "symlink", link=info.linkname)
        elif info.islnk():
            yield _Member(info.name, "hardlink", link=info.linkname)
        else:
            what = "device file" if info.ischr() or info.isblk() else "fifo or special file"
            raise ArchiveError(f"{info.name!r} is a {what}; archives may hold only files")


def _tar_opener(tar: tarfile.TarFile, info: tarfile.TarInfo) -> Callable[[], IO[bytes]]:
    def opener() -> IO[bytes]:
        f = tar.extractfile(info)
        if f is None:
            raise ArchiveError(f"{info.name!r} has no content")
        return f

    return opener


def _zip_members(zf: zipfile.ZipFile, max_bytes: int, max_members: int) -> Iterator[_Member]:
    infos = zf.infolist()
    # A zip lists its members up front: check what it declares before reading any.
    if len(infos) > max_members:
        raise ArchiveError(f"the archive has more than {max_members} members")
    if sum(i.file_size for i in infos) > max_bytes:
        raise ArchiveError(_too_big(max_bytes))
    for info in infos:
        mode = (info.external_attr >> 16) & 0xFFFF
        kind = stat.S_IFMT(mode)
        if info.is_dir():
            yield _Member(info.filename, "dir", mode=mode & 0o7777 or 0o755)
        elif kind == stat.S_IFLNK:
            if info.file_size > MAX_LINK_TARGET:
                raise ArchiveError(f"link {info.filename!r} has a too long target")
            target = zf.read(info).decode("utf-8")
            yield _Member(info.filename, "symlink", link=target)
        elif kind in (0, stat.S_IFREG):
            yield _Member(
                info.filename,
                "file",
                info.file_size,
                mode & 0o7777 or 0o644,
                _zip_time(info),
                open=_zip_opener(zf, info),
            )
        else:
            raise ArchiveError(
                f"{info.filename!r} is a device file or fifo; archives may hold only files"
            )


def _zip_opener(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Callable[[], IO[bytes]]:
    return lambda: zf.open(info)


def _zip_time(info: zipfile.ZipInfo) -> float | None:
    try:
        return datetime.datetime(*info.date_time).timestamp()
    except (ValueError, OverflowError):
        return None


def _clean(name: str, what: str = "member") -> str:
    """A member name as a relative path with no ``.`` or ``..`` parts, or an error."""
    if "\0" in name:
        raise ArchiveError(f"{what} name {name!r} holds a NUL byte")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":" and name[0].isalpha()):
        raise ArchiveError(f"{what} {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"{what} {name!r} points outside the destination (a '..' in it)")
    return "/".join(parts)


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _extract(members: Iterator[_Member], root: str, max_bytes: int, max_members: int) -> int:
    count = 0
    declared = 0
    written = 0
    links: list[tuple[str, str]] = []
    made: list[str] = []
    for m in members:
        count += 1
        if count > max_members:
            raise ArchiveError(f"the archive has more than {max_members} members")
        name = _clean(m.name)
        if not name:
            continue  # the root itself
        path = os.path.join(root, name)
        if m.kind == "dir":
            _make_dirs(root, path)
            os.chmod(path, (m.mode & 0o777) | 0o700)
        elif m.kind == "file":
            declared += m.size
            if declared > max_bytes:
                raise ArchiveError(_too_big(max_bytes))
            assert m.open is not None
            written = _write_file(root, path, m, written, max_bytes)
        elif m.kind == "symlink":
            target = m.link
            if not target or "\0" in target or len(target) > MAX_LINK_TARGET:
                raise ArchiveError(f"link {m.name!r} has an invalid target")
            if target.startswith("/"):
                raise ArchiveError(
                    f"link {m.name!r} points outside the destination (to {target!r})"
                )
            lexical = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
            if lexical == ".." or lexical.startswith("../"):
                raise ArchiveError(
                    f"link {m.name!r} points outside the destination (to {target!r})"
                )
            links.append((path, target))
        else:  # hardlink
            target_name = _clean(m.link, "hard link target")
            target = os.path.join(root, target_name)
            _check_parent(root, target)
            try:
                st = os.lstat(target)
            except FileNotFoundError:
                raise ArchiveError(
                    f"hard link {m.name!r} points to {m.link!r}, which is not in the archive"
                ) from None
            if not stat.S_ISREG(st.st_mode):
                raise ArchiveError(f"hard link {m.name!r} points to {m.link!r}, not a file")
            _make_dirs(root, os.path.dirname(path))
            _check_parent(root, path)
            _unlink_file(path)
            try:
                os.link(target, path, follow_symlinks=False)
            except OSError:
                with open(target, "rb") as src, _create(path, st.st_mode) as out:
                    written = _copy(src, out, written, max_bytes)
    # Links last: nothing above was written through one of them.
    for path, target in links:
        _make_dirs(root, os.path.dirname(path))
        _check_parent(root, path)
        _unlink_file(path)
        os.symlink(target, path)
        made.append(path)
    for path in made:
        if not _inside(root, os.path.realpath(path)):
            for other in made:
                with contextlib.suppress(OSError):
                    os.unlink(other)
            name = os.path.relpath(path, root)
            raise ArchiveError(f"link {name!r} points outside the destination")
    return count


def _too_big(max_bytes: int) -> str:
    return f"the archive expands to more than {_mib(max_bytes)}"


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB"


def _check_parent(root: str, path: str) -> None:
    """The directory that will hold ``path`` is inside ``root`` (links resolved)."""
    parent = os.path.realpath(os.path.dirname(path))
    if not _inside(root, parent):
        raise ArchiveError(
            f"{os.path.relpath(path, root)!r} would be written outside the destination"
        )


def _make_dirs(root: str, path: str) -> None:
    """Make ``path`` and its missing parents below ``root``; none may be a link."""
    rel = os.path.relpath(path, root)
    if rel == ".":
        return
    current = root
    for part in rel.split(os.sep):
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            os.mkdir(current, 0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise ArchiveError(f"{os.path.relpath(current, root)!r} is not a directory")


def _unlink_file(path: str) -> None:
    """Remove an earlier entry of the same name (never a directory)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise ArchiveError(f"{os.path.basename(path)!r} is both a directory and a file")
    os.unlink(path)


def _create(path: str, mode: int) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, mode & 0o777)
    return os.fdopen(fd, "wb")


def _copy(src: IO[bytes], out: BinaryIO, written: int, max_bytes: int) -> int:
    while block := src.read(CHUNK):
        written += len(block)
        if written > max_bytes:
            raise ArchiveError(_too_big(max_bytes))
        out.write(block)
    return written


def _write_file(root: str, path: str, m: _Member, written: int, max_bytes: int) -> int:
    _make_dirs(root, os.path.dirname(path))
    _check_parent(root, path)
    _unlink_file(path)
    assert m.open is not None
    with m.open() as src, _create(path, m.mode) as out:
        written = _copy(src, out, written, max_bytes)
    if m.mtime is not None:
        with contextlib.suppress(OSError, OverflowError, ValueError):
            os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)
    return written
