"""Hostile archives, made byte by byte in a moment however large they expand.

Decompressors read concatenated streams (gzip members, bzip2 streams, xz streams) as
one, so an archive that expands to many GiB is a header followed by one compressed
block of zeros repeated: built in memory in milliseconds, a few MiB on disk.

Used by the unit tests of :func:`common.archives.extract` and by the end-to-end tests
that hand such archives to a real agent as a job's inputs.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
from collections.abc import Callable

MIB = 1024 * 1024
GIB = 1024 * MIB
#: tar's block
BLOCK = 512

_COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gz": lambda data: gzip.compress(data, compresslevel=9, mtime=0),
    "bz2": lambda data: bz2.compress(data, compresslevel=9),
    "xz": lambda data: lzma.compress(data, format=lzma.FORMAT_XZ),
}


def compressed(parts: list[bytes | tuple[bytes, int]], how: str = "gz") -> bytes:
    """One compressed stream of ``parts`` in order; ``(block, n)`` is ``block`` repeated
    ``n`` times, compressed once."""
    compress = _COMPRESS[how]
    out = io.BytesIO()
    for part in parts:
        if isinstance(part, tuple):
            block, times = part
            out.write(compress(block) * times)
        elif part:
            out.write(compress(part))
    return out.getvalue()


def header(name: str, *, size: int = 0, kind: bytes = tarfile.REGTYPE, link: str = "") -> bytes:
    """One ustar/GNU header block (no long-name or pax extensions of its own)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = kind
    info.linkname = link
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info.tobuf(format=tarfile.GNU_FORMAT)


def file_member(name: str, data: bytes) -> bytes:
    return header(name, size=len(data)) + _padded(data)


def end() -> bytes:
    """The end of a tar: two zero blocks."""
    return b"\0" * (2 * BLOCK)


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def _zeros(size: int) -> tuple[bytes, int]:
    assert size % MIB == 0
    return b"\0" * MIB, size // MIB


def tar(*members: bytes, how: str = "gz") -> bytes:
    """A compressed tar of whole member byte strings (headers and padded data)."""
    return compressed([*members, end()], how)


def zeros_bomb(size: int, how: str = "gz") -> bytes:
    """One file that declares and holds ``size`` zero bytes."""
    return compressed([header("zeros", size=size), _zeros(size), end()], how)


def long_name_bomb(size: int, how: str = "gz") -> bytes:
    """A GNU long-name header whose name is ``size`` bytes long: tarfile reads a long
    name whole into memory before it returns the member it names."""
    return compressed(
        [
            header("././@LongLink", size=size, kind=tarfile.GNUTYPE_LONGNAME),
            (b"a" * MIB, size // MIB),
            file_member("after", b"x"),
            end(),
        ],
        how,
    )


def pax_bomb(size: int, how: str = "gz") -> bytes:
    """A pax extended header of ``size`` bytes (read whole into memory, like a long name)."""
    # One record "<len> comment=<value>\n" that fills the header exactly.
    value_len = size - len(" comment=\n") - len(str(size))
    record = f"{size} comment=".encode()
    assert len(record) + value_len + 1 == size
    return compressed(
        [
            header("././@PaxHeader", size=size, kind=tarfile.XHDTYPE),
            record,
            (b"c" * MIB, value_len // MIB),
            b"c" * (value_len % MIB) + b"\n" + b"\0" * (-size % BLOCK),
            file_member("after", b"x"),
            end(),
        ],
        how,
    )


def skipped_member_bomb(size: int, how: str = "gz") -> bytes:
    """A regular file named "." (the destination itself, so it is not written) that
    holds ``size`` zero bytes: skipping over them still means inflating them all."""
    return compressed(
        [header("./", size=size), _zeros(size), file_member("after", b"x"), end()], how
    )


def trailing_zeros(size: int, how: str = "gz") -> bytes:
    """A small valid tar followed, inside the same compressed stream, by ``size`` zero
    bytes that no tar reader needs to inflate."""
    return compressed([file_member("small", b"small\n"), end(), _zeros(size)], how)


def many_entries(count: int, how: str = "gz") -> bytes:
    """``count`` entries, all the same directory: cheap to make, cheap to extract,
    and past any bound on the number of members."""
    one = header("d/", kind=tarfile.DIRTYPE)
    per = 2048  # headers per compressed block
    whole, rest = divmod(count, per)
    return compressed([(one * per, whole), one * rest, end()], how)
