"""The agent's local persistence: its node identity and the results not yet delivered.

Layout of the state dir::

    node.json                     {"name", "node_id", "node_token"}
    reports/JOB.ATTEMPT.json      a final report the scheduler has not acknowledged

Every file is written atomically (temporary file, fsync, rename), so a crash leaves
either the old or the new content.

Only the agent's user may read any of it: the directory is 0700 and every file 0600
(also a file an older agent left more open). Attempts' workspaces live below it, but
only their ``workspace`` and ``checkpoint`` subdirectories are mounted into containers,
and the agent archives those without following links (:mod:`common.dirwalk`), so no
job can reach node.json and its node token.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from common import codec
from common.errors import BerthError
from common.models import Report

log = logging.getLogger(__name__)

_REPORT_FILE = re.compile(r"^([A-Za-z0-9_.\-]+)\.([0-9]+)\.json$")


@dataclass
class NodeIdentity:
    name: str
    node_id: str
    node_token: str


class AgentState:
    """Reads and writes the files of one agent's state dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.reports_dir = root / "reports"

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.reports_dir.mkdir(exist_ok=True)
        os.chmod(self.root, 0o700)
        os.chmod(self.reports_dir, 0o700)
        identity = self.root / "node.json"
        if identity.is_file() and not identity.is_symlink():
            os.chmod(identity, 0o600)

    # --- identity ----------------------------------------------------------------------

    def load_identity(self) -> NodeIdentity | None:
        path = self.root / "node.json"
        try:
            doc = codec.loads(path.read_bytes())
            return NodeIdentity(str(doc["name"]), str(doc["node_id"]), str(doc["node_token"]))
        except FileNotFoundError:
            return None
        except (BerthError, KeyError, TypeError) as e:
            log.warning("ignoring unreadable %s: %s", path, e)
            return None

    def save_identity(self, ident: NodeIdentity) -> None:
        doc = {"name": ident.name, "node_id": ident.node_id, "node_token": ident.node_token}
        _write_atomic(self.root / "node.json", codec.dumps(doc))

    # --- pending final reports ---------------------------------------------------------

    def save_report(self, job_id: str, report: Report) -> None:
        _write_atomic(self._report_path(job_id, report.attempt), codec.encode(report))

    def drop_report(self, job_id: str, attempt: int) -> None:
        self._report_path(job_id, attempt).unlink(missing_ok=True)

    def pending_reports(self) -> list[tuple[str, Report]]:
        """Every saved final report, as (job id, report)."""
        out: list[tuple[str, Report]] = []
        if not self.reports_dir.is_dir():
            return out
        for path in sorted(self.reports_dir.iterdir()):
            m = _REPORT_FILE.match(path.name)
            if m is None:
                continue
            try:
                out.append((m.group(1), codec.decode(path.read_bytes(), Report)))
            except (OSError, BerthError) as e:
                log.warning("dropping unreadable pending report %s: %s", path, e)
                path.unlink(missing_ok=True)
        return out

    def _report_path(self, job_id: str, attempt: int) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", job_id):
            raise ValueError(f"unexpected job id {job_id!r}")
        return self.reports_dir / f"{job_id}.{attempt}.json"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        # The mode above applies only to a new file: a leftover keeps its own.
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
