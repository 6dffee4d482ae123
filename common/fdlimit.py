"""A daemon's open-files limit: raised to what the system lets it have, and counted.

Every connection, every SQLite or PostgreSQL connection and every blob being read or
written takes a file descriptor. A scheduler serving thousands of agents needs far more
than the common default of 1,024, and the hard limit (which only root, systemd's
``LimitNOFILE`` or the container runtime's ``ulimits`` can raise) is usually much
higher than the soft one a process starts with.
"""

from __future__ import annotations

import logging
import os
import resource

log = logging.getLogger(__name__)

#: the soft limit asked for where the hard one is unlimited (Linux's default nr_open)
UNLIMITED_CAP = 1 << 20


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit, log the result and return the
    soft limit now in force. Never lowers it; a refusal is logged, not raised.

    Where the soft limit is already the hard one (systemd's ``LimitNOFILE=N`` sets
    both) nothing is changed, so a seccomp filter that denies setrlimit is never hit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_CAP if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        log.info("open files limit: %s (the hard limit)", _shown(soft))
        return _finite(soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as e:
        log.warning(
            "open files limit: %d, could not raise it to the hard limit %s: %s",
            soft,
            _shown(hard),
            e,
        )
        return soft
    now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    log.info("open files limit: %s (raised from %d to the hard limit)", _shown(now), soft)
    return _finite(now)


def open_fd_count() -> int | None:
    """How many descriptors this process has open, or None where that cannot be told
    (no /proc/self/fd or /dev/fd). It costs about a microsecond per open descriptor."""
    for path in ("/proc/self/fd", "/dev/fd"):
        try:
            # less the descriptor listdir itself holds open while it reads
            return len(os.listdir(path)) - 1
        except OSError:
            continue
    return None


def _shown(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


def _finite(limit: int) -> int:
    return UNLIMITED_CAP if limit == resource.RLIM_INFINITY else limit
