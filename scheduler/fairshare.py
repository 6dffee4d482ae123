"""Fair share: each owner's recent use of the cluster, in CPU-seconds decayed with a
half-life, so that within a priority the queue serves first the owners who used least
(Slurm's fair-share factor, reduced to its core).

Pure bookkeeping over plain numbers; the caller passes the time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

#: the default half-life of usage (--fair-share-half-life)
HALF_LIFE_S = 3600.0
#: usage below this is dropped (an owner idle for ~30 half-lives)
NEGLIGIBLE = 1e-6
#: CPU-seconds charged when a job starts, so one pass does not give every free slot to
#: the same owner before any of its jobs has run a second
START_CHARGE_S = 1.0


class FairShare:
    def __init__(self, half_life_s: float = HALF_LIFE_S, now: float = 0.0) -> None:
        self.half_life_s = half_life_s
        #: owner -> CPU-seconds, decayed up to ``at``
        self.usage: dict[str, float] = {}
        self.at = now

    def of(self, owner: str) -> float:
        return self.usage.get(owner, 0.0)

    def decay_to(self, now: float) -> None:
        """Age every owner's usage to ``now``."""
        elapsed = now - self.at
        if elapsed <= 0:
            return
        self.at = now
        factor = math.exp(-math.log(2) * elapsed / self.half_life_s)
        dropped = []
        for owner, used in self.usage.items():
            left = used * factor
            if left < NEGLIGIBLE:
                dropped.append(owner)
            else:
                self.usage[owner] = left
        for owner in dropped:
            del self.usage[owner]

    def charge(self, owner: str, cpu_seconds: float) -> None:
        if cpu_seconds > 0:
            self.usage[owner] = self.usage.get(owner, 0.0) + cpu_seconds

    def tick(self, now: float, running: Iterable[tuple[str, float]]) -> None:
        """Age the usage to ``now`` and charge each running job (owner, cpus) for the
        time since the last tick."""
        elapsed = now - self.at
        self.decay_to(now)
        if elapsed <= 0:
            return
        for owner, cpu in running:
            self.charge(owner, cpu * elapsed)

    def load(self, rows: Mapping[str, float], at: float, now: float) -> None:
        """Usage as stored at ``at``, aged to ``now`` (the time the scheduler was down
        counts as idle)."""
        self.usage = {owner: used for owner, used in rows.items() if used >= NEGLIGIBLE}
        self.at = at
        self.decay_to(now)
