"""Where each queued job stands with the jobs it depends on, kept up to date as those
end, so that a placement pass never walks a waiting job's ``depends_on`` list.

For every tracked job: how many of its distinct dependencies have not completed, and a
reverse index from each such dependency to the jobs waiting on it. A dependency that
completes takes one off each of its dependents (completed is for good: no transition
leaves it). One that ends any other way marks its dependents ``doomed``: the pass
re-checks those, once, against the states of the moment (the dependency may have been
retried meanwhile) and fails those whose dependency did fail.

Invariant: a job that was ever listed appears once in the list of each of its distinct
dependencies that has neither completed nor been deleted; so when a retried job is
tracked again it is not listed twice. Pure bookkeeping: no I/O, no clock.

A dependency may ask for another end than completion (Slurm's afterany, afternotok):
``ended`` is met by any end, ``failed`` by any end but completion, which dooms it. Such
an entry is met when its job ends the way it asks, and stays met for the dependent (a
later retry of the dependency does not take it back); the dependent's entry leaves the
dependency's list then, so that ending again does not count twice. Jobs with only plain
ids keep the cheaper bookkeeping above.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from common.models import Dependency, DependencyEnd
from common.states import TERMINAL, JobState
from scheduler import queue

#: a waiting job's reason names at most this many of the jobs it waits on
NAMED_IN_REASON = 3
#: past the first unmet dependency, at most this many entries are looked at for the
#: others named in a reason (the count is exact whatever is named)
REASON_LOOKAHEAD = 64
#: the longest reason a waiting job gets
MAX_REASON = 512

StateOf = Callable[[str], JobState | None]


class DependencyIndex:
    def __init__(self) -> None:
        #: tracked job -> its distinct dependencies not completed yet
        self._unmet: dict[str, int] = {}
        #: dependency -> jobs listed as waiting on it (see the invariant above)
        self._dependents: dict[str, list[str]] = {}
        #: jobs that appear in the lists of _dependents
        self._listed: set[str] = set()
        #: tracked job -> index in its depends_on before which every entry completed
        self._cursor: dict[str, int] = {}
        #: jobs one of whose dependencies ended without completing
        self._doomed: set[str] = set()
        #: waiting jobs whose reason is out of date
        self._stale: set[str] = set()
        #: tracked job -> {dependency: the end it waits for}, for jobs whose depends_on
        #: asks for another end than completion (the rest wait for completion)
        self._kinds: dict[str, dict[str, DependencyEnd]] = {}

    def __len__(self) -> int:
        return len(self._unmet)

    def waits(self, job_id: str) -> bool:
        """Whether the job has a dependency that has not completed."""
        return job_id in self._unmet

    def unmet(self, job_id: str) -> int:
        return self._unmet.get(job_id, 0)

    def dependents(self, dep_id: str) -> list[str]:
        """The jobs listed as waiting on ``dep_id`` (for tests and inspection)."""
        return list(self._dependents.get(dep_id, ()))

    def track(self, job_id: str, depends_on: Sequence[queue.Wanted], state_of: StateOf) -> None:
        """Start following a job that entered the queue."""
        if not depends_on:
            return
        if not all(isinstance(d, str) for d in depends_on):
            self._track_kinds(job_id, depends_on, state_of)
            return
        listed = job_id in self._listed
        unmet = 0
        for dep in dict.fromkeys(depends_on):
            assert isinstance(dep, str)
            state = state_of(dep)
            if state is JobState.COMPLETED:
                continue
            unmet += 1
            if state is None or state in TERMINAL:
                self._doomed.add(job_id)
            if state is not None and not listed:
                self._dependents.setdefault(dep, []).append(job_id)
        self._listed.add(job_id)
        if unmet:
            self._unmet[job_id] = unmet
            self._cursor[job_id] = 0
            self._stale.add(job_id)

    def _track_kinds(
        self, job_id: str, depends_on: Sequence[queue.Wanted], state_of: StateOf
    ) -> None:
        kinds: dict[str, DependencyEnd] = {}
        unmet = 0
        for dep, when in dict.fromkeys(queue.wanted(d) for d in depends_on):
            state = state_of(dep)
            verdict = queue.met(state, when)
            if verdict is True:
                continue
            unmet += 1
            kinds[dep] = when
            if verdict is False:
                self._doomed.add(job_id)
            if state is not None:
                waiting = self._dependents.setdefault(dep, [])
                if job_id not in waiting:
                    waiting.append(job_id)
        self._listed.add(job_id)
        if unmet:
            self._unmet[job_id] = unmet
            self._kinds[job_id] = kinds
            self._cursor[job_id] = 0
            self._stale.add(job_id)

    def untrack(self, job_id: str) -> None:
        """The job left the queue; its entries in the lists are skipped from now on."""
        self._unmet.pop(job_id, None)
        self._cursor.pop(job_id, None)
        self._doomed.discard(job_id)
        self._stale.discard(job_id)
        self._kinds.pop(job_id, None)

    def ended(self, dep_id: str, state: JobState) -> list[str]:
        """A job ended in ``state``. Returns the tracked jobs it was the last unmet
        dependency of (they may be placed now)."""
        waiting = self._dependents.get(dep_id)
        if not waiting:
            return []
        ready: list[str] = []
        kept: list[str] = []
        for job_id in waiting:
            left = self._unmet.get(job_id)
            if left is None:
                kept.append(job_id)
                continue
            kinds = self._kinds.get(job_id)
            when = queue.COMPLETED if kinds is None else kinds.get(dep_id, queue.COMPLETED)
            verdict = queue.met(state, when)
            if not verdict:
                # Doomed (judged at the next pass: it may be retried by then), or met
                # by no end of it.
                if verdict is False:
                    self._doomed.add(job_id)
                kept.append(job_id)
                continue
            if kinds is not None:
                kinds.pop(dep_id, None)
            if left > 1:
                self._unmet[job_id] = left - 1
                self._stale.add(job_id)
            else:
                self.untrack(job_id)
                ready.append(job_id)
        if state is JobState.COMPLETED or not kept:
            # Completed is for good: nothing waits on it any more.
            self._dependents.pop(dep_id, None)
        elif len(kept) != len(waiting):
            self._dependents[dep_id] = kept
        return ready

    def forget(self, job_id: str) -> None:
        """A job was deleted: as a dependency it will never complete, and as a
        dependent it can never be tracked again."""
        self._dependents.pop(job_id, None)
        self._listed.discard(job_id)
        self.untrack(job_id)

    def failed(
        self, job_id: str, depends_on: Sequence[queue.Wanted], state_of: StateOf
    ) -> str | None:
        """The dependency, among those not met yet, whose state now means the job can
        never start, if any (the judgement of a doomed job)."""
        kinds = self._kinds.get(job_id)
        if kinds is None:
            return queue.dependencies(depends_on, state_of).failed
        return queue.dependencies(
            [Dependency(dep, when) for dep, when in kinds.items()], state_of
        ).failed

    def take_doomed(self) -> list[str]:
        doomed = sorted(self._doomed)
        self._doomed.clear()
        return doomed

    def doom_later(self, job_id: str) -> None:
        """Look at the job again at the next pass (it was not ready to be judged)."""
        if job_id in self._unmet:
            self._doomed.add(job_id)

    def take_stale(self) -> list[str]:
        stale = list(self._stale)
        self._stale.clear()
        return stale

    def reason(self, job_id: str, depends_on: Sequence[queue.Wanted], state_of: StateOf) -> str:
        """``waiting_on: a, b, c and 997 more``: bounded whatever the number of
        dependencies, and cheap: the cursor skips what was met before."""
        count = self._unmet.get(job_id, 0)
        kinds = self._kinds.get(job_id)

        def waits_on(entry: queue.Wanted) -> bool:
            dep = queue.wanted(entry)[0]
            if kinds is not None:
                return dep in kinds
            return state_of(dep) is not JobState.COMPLETED

        start = self._cursor.get(job_id, 0)
        while start < len(depends_on) and not waits_on(depends_on[start]):
            start += 1
        self._cursor[job_id] = start
        names: list[str] = []
        end = min(len(depends_on), start + 1 + REASON_LOOKAHEAD)
        for entry in depends_on[start:end]:
            if len(names) == NAMED_IN_REASON:
                break
            dep, when = queue.wanted(entry)
            if dep not in names and waits_on(entry):
                names.append(dep if when == queue.COMPLETED else f"{dep} ({when})")
        more = count - len(names)
        if not names:
            text = f"{queue.WAITING_ON}: {count} jobs"
        elif more > 0:
            text = f"{queue.WAITING_ON}: {', '.join(names)} and {more} more"
        else:
            text = f"{queue.WAITING_ON}: {', '.join(names)}"
        return text[:MAX_REASON]
