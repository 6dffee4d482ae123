"""Schemathesis against a live scheduler, as every kind of caller: an admin, submit,
read and node token, a token that does not exist, and none at all.

Whatever requests the OpenAPI document allows, valid or not, the scheduler never
answers 5xx, and a request it refuses (4xx) changes nothing: the event index, the jobs
by state, the nodes, the tokens, the audit log and the stored blobs are the same before
and after it.

Nothing else may move the state meanwhile, so the scheduler runs with no agent: its one
node was registered with no capacity (so no job is ever placed, and nothing times out),
and heartbeat intervals and TTLs far longer than the run. Nodes that the admin token
registers through the fuzzer get no capacity either, the schedules it makes are
paused, and the jobs it submits have no queue timeout or deadline, for the same reason.

Generated path parameters are often swapped for ids that exist (a job, the node, a
blob, a schedule), so that refusals are tried on real objects too, not only on unknown ids.
"""

from __future__ import annotations

import http.client
import json
import secrets
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from scheduler.openapi import document
from tests.support import QUIET, SchedulerProcess

schema = schemathesis.openapi.from_dict(document())

#: long polls and follows are cut short: this test is about answers, not waiting
MAX_WAIT_S = 0.2
#: the callers each operation is tried as
KINDS = ("admin", "submit", "read", "node", "wrong", "none")
#: audit entries read at a time
AUDIT_PAGE = 5000
SPEC = {"name": "fixture", "image": "busybox", "command": ["true"]}
#: a schedule that exists (paused: it never fires by itself)
SCHEDULE = {"name": "fz-schedule", "cron": "0 0 1 1 *", "paused": True}


@dataclass
class Live:
    """The scheduler under test, a token per kind of caller and the ids that exist."""

    proc: SchedulerProcess
    tokens: dict[str, str | None] = field(default_factory=dict)
    node_id: str = ""
    job_ids: list[str] = field(default_factory=list)
    digest: str = ""
    #: for the generated requests
    session: requests.Session = field(default_factory=requests.Session)
    #: the audit log's last entry id seen so far (the log is read on from there)
    audit_seen: int = 0
    audit_count: int = 0
    last: tuple[Any, ...] | None = None
    _conn: http.client.HTTPConnection | None = None

    def admin(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        """One call as the admin over a kept-alive connection (a fingerprint takes four)."""
        if self._conn is None:
            self._conn = http.client.HTTPConnection("127.0.0.1", self.proc.port, timeout=30)
        headers = {"Authorization": f"Bearer {self.tokens['admin']}"}
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        target = path + ("?" + urlencode(query) if query else "")
        try:
            self._conn.request(method, target, body=data, headers=headers)
            r = self._conn.getresponse()
            raw = r.read()
        except (OSError, http.client.HTTPException):
            self._conn.close()
            self._conn = None
            raise
        assert r.status < 300, (path, r.status, raw)
        return json.loads(raw)

    def moved(self) -> None:
        """An accepted request may have changed the state: take a new fingerprint."""
        self.last = None

    def fingerprint(self, *, fresh: bool = False) -> tuple[Any, ...]:
        """What a refused request must leave as it was. Nothing here moves by itself,
        so the last one taken holds until a request is accepted (or ``fresh``)."""
        if self.last is None or fresh:
            self.last = self._take()
        return self.last

    def _take(self) -> tuple[Any, ...]:
        # Nodes registered by the fuzzer have generated ids no request can name: the
        # counts by state cover them, the fixture node is compared whole.
        stats = self.admin("GET", "/api/v1/stats")
        tokens = self.admin("GET", "/api/v1/tokens", revoked="1")["tokens"]
        node = self.admin("GET", f"/api/v1/nodes/{self.node_id}")
        while True:
            page = self.admin("GET", "/api/v1/audit", after=self.audit_seen, limit=AUDIT_PAGE)
            self.audit_count += len(page["entries"])
            self.audit_seen = page["next"]
            if len(page["entries"]) < AUDIT_PAGE:
                break
        blobs = sorted(str(p.relative_to(self.blob_dir)) for p in self.blob_dir.rglob("*"))
        return stats, tokens, node, self.audit_count, blobs

    @property
    def blob_dir(self) -> Path:
        return self.proc.state_dir / "blobs"

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self.session.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, store_kind: str) -> Iterator[Live]:
    proc = SchedulerProcess(
        Path(tmp_path_factory.mktemp("schemathesis")) / "state",
        *QUIET,
    ).start()
    live = Live(proc, {"admin": proc.admin_token})
    try:
        for role in ("submit", "read"):
            made = live.admin("POST", "/api/v1/tokens", {"role": role, "name": f"fz-{role}"})
            live.tokens[role] = made["token"]
        joined = requests.post(
            proc.url + "/api/v1/nodes/register",
            json={"name": "fz-node", "capacity": {"cpu": 0, "memory_mb": 0}},
            headers={"Authorization": f"Bearer {proc.join_token}"},
            timeout=30,
        )
        assert joined.status_code == 200, joined.text
        live.node_id, live.tokens["node"] = joined.json()["node_id"], joined.json()["node_token"]
        live.tokens["wrong"] = secrets.token_urlsafe(32)
        live.tokens["none"] = None
        # A queued job of the admin's, one of the submit token's, and a cancelled one.
        live.job_ids.append(live.admin("POST", "/api/v1/jobs", SPEC)["id"])
        theirs = requests.post(
            proc.url + "/api/v1/jobs",
            json=SPEC,
            headers={"Authorization": f"Bearer {live.tokens['submit']}"},
            timeout=30,
        )
        assert theirs.status_code == 201, theirs.text
        live.job_ids.append(theirs.json()["id"])
        ended = live.admin("POST", "/api/v1/jobs", SPEC)["id"]
        live.admin("POST", f"/api/v1/jobs/{ended}/cancel")
        live.job_ids.append(ended)
        live.digest = live.admin("POST", "/api/v1/blobs", b"fixture blob\n")["digest"]
        live.admin("POST", "/api/v1/schedules", {**SCHEDULE, "job": SPEC})
        yield live
    finally:
        live.close()
        proc.kill()


def _real_ids(case: schemathesis.Case, live: Live) -> None:
    """Name objects that exist in about half the requests with path parameters: every
    parameter at once, so that a job's route gets both a real node and a real job. The
    choice follows from the generated request, not from a random draw."""
    params = case.path_parameters
    if not params:
        return
    h = zlib.crc32(repr((params, case.query, case.body)).encode())
    if h % 2:
        return
    for name in params:
        if name == "job" or (name == "id" and case.path.startswith("/api/v1/jobs/")):
            params[name] = live.job_ids[(h >> 1) % len(live.job_ids)]
        elif name == "id" and case.path.startswith("/api/v1/nodes/") and case.method != "DELETE":
            # Not for DELETE: the admin may forget the fixture node, and then nothing is
            # left to compare (test_node_identity tries the refusals on a real node).
            params[name] = live.node_id
        elif name == "digest":
            params[name] = live.digest
        elif name == "name" and case.path.startswith("/api/v1/schedules/"):
            # DELETE too: deleting it is accepted, and the next requests find none.
            params[name] = SCHEDULE["name"]


def _prepare(case: schemathesis.Case, live: Live) -> None:
    """Real ids, no long waits, no event streams, no capacity for new nodes."""
    _real_ids(case, live)
    query = case.query or {}
    if "wait" in query or "index" in query or case.path.endswith("/assignments"):
        query["wait"] = MAX_WAIT_S
    query.pop("follow", None)
    case.query = query
    if case.path == "/api/v1/nodes/register" and isinstance(case.body, dict):
        capacity = case.body.get("capacity")
        if isinstance(capacity, dict):
            capacity.update(cpu=0, memory_mb=0)
    if case.path.startswith("/api/v1/schedules") and isinstance(case.body, dict):
        # Schedules the fuzzer makes never fire: a run would move the state by itself.
        case.body["paused"] = True
    if case.path.startswith(("/api/v1/jobs", "/api/v1/schedules")) and isinstance(case.body, dict):
        # Nor do its jobs end by themselves at a queue timeout or deadline.
        specs = case.body.get("jobs") if case.path == "/api/v1/jobs/batch" else None
        for spec in [case.body, case.body.get("job"), *(specs if isinstance(specs, list) else [])]:
            if isinstance(spec, dict):
                spec.pop("queue_timeout_s", None)
                spec.pop("deadline", None)


def _framing_refused(response: Any) -> bool:
    """aiohttp's HTTP parser refused the request before any route or token was looked
    at (a generated header broke the framing, such as an empty Content-Length): a
    plain-text 400, not one of Berth's JSON errors."""
    return response.status_code == 400 and not response.headers.get("Content-Type", "").startswith(
        "application/json"
    )


def _headers(kind: str, live: Live) -> dict[str, str]:
    headers = {"Accept": "application/json"}
    token = live.tokens[kind]
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


@schema.parametrize()
@settings(
    max_examples=10,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_error_and_a_refusal_changes_nothing(case: schemathesis.Case, live: Live) -> None:
    """Each generated request is sent as every kind of caller in turn (generating it
    costs far more than sending it)."""
    _prepare(case, live)
    for kind in KINDS:
        # Every kind of caller is only its token: no cookie from an earlier answer.
        live.session.cookies.clear()
        before = live.fingerprint()
        response = case.call(
            base_url=live.proc.url, session=live.session, headers=_headers(kind, live), timeout=30
        )
        where = (kind, case.method, case.formatted_path, case.query, response.status_code)
        case.validate_response(response, checks=[not_a_server_error])
        assert response.status_code < 500, (where, response.text)
        if 400 <= response.status_code < 500:
            assert live.fingerprint(fresh=True) == before, (where, response.text)
        else:
            live.moved()
        if kind in ("wrong", "none") and case.path.startswith("/api/"):
            public = case.path in ("/api/v1/openapi.json", "/api/v1/session")
            assert public or response.status_code == 401 or _framing_refused(response), (
                where,
                response.text,
            )
