"""Who may read which blob, and how many bytes of blobs each token keeps stored.

A blob is named by its content, so knowing a digest proves nothing: a digest leaks
through job documents, logs and events. A blob is therefore read only by

- admin and read tokens, and submit tokens that see every job (``all_jobs``): they
  see every job's inputs and outputs anyway;
- the names that hold it (:class:`BlobHolds`): the tokens that uploaded it, and the
  owners of jobs whose outputs or checkpoint it is. Naming a blob as a job's input
  needs a hold already, so an input's owner holds it;
- the node that runs an attempt using it (its input archive or the checkpoint it
  starts from), while that attempt is on the node.

Anyone else is answered as if the blob did not exist.

A hold only ever gives back content its name once had, so it is kept until the blob is
swept, not dropped with the job that gave it. Each upload's size is charged to the
uploader's name once (storing the same content again costs nothing); what a name is
charged for is its stored bytes, checked against the per-token quota as an upload
starts (:meth:`BlobHolds.admit_upload`), with the uploads it has in flight counted at
their declared size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from common.errors import PayloadTooLarge
from common.states import ON_NODE
from scheduler import access
from scheduler.store.base import BlobHold, Changes
from scheduler.tokens import TokenRow

if TYPE_CHECKING:
    from scheduler.state import State

#: the roles whose uploads count against the per-token quota (admin tokens are trusted
#: with the disk; nodes upload their jobs' outputs and checkpoints)
QUOTA_ROLES = frozenset({"submit"})


class BlobHolds:
    """Holds on blobs, in memory; each change is recorded in the ``changes`` given."""

    def __init__(self, rows: Iterable[BlobHold] = ()) -> None:
        #: digest -> name -> bytes charged to that name for it
        self._holds: dict[str, dict[str, int]] = {}
        #: name -> bytes charged to it, over every blob it holds
        self._stored: dict[str, int] = {}
        #: name -> bytes declared by its uploads in flight
        self._pending: dict[str, int] = {}
        for row in rows:
            self._set(row.digest, row.name, row.charged)

    def holds(self, digest: str, name: str) -> bool:
        return name in self._holds.get(digest, ())

    def stored_bytes(self, name: str) -> int:
        return self._stored.get(name, 0)

    def hold(self, digest: str, name: str, charged: int, changes: Changes) -> None:
        """Let ``name`` read ``digest``; ``charged``: the blob's size when ``name``
        uploaded it (charged once, however often it is uploaded), else 0."""
        had = self._holds.get(digest, {}).get(name)
        if had is not None and had >= charged:
            return
        self._set(digest, name, charged)
        changes.blob_holds[digest] = self._rows(digest)

    def digests(self) -> list[str]:
        """Every digest somebody holds."""
        return list(self._holds)

    def drop(self, digest: str, changes: Changes) -> None:
        """The blob was deleted: nobody holds it any more."""
        names = self._holds.pop(digest, None)
        if names is None:
            return
        for name, charged in names.items():
            left = self._stored.get(name, 0) - charged
            if left > 0:
                self._stored[name] = left
            else:
                self._stored.pop(name, None)
        changes.blob_holds[digest] = ()

    @contextmanager
    def admit_upload(self, who: TokenRow, declared: int, quota: int) -> Iterator[None]:
        """Refuse (413) an upload of up to ``declared`` bytes that could take ``who``
        past ``quota`` (0: none), counting its other uploads in flight; while it runs,
        count it among them."""
        if who.role not in QUOTA_ROLES or quota <= 0:
            yield
            return
        stored = self.stored_bytes(who.name)
        pending = self._pending.get(who.name, 0)
        if stored + pending + declared > quota:
            raise PayloadTooLarge(
                f"token {who.name!r} keeps {_mib(stored)} MiB of blobs stored "
                f"({_mib(pending)} MiB more on their way); {_mib(declared)} MiB more would "
                f"pass its quota of {_mib(quota)} MiB (--max-blob-bytes-per-token)",
                {
                    "field": "$",
                    "quota_bytes": quota,
                    "stored_bytes": stored,
                    "pending_bytes": pending,
                    "declared_bytes": declared,
                },
            )
        self._pending[who.name] = pending + declared
        try:
            yield
        finally:
            left = self._pending.get(who.name, 0) - declared
            if left > 0:
                self._pending[who.name] = left
            else:
                self._pending.pop(who.name, None)

    def _set(self, digest: str, name: str, charged: int) -> None:
        names = self._holds.setdefault(digest, {})
        before = names.get(name, 0)
        names[name] = charged
        self._stored[name] = self._stored.get(name, 0) - before + charged
        if not self._stored[name]:
            del self._stored[name]

    def _rows(self, digest: str) -> tuple[BlobHold, ...]:
        return tuple(BlobHold(digest, n, c) for n, c in self._holds.get(digest, {}).items())


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f}"


def sees_every_blob(who: TokenRow) -> bool:
    """Those who see every job see every blob too (they would see the digests and could
    fetch the outputs of any job)."""
    return access.sees_all_jobs(who)


def node_uses(state: State, node_id: str | None, digest: str) -> bool:
    """Whether an attempt on the node starts from the blob: its input archive or the
    checkpoint it restores."""
    node = state.nodes.get(node_id) if node_id is not None else None
    if node is None:
        return False
    for job_id in node.running_jobs:
        job = state.jobs.get(job_id)
        if job is None or job.node_id != node_id or job.state not in ON_NODE:
            continue
        if digest == job.spec.inputs or digest == job.checkpoint:
            return True
    return False


def may_read(state: State, who: TokenRow, digest: str) -> bool:
    """The one rule for reading a blob (see the module's docstring)."""
    if sees_every_blob(who):
        return True
    if who.role == "node":
        return node_uses(state, who.node_id, digest)
    return who.role == "submit" and state.blob_holds.holds(digest, who.name)
