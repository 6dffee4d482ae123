"""An attempt's resource use: current and peak values, the samples themselves, and when
to report them.

The runner samples its execution (``docker stats``, or psutil over a process group)
every ``USAGE_SAMPLE_INTERVAL_S`` and sends a progress-less report carrying the
:class:`~common.models.Usage` and the samples taken since the last such report at most
every ``USAGE_REPORT_INTERVAL_S``; the first sample goes out at once. Samples a report
could not deliver go with the next one; past ``MAX_SAMPLES_PER_REPORT`` waiting, the
oldest are dropped (the scheduler was away that long).
"""

from __future__ import annotations

import time
from collections import deque

from agent.executors.base import UsageSample
from common.history_models import MAX_SAMPLES_PER_REPORT, UsagePoint
from common.models import Usage

#: bounds of the Usage model; a wild sample is clamped, not refused
_MAX_CPU_PERCENT = 1e6
_MAX_MEMORY_MB = 1e9


class UsageTracker:
    """Folds samples into a Usage with peaks, and says when a report is due."""

    def __init__(self, report_interval_s: float) -> None:
        self.report_interval_s = report_interval_s
        self.current: Usage | None = None
        self._sent_at: float | None = None
        #: samples not yet delivered, oldest first
        self._unsent: deque[UsagePoint] = deque(maxlen=MAX_SAMPLES_PER_REPORT)

    def add(self, sample: UsageSample, at: float | None = None) -> Usage:
        """Fold in a sample taken at ``at`` (Unix seconds; now when None)."""
        cpu = min(_MAX_CPU_PERCENT, max(0.0, sample.cpu_percent))
        mem = min(_MAX_MEMORY_MB, max(0.0, sample.memory_mb))
        t = round(time.time() if at is None else at, 3)
        self._unsent.append(UsagePoint(t, round(cpu, 2), round(mem, 3)))
        before = self.current
        self.current = Usage(
            cpu_percent=round(cpu, 2),
            memory_mb=round(mem, 3),
            peak_cpu_percent=round(max(cpu, before.peak_cpu_percent if before else 0.0), 2),
            peak_memory_mb=round(max(mem, before.peak_memory_mb if before else 0.0), 3),
        )
        return self.current

    def due(self, now: float) -> bool:
        """A report should go out now (something new, and the interval has passed)."""
        if self.current is None:
            return False
        return self._sent_at is None or now - self._sent_at >= self.report_interval_s

    def sent(self, now: float) -> None:
        self._sent_at = now

    def take_samples(self) -> list[UsagePoint]:
        """The samples not delivered yet, to send now (``unsent`` if that fails)."""
        out = list(self._unsent)
        self._unsent.clear()
        return out

    def unsent(self, samples: list[UsagePoint]) -> None:
        """Samples a report could not deliver: they go with the next one, before any
        taken since (the newest are kept when there are too many)."""
        newer = list(self._unsent)
        self._unsent.clear()
        self._unsent.extend(samples)
        self._unsent.extend(newer)
