"""Reading a tree a job may change meanwhile (common.dirwalk, common.archives), on real
files: an entry swapped for a link, another file or a fifo between the listing and the
open is refused by name and never read; a directory replaced by a link is never
entered; links are kept as text; and the real link-swap helper racing a loop of
archives gets no host content into any of them."""

from __future__ import annotations

import os
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.archives import ArchiveError, create_tar_gz, has_content
from common.dirwalk import TreeRefused, open_entry, open_root, walk
from tests.link_swap import build_swapper

SECRET = b"HOST-SECRET\n" * 64


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A directory outside the tree, with a secret file in it."""
    d = tmp_path / "host"
    d.mkdir(mode=0o700)
    (d / "secret").write_bytes(SECRET)
    os.chmod(d / "secret", 0o600)
    return d


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """The tree a job controls, and a handle on it."""
    root = tmp_path / "tree"
    root.mkdir()
    fd = open_root(root)
    try:
        yield root, fd
    finally:
        os.close(fd)


def _swap_in_link(path: Path, target: Path) -> None:
    """Atomically replace ``path`` by a link to ``target`` (rename over it)."""
    tmp = path.with_name(path.name + ".new")
    tmp.symlink_to(target)
    os.rename(tmp, path)


def test_a_file_swapped_for_a_link_after_the_listing_is_refused_unread(
    tree: tuple[Path, int], host: Path
) -> None:
    root, fd = tree
    (root / "state").write_bytes(b"x" * 64)
    listed = os.stat("state", dir_fd=fd, follow_symlinks=False)
    _swap_in_link(root / "state", host / "secret")
    with pytest.raises(TreeRefused, match=r"state changed while .* now a symbolic link\)"):
        open_entry(fd, "state", listed, "state")


def test_a_file_swapped_for_another_file_after_the_listing_is_refused(
    tree: tuple[Path, int], host: Path
) -> None:
    root, fd = tree
    (root / "state").write_bytes(b"x" * 64)
    listed = os.stat("state", dir_fd=fd, follow_symlinks=False)
    # A hard link to a file elsewhere on the same filesystem takes the name.
    os.link(host / "secret", root / "other")
    os.rename(root / "other", root / "state")
    with pytest.raises(TreeRefused, match=r"state changed while .* now another file\)"):
        open_entry(fd, "state", listed, "state")


def test_a_fifo_swapped_in_for_a_file_is_refused_without_blocking(
    tree: tuple[Path, int],
) -> None:
    root, fd = tree
    (root / "state").write_bytes(b"x")
    listed = os.stat("state", dir_fd=fd, follow_symlinks=False)
    os.mkfifo(root / "fifo")
    os.rename(root / "fifo", root / "state")
    outcome: list[BaseException | int | None] = []

    def attempt() -> None:
        try:
            outcome.append(open_entry(fd, "state", listed, "state"))
        except BaseException as e:
            outcome.append(e)

    # A blocking open of a fifo with no writer would never return: the thread is a
    # guard so that such a regression fails instead of hanging the suite.
    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(30)
    assert outcome, "opening the fifo blocked"
    assert isinstance(outcome[0], TreeRefused)


def test_a_directory_replaced_by_a_link_is_never_entered(
    tree: tuple[Path, int], host: Path
) -> None:
    root, fd = tree
    (root / "d").mkdir()
    (root / "d" / "inner").write_bytes(b"mine")
    listed = os.stat("d", dir_fd=fd, follow_symlinks=False)
    os.rename(root / "d", root / "d.old")
    (root / "d").symlink_to(host)
    with pytest.raises(TreeRefused, match="d changed while it was archived"):
        open_entry(fd, "d", listed, "d")


def test_an_entry_removed_after_the_listing_is_left_out(tree: tuple[Path, int]) -> None:
    root, fd = tree
    (root / "gone").write_bytes(b"x")
    listed = os.stat("gone", dir_fd=fd, follow_symlinks=False)
    (root / "gone").unlink()
    assert open_entry(fd, "gone", listed, "gone") is None


def test_links_are_given_as_text_and_fifos_left_out(tree: tuple[Path, int], host: Path) -> None:
    root, fd = tree
    (root / "a").mkdir()
    (root / "a" / "f").write_bytes(b"data")
    (root / "a" / "out").symlink_to(host / "secret")
    (root / "a" / "up").symlink_to(host)
    os.mkfifo(root / "pipe")
    seen = {}
    for e in walk(fd):
        content = os.pread(e.fd, 1 << 16, 0) if e.kind == "file" else b""
        seen[e.name] = (e.kind, e.link, content)
    assert seen == {
        "a": ("dir", "", b""),
        "a/f": ("file", "", b"data"),
        "a/out": ("symlink", str(host / "secret"), b""),
        "a/up": ("symlink", str(host), b""),
    }


def test_a_tree_deeper_than_the_bound_is_refused(tree: tuple[Path, int]) -> None:
    root, fd = tree
    (root / "1" / "2" / "3" / "4").mkdir(parents=True)
    assert [e.name for e in walk(fd, max_depth=4)][-1] == "1/2/3/4"
    with pytest.raises(TreeRefused, match="1/2/3/4 is more than 3 directories deep"):
        list(walk(fd, max_depth=3))


def test_a_root_that_is_a_link_is_neither_read_nor_archived(tmp_path: Path, host: Path) -> None:
    (tmp_path / "out").symlink_to(host)
    assert not has_content(tmp_path / "out")
    with pytest.raises(ArchiveError, match="not a directory"):
        create_tar_gz(tmp_path / "out", tmp_path / "a.tgz")
    assert not (tmp_path / "a.tgz").exists()


def test_archives_raced_by_the_link_swap_helper_never_hold_host_content(
    tmp_path: Path, host: Path
) -> None:
    """The real attack against create_tar_gz: a static helper swaps 8 files and a
    directory with links to host paths, atomically and in a loop, while 150 archives
    are made. Before the walk used handles, 8 to 19 of the 150 held the secret (three
    runs); now some are refused, naming the entry that changed, and none leaks."""
    helper = build_swapper(tmp_path / "build")
    root = tmp_path / "tree"
    root.mkdir()
    specs = [f"f{i}:64:{host / 'secret'}" for i in range(8)] + [f"d:dir:{host}"]
    swapper = subprocess.Popen([str(helper), str(root), "600", *specs], stderr=subprocess.PIPE)
    try:
        assert swapper.stderr is not None
        assert b"swapping" in swapper.stderr.readline()  # it made every name
        made = refused = 0
        leaked: list[str] = []
        for i in range(150):
            archive = tmp_path / f"a{i}.tgz"
            try:
                create_tar_gz(root, archive)
            except ArchiveError as e:
                assert "changed while it was archived" in e.message
                refused += 1
                continue
            made += 1
            with tarfile.open(archive) as tar:
                for m in tar:
                    f = tar.extractfile(m) if m.isreg() else None
                    if f is not None and b"HOST-SECRET" in f.read():
                        leaked.append(f"{i}:{m.name}")
            archive.unlink()
    finally:
        swapper.kill()
        swapper.wait()
    print(f"{made} archives made, {refused} refused, leaked: {leaked}")
    assert swapper.returncode is not None
    assert leaked == []
    assert made + refused == 150
