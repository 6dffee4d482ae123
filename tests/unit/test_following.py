"""A standby's state follows the leader's commits and answers every read as the leader
does: the leader's state is driven through its public methods with a fake clock, each
change set it commits is given to the follower as copies (as a store reads them back),
and after every step their reads are compared."""

from __future__ import annotations

import random
from typing import Any

from msgspec.structs import replace

from common.codec import decode, encode
from common.models import Constraints, HeartbeatRequest, Job, Node, NodeMetrics
from common.states import JobState
from scheduler.state import Followed, State
from scheduler.store.base import Loaded
from tests.unit.test_cluster import FakeClock, beat, job_spec, new_cluster, register, report

OWNERS = ("alice", "bob")


def copied(followed: Followed) -> Followed:
    """The records as a store gives them back: fresh objects, not the leader's."""
    followed.jobs = [decode(encode(j), Job) for j in followed.jobs]
    followed.nodes = [decode(encode(n), Node) for n in followed.nodes]
    return followed


class Pair:
    """A leader and a standby that follows every change set the leader commits."""

    def __init__(self, clock: FakeClock) -> None:
        self.leader = new_cluster(clock)
        self.standby = new_cluster(clock)
        self.standby.load(
            Loaded(jobs=[], nodes=[], idempotency={}, tokens=[], last_index=0, log_ends={})
        )

    def commit(self) -> None:
        changes = self.leader.take_changes()
        self.leader.take_effects()
        events = list(changes.events)
        if events:
            self.leader.events.committed(events, events[-1].index)
            self.standby.events.committed(events, events[-1].index)
        self.standby.follow(copied(Followed.of(changes)))

    def delete(self, job_ids: list[str]) -> None:
        """Retention on the leader: the store deletes the rows, the standby is told."""
        gone = [g.id for g in self.leader.forget(job_ids)]
        self.standby.follow(Followed(deleted_jobs=gone))


def reads(c: State) -> dict[str, Any]:
    """Everything a client can read from the state."""
    out: dict[str, Any] = {"stats": c.stats(), "groups": c.groups()}
    for owner in (None, *OWNERS):
        for state in (None, *JobState):
            out[f"ids {owner} {state}"] = list(c.iter_ids(state, None, owner))
    out["jobs"] = {i: encode(c.shown(j)) for i in c.ids if (j := c.find(i)) is not None}
    # Heartbeat times and metrics reach a standby as node.metrics events (pinned below).
    out["nodes"] = {
        n.id: (encode(replace(n, last_heartbeat_at=None, metrics=None)), sorted(n.running_jobs))
        for n in c.nodes.values()
    }
    out["tokens"] = sorted(encode(t) for t in c.tokens)
    out["groups_limits"] = dict(c.group_limits)
    out["by name"] = dict(c.node_by_name)
    return out


def drive(pair: Pair, rng: random.Random, clock: FakeClock, steps: int) -> None:
    c = pair.leader
    nodes = [register(c, f"n{i}", cpu=4.0, memory_mb=4096, max_parallel=3) for i in range(3)]
    pair.commit()
    for _ in range(steps):
        move = rng.random()
        live = list(c.jobs.values())
        if move < 0.35:
            spec: dict[str, Any] = {"max_retries": rng.choice((0, 1, 2))}
            if rng.random() < 0.2:
                spec["group"] = rng.choice(("etl", "gpu"))
            if rng.random() < 0.15 and c.ids:
                spec["depends_on"] = [rng.choice(c.ids)]
            if rng.random() < 0.1:
                spec["constraints"] = Constraints(labels={"pool": "nowhere"})
            job, _ = c.submit(
                job_spec(
                    cpu=rng.choice((0.5, 1.0, 3.0)), memory_mb=rng.choice((128, 2048)), **spec
                ),
                submitted_by=rng.choice(OWNERS),
            )
        elif move < 0.55 and live:
            job = rng.choice(live)
            if job.state is JobState.ASSIGNED:
                report(c, job, "running")
            elif job.state is JobState.RUNNING:
                outcome = rng.choice(("completed", "failed"))
                report(c, job, outcome, exit_code=0 if outcome == "completed" else 3)
        elif move < 0.62 and live:
            job = rng.choice(live)
            if job.state is not JobState.PAUSED:
                c.cancel(job.id, by="alice")
        elif move < 0.67:
            c.set_group_limit("etl", rng.choice((1, 2, 5)))
        elif move < 0.72:
            ended = [i for i in c.ids if i in c.archive]
            pair.commit()
            pair.delete(rng.sample(ended, min(len(ended), 3)))
            continue
        elif move < 0.77:
            node = rng.choice(nodes)
            c.drain(node.id, rng.random() < 0.5, "maintenance")
        elif move < 0.82:
            clock.advance(rng.choice((1, 5, 30)))
            for node in nodes:
                beat(c, node, *[c.jobs[j] for j in node.running_jobs])
        c.place()
        pair.commit()
        assert reads(pair.standby) == reads(c)


def test_a_standby_answers_every_read_as_the_leader_after_each_commit(clock: FakeClock) -> None:
    for seed in range(6):
        drive(Pair(clock), random.Random(seed), clock, steps=150)


def test_a_standby_shows_the_reason_the_leaders_pass_stopped_a_shape_at(clock: FakeClock) -> None:
    pair = Pair(clock)
    c = pair.leader
    register(c, "small", cpu=1.0, memory_mb=512)
    big = [c.submit(job_spec(cpu=8.0), submitted_by="alice")[0] for _ in range(4)]
    c.place()
    pair.commit()
    # Only the first of the shape had its reason stored and told.
    assert pair.standby.jobs[big[3].id].reason is None
    leader_reason = c.shown(c.jobs[big[3].id]).reason
    assert leader_reason is not None
    assert pair.standby.shown(pair.standby.jobs[big[3].id]).reason == leader_reason


def test_a_standby_shows_node_metrics_and_heartbeat_time_as_the_leader_tells_them(
    clock: FakeClock,
) -> None:
    pair = Pair(clock)
    c = pair.leader
    node = register(c, "n1")
    pair.commit()
    clock.advance(20)
    c.heartbeat(
        node.id,
        HeartbeatRequest(
            metrics=NodeMetrics(cpu_percent=42.0, ram_total_mb=8192, ram_free_mb=1000)
        ),
    )
    pair.commit()
    seen = pair.standby.nodes[node.id]
    assert seen.last_heartbeat_at == c.nodes[node.id].last_heartbeat_at
    assert seen.metrics is not None and seen.metrics.cpu_percent == 42.0
    assert seen.metrics.ram_free_mb == 1000
