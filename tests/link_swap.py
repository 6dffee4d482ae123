"""The link-swap attack on archiving (CVE-2018-15664 in `docker cp`), shared by the unit
and end-to-end tests: a small static C program (``tests/link_swapper.c``) that swaps
files and directories with symbolic links to host paths, atomically and in a loop, while
the agent archives the directory they are in; and the checks of what came out.

The program is compiled when a test needs it (``gcc -static``; tests/run.sh installs gcc
and libc6-dev), so that it runs both on the host and in the busybox test image.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

SOURCE = Path(__file__).with_name("link_swapper.c")


def build_swapper(dest_dir: Path) -> Path:
    """Compile the swapper into ``dest_dir``; fails the test (never skips under CI)
    when there is no compiler."""
    if shutil.which("gcc") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("gcc is missing; tests/run.sh installs gcc and libc6-dev")
        pytest.skip("gcc is missing (tests/run.sh installs gcc and libc6-dev)")
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / "link_swapper"
    subprocess.run(
        ["gcc", "-static", "-O2", "-o", str(out), str(SOURCE)], check=True, capture_output=True
    )
    return out


@dataclass(frozen=True)
class HostSecrets:
    """What must never come out of an archive: a root-only file and directory on the
    host, and an agent's state file with its node token."""

    #: a 0600 file whose every line is ``marker``
    file: Path
    #: a 0700 directory with a copy of ``file`` in it
    directory: Path
    marker: bytes
    #: the agent's node.json and the token in it
    node_file: Path
    node_token: bytes

    def specs(self, prefix: str, files: int = 1, trees: int = 1) -> list[str]:
        """The swapper's NAME:SIZE:TARGET arguments: ``files`` decoys each for the
        secret file and for node.json, and ``trees`` directories swapped with a link to
        the secret directory. A decoy is as long as or shorter than what its link points
        to, so a reader that follows the link gets the target's first bytes (the whole
        of node.json) rather than an error."""
        node_size = self.node_file.stat().st_size
        out = []
        for i in range(files):
            out += [
                f"{prefix}secret{i}:64:{self.file}",
                f"{prefix}node{i}:{node_size}:{self.node_file}",
            ]
        out += [f"{prefix}tree{i}:dir:{self.directory}" for i in range(trees)]
        return out

    def leaks(self, archive: Path) -> list[str]:
        """The members of a tar.gz that hold host content: their names."""
        found = []
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
                if self.marker in data or self.node_token in data:
                    found.append(member.name)
        return found


def make_secrets(root: Path, node_file: Path, node_token: str, tag: str) -> HostSecrets:
    """A root-only secret file and directory below ``root`` (made 0700)."""
    marker = f"BERTH-HOST-SECRET-{tag}".encode()
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    secret = root / "secret.txt"
    secret.write_bytes((marker + b"\n") * 256)
    os.chmod(secret, 0o600)
    directory = root / "secret-dir"
    directory.mkdir()
    os.chmod(directory, 0o700)
    (directory / "inner").write_bytes(secret.read_bytes())
    return HostSecrets(secret, directory, marker, node_file, node_token.encode())


def tar_gz_of(files: dict[str, Path]) -> bytes:
    """A tar.gz of host files (modes kept), as a job's input archive."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, path in files.items():
            tar.add(path, arcname=name)
    return buf.getvalue()
