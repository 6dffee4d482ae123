"""Hostile agent traffic against a real scheduler: property tests (Hypothesis) of
malformed heartbeats and reports, reports about the wrong jobs and attempts, and a node
token used on another node's routes.

The scheduler has two nodes: ``a`` runs one job (attempt 1, running, with some log
bytes) and holds another (assigned); ``b`` has no capacity. No agent heartbeats and the
liveness intervals are far longer than the module's run, so nothing changes unless a
request changes it: after every refused request, both jobs, both nodes, the event
index, the job's log and the stored blobs must be exactly as before.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.models import MAX_ATTEMPT, MAX_MEMORY_MB, MAX_PARALLEL
from tests.integration.hostile import Http, Reply, files_below, wait_for
from tests.support import QUIET, SchedulerProcess

SPEC = {
    "name": "victim",
    "image": "busybox",
    "command": ["sleep", "1000"],
    "resources": {"cpu": 0.1, "memory_mb": 64},
    "timeout_s": 36000,
}
LOG = b"first bytes of the log\n"
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class World:
    sched: SchedulerProcess
    http: Http
    admin: str
    a: str
    a_token: str
    b: str
    b_token: str
    #: running on a, attempt 1
    job: str
    #: assigned to a, not started
    held: str

    def snapshot(self) -> tuple[Any, ...]:
        """Everything a refused agent request must leave as it was."""
        get = self.http.get
        return (
            get("/api/v1/stats", self.admin)["index"],
            get(f"/api/v1/jobs/{self.job}", self.admin),
            get(f"/api/v1/jobs/{self.held}", self.admin),
            get(f"/api/v1/nodes/{self.a}", self.admin),
            get(f"/api/v1/nodes/{self.b}", self.admin),
            self.http.call(
                "GET", f"/api/v1/jobs/{self.job}/logs", token=self.admin, query={"attempt": 1}
            ).body,
            files_below(self.sched.state_dir / "blobs"),
        )

    def as_node(self, token: str, method: str, path: str, **kw: Any) -> Reply:
        return self.http.call(method, path, token=token, **kw)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, store_kind: str) -> Iterator[World]:
    sched = SchedulerProcess(
        Path(tmp_path_factory.mktemp("hostile-agents")) / "state",
        *QUIET,
    ).start()
    http = Http(sched.port)
    try:
        admin = sched.admin_token
        nodes = {}
        for name, cpu, memory in (("a", 4, 8192), ("b", 0, 0)):
            r = http.call(
                "POST",
                "/api/v1/nodes/register",
                token=sched.join_token,
                body={
                    "name": name,
                    "capacity": {"cpu": cpu, "memory_mb": memory},
                    "max_parallel": 4,
                    "executor": "process",
                },
            )
            assert r.status == 200, r
            nodes[name] = (r.json()["node_id"], r.json()["node_token"])
        (a, a_token), (b, b_token) = nodes["a"], nodes["b"]
        ids = []
        for _ in range(2):
            r = http.call("POST", "/api/v1/jobs", token=admin, body=SPEC)
            assert r.status == 201, r
            ids.append(r.json()["id"])

        def both_assigned() -> bool:
            jobs = [http.get(f"/api/v1/jobs/{i}", admin) for i in ids]
            return all(j["state"] == "assigned" and j["node_id"] == a for j in jobs)

        wait_for(both_assigned, what="both jobs to be assigned to node a")
        job, held = ids
        r = http.call(
            "POST",
            f"/api/v1/nodes/{a}/jobs/{job}/report",
            token=a_token,
            body={"attempt": 1, "state": "running"},
        )
        assert r.status == 200 and r.json()["state"] == "running", r
        r = http.call(
            "POST",
            f"/api/v1/nodes/{a}/jobs/{job}/logs",
            token=a_token,
            raw=LOG,
            query={"attempt": 1, "offset": 0},
        )
        assert r.status == 200, r
        yield World(sched, http, admin, a, a_token, b, b_token, job, held)
    finally:
        http.close()
        sched.kill()


# --- strategies --------------------------------------------------------------------------

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
#: any JSON value, nested a little
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return _is_int(v) or isinstance(v, float)


NOT_INT = JSON_VALUES.filter(lambda v: not _is_int(v))
NOT_NUMBER = JSON_VALUES.filter(lambda v: not _is_number(v))
NOT_BOOL = JSON_VALUES.filter(lambda v: not isinstance(v, bool))
NOT_OBJECT = JSON_VALUES.filter(lambda v: not isinstance(v, dict))
NOT_LIST = JSON_VALUES.filter(lambda v: not isinstance(v, list))
NOT_TEXT = JSON_VALUES.filter(lambda v: not isinstance(v, str))
NOT_TEXT_OR_NULL = JSON_VALUES.filter(lambda v: v is not None and not isinstance(v, str))
NOT_INT_OR_NULL = JSON_VALUES.filter(lambda v: v is not None and not _is_int(v))
NOT_OBJECT_OR_NULL = JSON_VALUES.filter(lambda v: v is not None and not isinstance(v, dict))
HUGE = st.integers(min_value=2**64, max_value=2**80)


def _longer_than(n: int) -> st.SearchStrategy[str]:
    return st.integers(min_value=n + 1, max_value=n + 50).flatmap(
        lambda size: st.sampled_from("xé\x00€").map(lambda ch: ch * size)
    )


def _outside(lo: float, hi: float) -> st.SearchStrategy[Any]:
    """Numbers below ``lo`` or above ``hi``, small and huge, ints and floats."""
    return st.one_of(
        st.floats(max_value=lo, exclude_max=True, allow_nan=False, allow_infinity=False),
        st.floats(min_value=hi, exclude_min=True, allow_nan=False, allow_infinity=False),
        st.integers(max_value=int(lo) - 1, min_value=-(2**70)),
        st.integers(min_value=int(hi) + 1, max_value=2**70),
    )


POSITIVE_INT = NOT_INT | st.integers(max_value=0, min_value=-(2**70))
#: not an attempt number: not positive, or past what the stores hold
BAD_ATTEMPT = POSITIVE_INT | st.integers(min_value=MAX_ATTEMPT + 1, max_value=2**70)
PERCENT = NOT_NUMBER | _outside(0, 100)
MB = (
    NOT_INT
    | st.integers(max_value=-1, min_value=-(2**70))
    | st.integers(min_value=MAX_MEMORY_MB + 1, max_value=2**70)
)
JOB_ID = NOT_INT.filter(lambda v: not isinstance(v, str)) | st.just("") | _longer_than(64)
REPORT_STATES = {"running", "completed", "failed", "timed_out", "cancelled"}
STATE = NOT_TEXT_OR_NULL | st.text(max_size=20).filter(lambda s: s not in REPORT_STATES)
DIGEST = NOT_TEXT_OR_NULL | st.text(max_size=70).filter(
    lambda s: re.fullmatch(r"[0-9a-f]{64}", s) is None
)

HEARTBEAT_FIELDS = {"metrics", "running", "executor_error", "draining"}
METRICS_FIELDS = {"cpu_percent", "ram_total_mb", "ram_free_mb", "load1", "disk_free_mb"}
RUNNING_FIELDS = {"job_id", "attempt", "paused"}
REPORT_FIELDS = {
    "attempt",
    "state",
    "exit_code",
    "error",
    "infra_failure",
    "oom_killed",
    "progress",
    "usage",
    "outputs",
    "checkpoint",
}
PROGRESS_FIELDS = {"percent", "message"}
USAGE_FIELDS = {"cpu_percent", "memory_mb", "peak_cpu_percent", "peak_memory_mb"}


def _heartbeat(world: World) -> dict[str, Any]:
    """A heartbeat node a could send: every field present and valid."""
    return {
        "metrics": {
            "cpu_percent": 12.5,
            "ram_total_mb": 8192,
            "ram_free_mb": 4096,
            "load1": 0.5,
            "disk_free_mb": 100_000,
        },
        "running": [{"job_id": world.job, "attempt": 1, "paused": False}],
        "executor_error": None,
        "draining": False,
    }


def _report() -> dict[str, Any]:
    """A report on the running job's attempt: every field present and valid."""
    return {
        "attempt": 1,
        "state": "running",
        "exit_code": None,
        "error": None,
        "infra_failure": False,
        "oom_killed": False,
        "progress": {"percent": 50.0, "message": "half way"},
        "usage": {"cpu_percent": 5.0, "memory_mb": 10.0},
        "outputs": None,
        "checkpoint": None,
    }


#: (path in the heartbeat, what is not valid there)
HEARTBEAT_CORRUPTIONS: list[tuple[tuple[str | int, ...], st.SearchStrategy[Any]]] = [
    (("metrics",), NOT_OBJECT),
    (("metrics", "cpu_percent"), PERCENT),
    (("metrics", "ram_total_mb"), MB),
    (("metrics", "ram_free_mb"), MB),
    (("metrics", "load1"), NOT_NUMBER | _outside(0, 1e6)),
    (("metrics", "disk_free_mb"), NOT_INT | st.integers(max_value=-1, min_value=-(2**70))),
    (("running",), NOT_LIST),
    (("running",), st.just([{"job_id": "x", "attempt": 1}] * (MAX_PARALLEL + 1))),
    (("running", 0), NOT_OBJECT),
    (("running", 0, "job_id"), JOB_ID),
    (("running", 0, "attempt"), BAD_ATTEMPT),
    (("running", 0, "paused"), NOT_BOOL),
    (("executor_error",), NOT_TEXT_OR_NULL | _longer_than(1024)),
    (("draining",), NOT_BOOL),
]

#: (path in the report, what is not valid there)
REPORT_CORRUPTIONS: list[tuple[tuple[str | int, ...], st.SearchStrategy[Any]]] = [
    (("attempt",), BAD_ATTEMPT),
    (("state",), STATE),
    (("exit_code",), NOT_INT_OR_NULL | _outside(-255, 255).filter(_is_int)),
    (("error",), NOT_TEXT_OR_NULL | _longer_than(4096)),
    (("infra_failure",), NOT_BOOL),
    (("oom_killed",), NOT_BOOL),
    (("progress",), NOT_OBJECT_OR_NULL),
    (("progress", "percent"), PERCENT),
    (("progress", "message"), NOT_TEXT | _longer_than(1024)),
    (("usage",), NOT_OBJECT_OR_NULL),
    (("usage", "cpu_percent"), NOT_NUMBER | _outside(0, 1e6)),
    (("usage", "memory_mb"), NOT_NUMBER | _outside(0, 1e9)),
    (("outputs",), DIGEST),
    (("checkpoint",), DIGEST),
]


def _path_text(path: tuple[str | int, ...]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _set(doc: Any, path: tuple[str | int, ...], value: Any) -> Any:
    out = copy.deepcopy(doc)
    target = out
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return out


@st.composite
def _corrupted(
    draw: st.DrawFn,
    base: dict[str, Any],
    corruptions: list[tuple[tuple[str | int, ...], st.SearchStrategy[Any]]],
    containers: dict[tuple[str | int, ...], set[str]],
) -> tuple[Any, str]:
    """A body that is wrong in one place, and the field the answer must name."""
    how = draw(st.sampled_from(["value", "unknown field", "not an object", "stray keys"]))
    if how == "value":
        path, bad = draw(st.sampled_from(corruptions))
        return _set(base, path, draw(bad)), _path_text(path)
    if how == "unknown field":
        where = draw(st.sampled_from(sorted(containers, key=str)))
        known = containers[where]
        key = draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in known))
        body = _set(base, (*where, key), draw(JSON_VALUES)) if where else {**base, key: 0}
        return body, _path_text(where)
    if how == "not an object":
        return draw(NOT_OBJECT), "$"
    keys = st.text(min_size=1, max_size=10).filter(lambda k: k not in set(base))
    return draw(st.dictionaries(keys, JSON_VALUES, min_size=1, max_size=4)), "$"


def _refused_naming(reply: Reply, field: str) -> None:
    assert reply.status == 400, reply
    named = reply.field
    assert named is not None and named.startswith(field), (field, reply)
    assert reply.json()["error"]["code"] == "invalid"


# --- malformed heartbeats and reports ------------------------------------------------------


@PROPERTY
@given(data=st.data())
def test_a_malformed_heartbeat_is_refused_naming_the_field_and_changes_nothing(
    world: World, data: st.DataObject
) -> None:
    containers: dict[tuple[str | int, ...], set[str]] = {
        (): HEARTBEAT_FIELDS,
        ("metrics",): METRICS_FIELDS,
        ("running", 0): RUNNING_FIELDS,
    }
    body, field = data.draw(_corrupted(_heartbeat(world), HEARTBEAT_CORRUPTIONS, containers))
    before = world.snapshot()
    reply = world.as_node(world.a_token, "POST", f"/api/v1/nodes/{world.a}/heartbeat", body=body)
    _refused_naming(reply, field)
    assert world.snapshot() == before


@PROPERTY
@given(data=st.data())
def test_a_malformed_report_is_refused_naming_the_field_and_changes_nothing(
    world: World, data: st.DataObject
) -> None:
    containers: dict[tuple[str | int, ...], set[str]] = {
        (): REPORT_FIELDS,
        ("progress",): PROGRESS_FIELDS,
        ("usage",): USAGE_FIELDS,
    }
    body, field = data.draw(_corrupted(_report(), REPORT_CORRUPTIONS, containers))
    before = world.snapshot()
    path = f"/api/v1/nodes/{world.a}/jobs/{world.job}/report"
    _refused_naming(world.as_node(world.a_token, "POST", path, body=body), field)
    assert world.snapshot() == before


@PROPERTY
@given(data=st.data(), position=st.integers(min_value=0, max_value=3))
def test_a_batch_with_one_malformed_report_is_refused_whole(
    world: World, data: st.DataObject, position: int
) -> None:
    """The good reports around the bad one are not applied either."""
    containers: dict[tuple[str | int, ...], set[str]] = {
        (): REPORT_FIELDS | {"job_id"},
        ("progress",): PROGRESS_FIELDS,
    }
    item = {**_report(), "job_id": world.job}
    bad, field = data.draw(_corrupted(item, REPORT_CORRUPTIONS, containers))
    good = {"job_id": world.job, "attempt": 1, "progress": {"percent": 99.0, "message": "no"}}
    reports = [good] * 3
    reports.insert(position, bad)
    before = world.snapshot()
    reply = world.as_node(
        world.a_token, "POST", f"/api/v1/nodes/{world.a}/reports", body={"reports": reports}
    )
    _refused_naming(reply, "$.reports" if field == "$" else f"$.reports[{position}]")
    assert world.snapshot() == before


# --- well-formed reports about the wrong job or attempt -----------------------------------


@st.composite
def _misdirected(draw: st.DrawFn, world: World) -> tuple[str, str, dict[str, Any]]:
    """(token, path, body) of a report that is valid JSON but not this node's to make."""
    body = {"attempt": 1, "state": draw(st.sampled_from(sorted(REPORT_STATES)))}
    if body["state"] != "running":
        body["exit_code"] = draw(st.integers(min_value=-255, max_value=255))
    case = draw(st.sampled_from(["unknown job", "later attempt", "not started", "other node"]))
    token, node, job = world.a_token, world.a, world.job
    if case == "unknown job":
        job = draw(st.from_regex(r"[0-9a-f]{14}", fullmatch=True).filter(lambda j: j != job))
    elif case == "later attempt":
        body["attempt"] = draw(st.integers(min_value=2, max_value=MAX_ATTEMPT))
    elif case == "not started":
        # The held job's attempt 1 is current; a report on a higher one is not.
        job = world.held
        body["attempt"] = draw(st.integers(min_value=2, max_value=MAX_ATTEMPT))
    else:
        token, node = world.b_token, world.b
    return token, f"/api/v1/nodes/{node}/jobs/{job}/report", body


@settings(PROPERTY, max_examples=80)
@given(data=st.data())
def test_a_report_on_an_attempt_the_node_does_not_run_is_stale_and_changes_nothing(
    world: World, data: st.DataObject
) -> None:
    token, path, body = data.draw(_misdirected(world))
    before = world.snapshot()
    reply = world.as_node(token, "POST", path, body=body)
    assert reply.status == 409, reply
    assert reply.json()["error"]["code"] == "stale_attempt"
    assert world.snapshot() == before
    # The same in a batch: each item is refused alone, and nothing moves.
    node = path.split("/")[4]
    job = path.split("/")[6]
    reply = world.as_node(
        token, "POST", f"/api/v1/nodes/{node}/reports", body={"reports": [{**body, "job_id": job}]}
    )
    assert reply.status == 200, reply
    assert [r["ok"] for r in reply.json()["results"]] == [False]
    assert world.snapshot() == before


# --- a node token on another node's routes -------------------------------------------------


def _agent_routes(world: World, node: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Every agent route, addressed to ``node``, with a request that would be accepted
    from that node's own token."""
    job = world.job
    return [
        ("POST", f"/api/v1/nodes/{node}/heartbeat", {"body": _heartbeat(world)}),
        ("GET", f"/api/v1/nodes/{node}/assignments", {"query": {"wait": 0}}),
        (
            "POST",
            f"/api/v1/nodes/{node}/jobs/{job}/report",
            {"body": {"attempt": 1, "state": "completed", "exit_code": 0}},
        ),
        (
            "POST",
            f"/api/v1/nodes/{node}/reports",
            {"body": {"reports": [{"job_id": job, "attempt": 1, "state": "failed"}]}},
        ),
        (
            "POST",
            f"/api/v1/nodes/{node}/jobs/{job}/logs",
            {"raw": b"forged output\n", "query": {"attempt": 1, "offset": len(LOG)}},
        ),
        (
            "POST",
            f"/api/v1/nodes/{node}/jobs/{job}/checkpoint",
            {"raw": b"forged checkpoint", "query": {"attempt": 1}},
        ),
        ("POST", f"/api/v1/nodes/{node}/drain", {"body": {"drain": True}}),
    ]


def test_a_node_token_on_another_nodes_routes_is_forbidden_and_changes_nothing(
    world: World,
) -> None:
    before = world.snapshot()
    for method, path, kw in _agent_routes(world, world.a):
        reply = world.as_node(world.b_token, method, path, **kw)
        assert reply.status == 403, (path, reply)
        assert reply.json()["error"]["code"] == "forbidden"
        assert world.snapshot() == before, path
    # The join token registers nodes and acts for none of them.
    for method, path, kw in _agent_routes(world, world.a):
        reply = world.as_node(world.sched.join_token, method, path, **kw)
        assert reply.status == 403, (path, reply)
    assert world.snapshot() == before


def test_a_node_cannot_act_on_a_job_that_runs_on_another_node_through_its_own_routes(
    world: World,
) -> None:
    """Node b's token on node b's own routes, naming node a's job: refused as stale."""
    before = world.snapshot()
    for method, path, kw in _agent_routes(world, world.b):
        if "/jobs/" not in path:
            continue
        reply = world.as_node(world.b_token, method, path, **kw)
        assert reply.status == 409, (path, reply)
        assert reply.json()["error"]["code"] == "stale_attempt"
        assert world.snapshot() == before, path
    method, path, kw = next(r for r in _agent_routes(world, world.b) if r[1].endswith("/reports"))
    reply = world.as_node(world.b_token, method, path, **kw)
    assert reply.status == 200 and reply.json()["results"][0]["ok"] is False, reply
    assert world.snapshot() == before


def test_node_a_still_acts_for_itself_afterwards(world: World) -> None:
    """The refusals above refused the token, not the node: its own token still works."""
    reply = world.as_node(
        world.a_token, "POST", f"/api/v1/nodes/{world.a}/heartbeat", body=_heartbeat(world)
    )
    assert reply.status == 200, reply
    assert reply.json()["commands"] == []
