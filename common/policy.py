"""Node policy: what a job may ask of a node beyond the default sandbox, and who grants it.

A job needs a permission for privileged mode (``privileged``), the host's network
(``host-network``) and every host path it mounts (``mount:<source>``). An agent grants
permissions with ``--allow``; ``mount:/srv/data`` permits a mount whose source is
/srv/data or lies under it. Nothing is allowed by default.

Pure and shared by both sides, so the rule is written once: the scheduler's placement
skips nodes whose allow-list does not cover a job (comparing paths as written), and the
agent refuses an assignment it does not allow (comparing paths with links resolved, see
:mod:`agent.policy`).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from common.models import JobSpec

#: run the container privileged (every capability, the host's devices)
PRIVILEGED = "privileged"
#: run the container in the host's network namespace
HOST_NETWORK = "host-network"
#: ``mount:<path>``: mount host paths at or under <path>
MOUNT = "mount:"
#: the words of the allow-list, for help texts and errors
KINDS = (PRIVILEGED, HOST_NETWORK, MOUNT + "/PATH")

_DESCRIBED = {PRIVILEGED: "privileged mode", HOST_NETWORK: "host networking"}


def normalise(item: str) -> str:
    """One allow-list entry in its canonical form; ValueError naming what is wrong.

    Mount paths are made absolute-normal (``/srv//data/`` -> ``/srv/data``) but not
    resolved: the agent resolves links on its own host when it checks a job.
    """
    item = item.strip()
    if item in (PRIVILEGED, HOST_NETWORK):
        return item
    if item.startswith(MOUNT):
        path = item[len(MOUNT) :]
        if not path.startswith("/"):
            raise ValueError(f"{item!r}: the path of mount: must be absolute (mount:/srv/data)")
        if ".." in path.split("/"):
            raise ValueError(f"{item!r}: the path of mount: may not contain '..'")
        return MOUNT + clean_path(path)
    raise ValueError(f"{item!r} is not one of {', '.join(KINDS)}")


def clean_path(path: str) -> str:
    """An absolute path without ``.``, ``//`` or a trailing slash (links not resolved)."""
    cleaned = posixpath.normpath(path)
    # POSIX lets normpath keep a leading "//"; it names the same directory as "/".
    return "/" + cleaned.lstrip("/")


def needs(spec: JobSpec) -> tuple[str, ...]:
    """The permissions a job needs from its node, in a stable order (empty for most)."""
    out: list[str] = []
    if spec.privileged:
        out.append(PRIVILEGED)
    if spec.network == "host":
        out.append(HOST_NETWORK)
    for mount in spec.mounts:
        need = MOUNT + clean_path(mount.source)
        if need not in out:
            out.append(need)
    return tuple(out)


def under(path: str, prefix: str) -> bool:
    """``path`` is ``prefix`` or lies below it (both absolute and normalised)."""
    return path == prefix or prefix == "/" or path.startswith(prefix + "/")


def permits(allowed: Iterable[str], need: str) -> bool:
    """Whether an allow-list grants one need."""
    if need.startswith(MOUNT):
        path = need[len(MOUNT) :]
        return any(a.startswith(MOUNT) and under(path, a[len(MOUNT) :]) for a in allowed)
    return need in allowed


def permits_all(allowed: Sequence[str], wanted: Sequence[str]) -> bool:
    """Whether an allow-list grants every need; the fit check's policy test."""
    return all(permits(allowed, need) for need in wanted)


def describe(need: str) -> str:
    """``privileged mode``, ``host networking``, ``mounting /srv/data from the host``."""
    if need.startswith(MOUNT):
        return f"mounting {need[len(MOUNT) :]} from the host"
    return _DESCRIBED.get(need, need)


def refusal(need: str) -> str:
    """What an agent says when it refuses a job for one need."""
    hint = f"--allow {need}"
    if need.startswith(MOUNT):
        hint += " or a directory above it"
    return (
        f"refused by node policy: {describe(need)} is not allowed on this node "
        f"(start the agent with {hint})"
    )


def waiting_reason(wanted: Sequence[str]) -> str:
    """Why a job waits when no node that takes jobs allows everything it needs."""
    what = ", ".join(describe(n) for n in wanted)
    flags = " ".join(f"--allow {n}" for n in wanted)
    return f"not_allowed: no available node allows {what} (start an agent with {flags})"
