"""The agent's side of node policy: refuse an assignment its allow-list does not permit.

The scheduler already skips nodes whose allow-list does not cover a job, comparing
paths as written; the agent decides for good on its own host, after resolving links
and ``..`` in both the mount's source and the allowed directories, so a link under an
allowed directory cannot lead a mount out of it. A refused job fails with the reason
(``refused by node policy: ...``) before anything is created for it.

A read-write mount of a directory that holds another allowed directory is refused: the
job could replace that directory with a link, and the allow-list, resolved at each
check, would then permit where the link leads. What a mount binds is pinned when its
container is made (:mod:`agent.hostmount`), so a path swapped after this check shows
nothing new.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from common import policy
from common.models import JobSpec

log = logging.getLogger(__name__)


def host_path(path: str) -> str:
    """A host path with every link and ``..`` resolved: what a mount really shows."""
    return os.path.realpath(path)


class NodePolicy:
    """What this node permits beyond the sandbox; nothing unless told (``--allow``)."""

    def __init__(self, allow: Iterable[str] = ()) -> None:
        #: canonical entries, as configured (sent to the scheduler at registration)
        self.allow: tuple[str, ...] = tuple(dict.fromkeys(policy.normalise(a) for a in allow))

    def mount_dirs(self) -> list[str]:
        """The allowed mount directories with their links resolved (now)."""
        return [
            host_path(item[len(policy.MOUNT) :])
            for item in self.allow
            if item.startswith(policy.MOUNT)
        ]

    def _resolved(self) -> list[str]:
        # Resolved at each check: an allowed directory may be a link that changes.
        out = []
        for item in self.allow:
            if item.startswith(policy.MOUNT):
                out.append(policy.MOUNT + host_path(item[len(policy.MOUNT) :]))
            else:
                out.append(item)
        return out

    def refusal(self, spec: JobSpec) -> str | None:
        """Why this node refuses ``spec``, or None when it permits everything it needs."""
        wanted = policy.needs(spec)
        if not wanted:
            return None
        allowed = self._resolved()
        nested = self._nested_refusal(spec)
        if nested is not None:
            return nested
        for need in wanted:
            if need.startswith(policy.MOUNT):
                real = policy.MOUNT + host_path(need[len(policy.MOUNT) :])
                if not policy.permits(allowed, real):
                    return policy.refusal(need)
            elif not policy.permits(allowed, need):
                return policy.refusal(need)
        return None

    def _nested_refusal(self, spec: JobSpec) -> str | None:
        """Why a read-write mount may not be made: it holds another allowed directory."""
        written = [
            item[len(policy.MOUNT) :] for item in self.allow if item.startswith(policy.MOUNT)
        ]
        for mount in spec.mounts:
            if mount.read_only:
                continue
            source = policy.clean_path(mount.source)
            real = host_path(source)
            for allowed_dir in (*written, *self.mount_dirs()):
                for outer in (source, real):
                    if allowed_dir != outer and policy.under(allowed_dir, outer):
                        return (
                            f"refused by node policy: a read-write mount of {mount.source} "
                            f"would hold the allowed directory {allowed_dir}, which the job "
                            "could replace with a link (mount it read-only)"
                        )
        return None
