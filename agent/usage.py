"""An attempt's resource use: current and peak values, and when to report them.

The runner samples its execution (``docker stats``, or psutil over a process group)
every ``USAGE_SAMPLE_INTERVAL_S`` and sends a progress-less report carrying the
:class:`~common.models.Usage` at most every ``USAGE_REPORT_INTERVAL_S``; the first
sample goes out at once.
"""

from __future__ import annotations

from agent.executors.base import UsageSample
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

    def add(self, sample: UsageSample) -> Usage:
        cpu = min(_MAX_CPU_PERCENT, max(0.0, sample.cpu_percent))
        mem = min(_MAX_MEMORY_MB, max(0.0, sample.memory_mb))
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
