"""Attacks on :func:`common.archives.extract`: path traversal, absolute names, links
that lead out, device files, and decompression bombs of many GiB, in tar (plain, gzip,
bzip2, xz) and zip. Each is refused with an error that says why, and nothing is
written outside the destination.

Bombs that could take the test process's memory if a guard were missing are extracted
in a child process with a memory limit, so a regression fails the test instead of the
machine.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.archives import MAX_MEMBERS, ArchiveError, extract
from tests import hostile_archives as H
from tests.support import REPO

#: the address space the child that extracts a bomb may use: enough for Python and the
#: extraction, far less than any bomb here expands to
BOX_MEMORY = 768 * 1024 * 1024
SENTINEL = b"original\n"


@dataclass
class Area:
    """A destination, and beside it a directory nothing may touch (with one file)."""

    root: Path
    dest: Path
    outside: Path

    def archive(self, data: bytes, name: str = "archive") -> Path:
        path = self.root / name
        path.write_bytes(data)
        return path

    def assert_nothing_escaped(self) -> None:
        assert sorted(p.name for p in self.outside.iterdir()) == ["keep"]
        assert (self.outside / "keep").read_bytes() == SENTINEL
        assert {p.name for p in self.root.iterdir()} <= {"archive", "dest", "outside"}
        real = os.path.realpath(self.dest)
        for path in _entries(self.dest):
            resolved = os.path.realpath(path)
            assert resolved == real or resolved.startswith(real + "/"), (path, resolved)

    def up_to_outside(self) -> str:
        """A relative path from the destination to the outside directory."""
        return os.path.relpath(self.outside, self.dest)


def _entries(root: Path) -> Iterator[Path]:
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            yield Path(dirpath) / name


def _make_area(root: Path) -> Area:
    dest, outside = root / "dest", root / "outside"
    outside.mkdir(parents=True)
    (outside / "keep").write_bytes(SENTINEL)
    return Area(root, dest, outside)


@pytest.fixture
def area(tmp_path: Path) -> Area:
    return _make_area(tmp_path)


# --- tar members ------------------------------------------------------------------------------


def _member(name: str, data: bytes = b"pwned\n") -> bytes:
    return H.file_member(name, data)


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> bytes:
    return H.header(name, kind=kind, link=target)


def _hostile_tars(area: Area) -> dict[str, tuple[list[bytes], str]]:
    """name -> (members, what the refusal says)."""
    out = area.up_to_outside()
    deep = "../" * 30 + str(area.outside).lstrip("/")
    return {
        "dot-dot": ([_member("../escaped")], "points outside"),
        "dot-dot to the outside dir": ([_member(f"{out}/escaped")], "points outside"),
        "many dot-dots": ([_member(f"{deep}/escaped")], "points outside"),
        "dot-dot after a dir": ([_member("a/../../escaped")], "points outside"),
        "dot-dot after dots": ([_member("./.././escaped")], "points outside"),
        "dot-dot among slashes": ([_member("a//..//..//escaped")], "points outside"),
        "a dot-dot directory": ([H.header("../", kind=tarfile.DIRTYPE)], "points outside"),
        "absolute": ([_member(f"{area.outside}/escaped")], "absolute path"),
        "double slash": ([_member(f"/{area.outside}/escaped")], "absolute path"),
        "backslash": ([_member("\\escaped")], "absolute path"),
        "drive letter": ([_member("C:/escaped")], "absolute path"),
        "absolute symlink": ([_link("out", str(area.outside))], "points outside"),
        "relative symlink out": ([_link("out", out)], "points outside"),
        "symlink then a file through it": (
            [_link("out", out), _member("out/escaped")],
            "points outside",
        ),
        "symlink to /": ([_link("root", "/"), _member("root/tmp/escaped")], "points outside"),
        "chain of links out": (
            [_link("a", "."), _link("b", "a/a/.."), _member("c")],
            "points outside",
        ),
        "link through a link": (
            [_link("d", "."), _link("e", "d/d/d/../..")],
            "points outside",
        ),
        "absolute hard link": (
            [_link("h", f"{area.outside}/keep", tarfile.LNKTYPE), _member("h", b"over")],
            "absolute path",
        ),
        "relative hard link out": (
            [_link("h", f"{out}/keep", tarfile.LNKTYPE), _member("h", b"over")],
            "points outside",
        ),
        "hard link to a link": (
            [_link("s", "x"), _link("h", "s", tarfile.LNKTYPE)],
            "not in the archive",
        ),
        "character device": ([H.header("tty", kind=tarfile.CHRTYPE)], "device file"),
        "block device": ([H.header("sda", kind=tarfile.BLKTYPE)], "device file"),
        "fifo": ([H.header("pipe", kind=tarfile.FIFOTYPE)], "fifo"),
        "unknown type": ([H.header("odd", kind=b"Z")], "special file"),
    }


#: the case names (the archives themselves depend on where the test's area is)
CASES = sorted(_hostile_tars(Area(Path("/n"), Path("/n/dest"), Path("/n/outside"))))


@pytest.mark.parametrize("how", ["gz", "bz2", "xz", "plain"])
@pytest.mark.parametrize("case", CASES)
def test_a_hostile_tar_is_refused_saying_why_and_nothing_escapes(
    area: Area, case: str, how: str
) -> None:
    members, reason = _hostile_tars(area)[case]
    data = b"".join([*members, H.end()]) if how == "plain" else H.tar(*members, how=how)
    with pytest.raises(ArchiveError, match=reason):
        extract(area.archive(data), area.dest)
    area.assert_nothing_escaped()


def test_a_link_already_in_the_destination_is_replaced_not_written_through(area: Area) -> None:
    area.dest.mkdir()
    (area.dest / "evil").symlink_to(area.outside)
    (area.dest / "keep").symlink_to(area.outside / "keep")
    # A file of the link's name replaces the link; nothing is written where it pointed.
    extract(area.archive(H.tar(_member("keep", b"new\n"))), area.dest)
    assert not (area.dest / "keep").is_symlink()
    assert (area.dest / "keep").read_bytes() == b"new\n"
    # A path through the link is refused.
    with pytest.raises(ArchiveError, match="not a directory"):
        extract(area.archive(H.tar(_member("evil/escaped"))), area.dest)
    # So is a hard link to a file reached through it.
    with pytest.raises(ArchiveError, match="outside the destination"):
        extract(area.archive(H.tar(_link("h", "evil/keep", tarfile.LNKTYPE))), area.dest)
    (area.dest / "evil").unlink()
    area.assert_nothing_escaped()


# --- zip members ------------------------------------------------------------------------------


def _zip(*members: tuple[str, bytes, int]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([("../escaped", b"x", 0o100644)], "points outside"),
        ([("a/../../escaped", b"x", 0o100644)], "points outside"),
        ([("/escaped", b"x", 0o100644)], "absolute path"),
        ([("out", b"/", 0o120777), ("out/tmp/escaped", b"x", 0o100644)], "points outside"),
        ([("out", b"../..", 0o120777)], "points outside"),
        ([("dev", b"", 0o020600)], "device file"),
        ([("pipe", b"", 0o010600)], "device file or fifo"),
    ],
)
def test_a_hostile_zip_is_refused_saying_why_and_nothing_escapes(
    area: Area, members: list[tuple[str, bytes, int]], reason: str
) -> None:
    with pytest.raises(ArchiveError, match=reason):
        extract(area.archive(_zip(*members)), area.dest)
    area.assert_nothing_escaped()


def test_a_zip_that_understates_its_sizes_is_refused_after_the_declared_bytes(
    area: Area,
) -> None:
    """The directory says 10 bytes; the data inflates to 64 MiB: only 10 are read."""
    data = bytearray(_zip(("zeros", b"\0" * (64 * H.MIB), 0o100644)))
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.index(signature) + offset
        data[at : at + 4] = struct.pack("<I", 10)
    with pytest.raises(ArchiveError, match="corrupt"):
        extract(area.archive(bytes(data)), area.dest)
    zeros = area.dest / "zeros"
    assert not zeros.exists() or zeros.stat().st_size <= 10
    area.assert_nothing_escaped()


# --- bombs ------------------------------------------------------------------------------------

_BOXED = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from common.archives import ArchiveError, extract
try:
    n = extract(Path(sys.argv[1]), Path(sys.argv[2]), **{bounds})
except ArchiveError as e:
    print("refused: " + e.message)
else:
    print(f"extracted {{n}}")
"""


def _extract_boxed(archive: Path, dest: Path, **bounds: int) -> str:
    """Extract in a child process whose memory is capped; its one line of outcome."""
    code = _BOXED.format(limit=BOX_MEMORY, bounds=bounds)
    done = subprocess.run(
        [sys.executable, "-c", code, str(archive), str(dest)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


BOMBS = {
    "8 GiB of zeros, gzip": (H.zeros_bomb(8 * H.GIB, "gz"), "refused: the archive expands to"),
    "8 GiB of zeros, bzip2": (H.zeros_bomb(8 * H.GIB, "bz2"), "refused: the archive expands to"),
    "8 GiB of zeros, xz": (H.zeros_bomb(8 * H.GIB, "xz"), "refused: the archive expands to"),
    "a 4 GiB long name": (H.long_name_bomb(4 * H.GIB), "refused: a member's tar headers"),
    "a 4 GiB pax record": (H.pax_bomb(4 * H.GIB), "refused: a member's tar headers"),
    "a 4 GiB long name, xz": (H.long_name_bomb(4 * H.GIB, "xz"), "refused: a member's tar"),
    "8 GiB skipped": (H.skipped_member_bomb(8 * H.GIB), "refused: a member's tar headers"),
    "a million entries": (
        H.many_entries(1_000_000),
        f"refused: the archive has more than {MAX_MEMBERS} members",
    ),
}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_a_decompression_bomb_is_refused_within_bounded_memory(area: Area, bomb: str) -> None:
    data, outcome = BOMBS[bomb]
    assert len(data) < 16 * H.MIB  # what is uploaded is small...
    assert _extract_boxed(area.archive(data), area.dest).startswith(outcome)
    area.assert_nothing_escaped()
    # ... and what was written before the refusal is small too.
    written = sum(p.stat().st_size for p in _entries(area.dest) if p.is_file())
    assert written <= H.MIB


def test_zeros_after_the_end_of_a_tar_are_not_inflated(area: Area) -> None:
    """8 GiB of compressed zeros after the end blocks: the small tar is extracted and the
    rest is never read (it would take far longer than this test's timeout)."""
    outcome = _extract_boxed(area.archive(H.trailing_zeros(8 * H.GIB)), area.dest)
    assert outcome == "extracted 1"
    assert (area.dest / "small").read_bytes() == b"small\n"


def test_files_that_add_up_past_the_bound_are_refused_by_what_they_declare(area: Area) -> None:
    chunk = b"\0" * (3 * H.MIB)
    archive = area.archive(H.tar(*[_member(f"f{i}", chunk) for i in range(10)]))
    with pytest.raises(ArchiveError, match="expands to more than 8 MiB"):
        extract(archive, area.dest, max_bytes=8 * H.MIB)
    written = sum(p.stat().st_size for p in _entries(area.dest) if p.is_file())
    assert written <= 8 * H.MIB
    area.assert_nothing_escaped()


def test_the_header_guard_lets_real_long_names_and_pax_records_through(area: Area) -> None:
    """Long names and pax records of a real (if unusual) size still extract."""
    name = "/".join(["d" * 200] * 15) + "/file"  # 3,000+ characters
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = 5
        info.pax_headers = {"comment": "c" * 100_000}
        tar.addfile(info, io.BytesIO(b"hello"))
    extract(area.archive(buf.getvalue()), area.dest)
    assert (area.dest / name).read_bytes() == b"hello"


# --- any mix of members ---------------------------------------------------------------------

_PARTS = st.sampled_from(["a", "b", "..", ".", "", "outside", "keep"])


@st.composite
def _names(draw: st.DrawFn) -> str:
    name = "/".join(draw(st.lists(_PARTS, min_size=1, max_size=5)))
    return ("/" + name) if draw(st.booleans()) and draw(st.booleans()) else name


@st.composite
def _members(draw: st.DrawFn) -> bytes:
    name = draw(_names())
    kind = draw(st.sampled_from(["file", "dir", "symlink", "hardlink"]))
    if kind == "file":
        return _member(name, draw(st.binary(max_size=16)))
    if kind == "dir":
        return H.header(name.rstrip("/") + "/", kind=tarfile.DIRTYPE)
    target = draw(_names() | st.just("../outside/keep") | st.just("../outside"))
    return _link(name, target, tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(members=st.lists(_members(), min_size=1, max_size=8))
def test_any_mix_of_members_extracts_inside_or_is_refused(members: list[bytes]) -> None:
    """Whatever the members, extraction writes only inside the destination, leaves no
    link that leads out, and fails, if at all, with an ArchiveError."""
    root = Path(tempfile.mkdtemp(prefix="berth-archive-"))
    try:
        area = _make_area(root)
        with contextlib.suppress(ArchiveError):
            extract(area.archive(b"".join([*members, H.end()])), area.dest)
        area.assert_nothing_escaped()
    finally:
        shutil.rmtree(root)


def test_the_box_really_caps_memory() -> None:
    """The child's limit is real: reading past it fails (so a bomb cannot pass silently
    by the box being too roomy)."""
    code = (
        "import resource; "
        f"resource.setrlimit(resource.RLIMIT_AS, ({BOX_MEMORY}, {BOX_MEMORY})); "
        f"b = bytearray({BOX_MEMORY})"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0 and "MemoryError" in done.stderr
