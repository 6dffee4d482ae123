"""Hostile bytes against a real scheduler: log lines of several MiB, invalid UTF-8 and
NUL bytes in logs, invalid UTF-8 and broken JSON in request bodies, and bad bytes and
overlong values in headers, paths and query strings.

Logs are bytes: whatever an agent appends is read back exactly, up to the per-job cap
and its marker. Everything else that is malformed is refused with a 4xx that says
what is wrong, changes nothing, and leaves the scheduler serving (a submit right
after it is committed: one unwritable value must not hold up every later commit).
"""

from __future__ import annotations

import http.client
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.hostile import Http, Reply, files_below, raw_request, wait_for
from tests.support import QUIET, SchedulerProcess

MIB = 1024 * 1024
#: the largest single log append, and the per-job cap with its marker (scheduler side)
MAX_APPEND = 4 * MIB
LOG_CAP = 10 * MIB
MARKER = b"\n[berth: log truncated at 10 MiB]\n"
SPEC = {"image": "busybox", "resources": {"cpu": 0.1, "memory_mb": 16}, "timeout_s": 36000}
#: every byte but the newline: a "line" of any length, with NULs and invalid UTF-8
NOT_A_NEWLINE = bytes(b for b in range(256) if b != 0x0A)


def _line(size: int, salt: int) -> bytes:
    """``size`` bytes without a newline, different for each ``salt``."""
    block = NOT_A_NEWLINE[salt % 255 :] + NOT_A_NEWLINE[: salt % 255]
    return (block * (size // len(block) + 1))[:size]


@dataclass
class Bench:
    sched: SchedulerProcess
    http: Http
    admin: str
    node: str
    node_token: str

    def running_job(self) -> str:
        """A new job, assigned to the bench's node and reported running (attempt 1)."""
        r = self.http.call("POST", "/api/v1/jobs", token=self.admin, body=SPEC)
        assert r.status == 201, r
        job = r.json()["id"]
        wait_for(
            lambda: self.http.get(f"/api/v1/jobs/{job}", self.admin)["state"] == "assigned",
            what=f"job {job} to be assigned",
        )
        r = self.report(job, {"attempt": 1, "state": "running"})
        assert r.status == 200, r
        return job

    def report(self, job: str, body: Any) -> Reply:
        path = f"/api/v1/nodes/{self.node}/jobs/{job}/report"
        return self.http.call("POST", path, token=self.node_token, body=body)

    def append(self, job: str, offset: int, data: bytes) -> Reply:
        return self.http.call(
            "POST",
            f"/api/v1/nodes/{self.node}/jobs/{job}/logs",
            token=self.node_token,
            raw=data,
            query={"attempt": 1, "offset": offset},
        )

    def log(self, job: str, **query: Any) -> Reply:
        reply = self.http.call(
            "GET", f"/api/v1/jobs/{job}/logs", token=self.admin, query={"attempt": 1, **query}
        )
        assert reply.status == 200, reply
        return reply

    def state(self) -> tuple[Any, ...]:
        """The event index, jobs and nodes by state, the tokens, the audit log, the node
        and the blobs: what a refused request leaves as it was."""
        get = self.http.get
        stats = get("/api/v1/stats", self.admin)
        return (
            stats["index"],
            stats["jobs"],
            stats["nodes"],
            get("/api/v1/tokens", self.admin, revoked="1")["tokens"],
            get("/api/v1/audit", self.admin, limit=5000)["entries"],
            get(f"/api/v1/nodes/{self.node}", self.admin),
            files_below(self.sched.state_dir / "blobs"),
        )

    def still_serving(self) -> None:
        """A write is acknowledged, so it was committed: nothing holds up commits."""
        r = self.http.call("POST", "/api/v1/jobs", token=self.admin, body=SPEC)
        assert r.status == 201, r
        r = self.http.call("POST", f"/api/v1/jobs/{r.json()['id']}/cancel", token=self.admin)
        assert r.status == 200, r


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, store_kind: str) -> Iterator[Bench]:
    sched = SchedulerProcess(
        Path(tmp_path_factory.mktemp("hostile-input")) / "state",
        *QUIET,
    ).start()
    http = Http(sched.port)
    try:
        r = http.call(
            "POST",
            "/api/v1/nodes/register",
            token=sched.join_token,
            body={
                "name": "bench",
                "capacity": {"cpu": 64, "memory_mb": 65536},
                "max_parallel": 64,
                "executor": "process",
            },
        )
        assert r.status == 200, r
        yield Bench(sched, http, sched.admin_token, r.json()["node_id"], r.json()["node_token"])
    finally:
        http.close()
        sched.kill()


# --- logs ----------------------------------------------------------------------------------


def test_a_line_of_several_mib_is_refused_whole_and_kept_byte_exact_in_pieces(
    bench: Bench,
) -> None:
    job = bench.running_job()
    line = _line(6 * MIB, salt=1)
    before = bench.state()
    too_big = bench.append(job, 0, line)
    assert too_big.status == 413, too_big
    error = too_big.json()["error"]
    assert error["code"] == "too_large"
    assert error["details"] == {"field": "$", "max_bytes": MAX_APPEND}
    assert str(MAX_APPEND) in error["message"]
    assert bench.log(job).body == b""
    assert bench.state() == before

    # The same line in appends the limit allows, the first exactly at it.
    assert bench.append(job, 0, line[:MAX_APPEND]).json() == {"offset": MAX_APPEND}
    assert bench.append(job, MAX_APPEND, line[MAX_APPEND:]).json() == {"offset": len(line)}
    whole = bench.log(job)
    assert whole.body == line
    assert whole.headers["x-berth-log-offset"] == str(len(line))

    # A second such line passes the per-job cap: what fits is kept, then the marker.
    second = _line(6 * MIB, salt=2)
    end = bench.append(job, len(line), second[:MAX_APPEND]).json()["offset"]
    assert end == LOG_CAP
    end = bench.append(job, end, second[MAX_APPEND:]).json()["offset"]
    assert end == LOG_CAP + len(MARKER)
    # Past the cap, appends are taken and dropped: the end stays where it is.
    assert bench.append(job, end, b"more").json() == {"offset": end}
    expected = line + second[: LOG_CAP - len(line)] + MARKER
    assert bench.log(job).body == expected
    assert bench.log(job, offset=LOG_CAP - 3).body == expected[LOG_CAP - 3 :]


def test_a_chunked_append_past_the_limit_is_refused_without_a_length(bench: Bench) -> None:
    """No Content-Length to refuse early: the body is counted as it arrives."""
    job = bench.running_job()
    before = bench.state()
    conn = http.client.HTTPConnection("127.0.0.1", bench.sched.port, timeout=60)
    try:
        chunks = (_line(MIB, salt=i) for i in range(6))
        conn.request(
            "POST",
            f"/api/v1/nodes/{bench.node}/jobs/{job}/logs?attempt=1&offset=0",
            body=chunks,
            headers={"Authorization": f"Bearer {bench.node_token}"},
            encode_chunked=True,
        )
        reply = conn.getresponse()
        status, body = reply.status, reply.read()
    except (BrokenPipeError, ConnectionResetError):
        # The scheduler may answer and close before the client has sent everything.
        reply = conn.getresponse()
        status, body = reply.status, reply.read()
    finally:
        conn.close()
    assert status == 413, body
    assert bench.log(job).body == b""
    assert bench.state() == before


INVALID_UTF8 = [
    b"\xff\xfe",  # bytes that never appear in UTF-8
    b"\xc0\xaf",  # an overlong "/"
    b"\xed\xa0\x80",  # a UTF-16 surrogate, encoded
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"\xe2\x82",  # a sequence cut short
    b"\x00\x00\x00",  # NULs
]


def test_invalid_utf8_and_nul_bytes_in_a_log_are_kept_byte_exact(bench: Bench) -> None:
    job = bench.running_job()
    data = b"".join(b"line " + bad + b" end\r\n" for bad in INVALID_UTF8) + bytes(range(256))
    # Appends that cut multi-byte sequences and CRLFs apart.
    offset = 0
    for size in itertools.cycle((1, 2, 3, 5, 7, 11)):
        if offset >= len(data):
            break
        piece = data[offset : offset + size]
        assert bench.append(job, offset, piece).json() == {"offset": offset + len(piece)}
        offset += len(piece)
    assert bench.log(job).body == data
    download = bench.log(job, download="1")
    assert download.body == data
    assert "attachment" in download.headers["content-disposition"]
    # A range may start inside a sequence: the bytes are still the bytes.
    assert bench.log(job, offset=7).body == data[7:]
    # A resend of bytes already stored, with other bytes, changes nothing.
    assert bench.append(job, 0, b"\x00" * 10).json() == {"offset": len(data)}
    assert bench.log(job).body == data


# --- request bodies --------------------------------------------------------------------------


def _utf8_cases(bench: Bench, job: str) -> list[tuple[str, str, str, bytes]]:
    """(token, method, path, body): JSON whose strings (or keys) hold invalid UTF-8."""
    node = f"/api/v1/nodes/{bench.node}"
    admin, agent, join = bench.admin, bench.node_token, bench.sched.join_token
    return [
        (admin, "POST", "/api/v1/jobs", b'{"image": "busybox", "name": "\xff"}'),
        (admin, "POST", "/api/v1/jobs", b'{"image": "busybox", "env": {"A": "\xc0\xaf"}}'),
        (admin, "POST", "/api/v1/jobs/batch", b'{"jobs": [{"image": "bu\xed\xa0\x80sy"}]}'),
        (admin, "POST", "/api/v1/jobs/cancel", b'{"ids": ["\xf4\x90\x80\x80"]}'),
        (admin, "POST", "/api/v1/tokens", b'{"role": "read", "name": "\xe2\x82"}'),
        (admin, "POST", f"{node}/drain", b'{"drain": true, "reason": "\xff"}'),
        (admin, "PUT", "/api/v1/groups/g", b'{"max_concurrent": 2, "\xff": 1}'),
        (admin, "POST", "/api/v1/session", b'{"token": "\xfe\xff"}'),
        (join, "POST", "/api/v1/nodes/register", b'{"name": "n\xff", "capacity": {}}'),
        (agent, "POST", f"{node}/heartbeat", b'{"executor_error": "\xed\xa0\x80"}'),
        (agent, "POST", f"{node}/jobs/{job}/report", b'{"attempt": 1, "error": "\xc0\xaf"}'),
        (agent, "POST", f"{node}/reports", b'{"reports": [{"job_id": "\xff", "attempt": 1}]}'),
    ]


def test_invalid_utf8_in_a_json_body_is_a_400_that_says_so(bench: Bench) -> None:
    job = bench.running_job()
    before = bench.state()
    job_before = bench.http.get(f"/api/v1/jobs/{job}", bench.admin)
    for token, method, path, body in _utf8_cases(bench, job):
        reply = bench.http.call(method, path, token=token, raw=body)
        assert reply.status == 400, (path, body, reply)
        error = reply.json()["error"]
        assert error["code"] == "invalid" and error["details"]["field"] == "$", (path, error)
        assert "UTF-8" in error["message"], (path, error)
    assert bench.state() == before
    assert bench.http.get(f"/api/v1/jobs/{job}", bench.admin) == job_before
    bench.still_serving()


BROKEN_JSON = [
    b'{"attempt": NaN}',
    b'{"attempt": Infinity}',
    b'{"attempt": 1e999}',
    b'{"attempt": 1',
    b'{"attempt": 1} trailing',
    b'\xef\xbb\xbf{"attempt": 1}',  # a byte order mark
    b'{"attempt": 1,}',
    b'{"attempt": 0x1}',
    b"{'attempt': 1}",
    b'{"attempt": 1, "error": "a\x00b"}',  # a raw NUL inside a string
    b"[" * 100_000 + b"]" * 100_000,
    b'{"progress": ' * 20_000 + b"{}" + b"}" * 20_000,
    b"\x00" * 64,
]


@pytest.mark.parametrize("body", BROKEN_JSON, ids=lambda b: repr(b[:24]))
def test_broken_json_in_an_agent_report_or_a_spec_is_a_400(bench: Bench, body: bytes) -> None:
    job = bench.running_job()
    before = bench.state()
    job_before = bench.http.get(f"/api/v1/jobs/{job}", bench.admin)
    node = f"/api/v1/nodes/{bench.node}"
    for token, path in (
        (bench.node_token, f"{node}/jobs/{job}/report"),
        (bench.node_token, f"{node}/heartbeat"),
        (bench.node_token, f"{node}/reports"),
        (bench.admin, "/api/v1/jobs"),
    ):
        reply = bench.http.call("POST", path, token=token, raw=body)
        assert reply.status == 400, (path, reply)
        assert reply.field is not None and reply.field.startswith("$"), (path, reply)
    assert bench.state() == before
    assert bench.http.get(f"/api/v1/jobs/{job}", bench.admin) == job_before


# --- headers, paths and query strings ------------------------------------------------------


def test_bad_bytes_and_overlong_values_in_headers_are_refused(bench: Bench) -> None:
    job = bench.running_job()
    before = bench.state()
    spec = {"body": SPEC}
    cases: list[tuple[str, str, dict[str, Any], int, str | None]] = [
        # (method, path, call arguments, status, field named)
        ("GET", "/api/v1/jobs", {"headers": {"Authorization": b"Bearer \xff\xfe"}}, 401, None),
        ("GET", "/api/v1/jobs", {"headers": {"Authorization": b"\xff \xff"}}, 401, None),
        ("GET", "/api/v1/jobs", {"headers": {"Cookie": b"berth_session=\xff\xfe"}}, 401, None),
        ("GET", "/api/v1/jobs", {"headers": {"Authorization": "Bearer " + "a" * 8000}}, 401, None),
    ]
    admin = {"Authorization": f"Bearer {bench.admin}"}
    # A DEL is refused by aiohttp's parser already; the others reach the route.
    for key, field in (
        (b"\xff\xfe", "Idempotency-Key"),
        (b"caf\xc3\xa9", "Idempotency-Key"),
        (b"tab\there", "Idempotency-Key"),
        (b"k" * 201, "Idempotency-Key"),
        (b"del\x7f", None),
    ):
        with_key = {**spec, "headers": {**admin, "Idempotency-Key": key}}
        cases.append(("POST", "/api/v1/jobs", with_key, 400, field))
    for path in ("/api/v1/events", f"/api/v1/jobs/{job}/events", f"/api/v1/jobs/{job}/logs"):
        for value in (b"\xff", b"1e3", b"-", b"9" * 5000):
            cases.append(
                ("GET", path, {"headers": {**admin, "Last-Event-ID": value}}, 400, "Last-Event-ID")
            )
    for method, path, kw, status, field in cases:
        reply = bench.http.call(method, path, **kw)
        assert reply.status == status, (path, kw.get("headers"), reply)
        if field is not None:
            assert reply.field == field, (path, reply)
    # Past aiohttp's own limits: a header longer than 8 KiB, more headers than it takes.
    for headers in (
        {**admin, "X-Long": "x" * 100_000},
        {**admin, **{f"X-Many-{i}": "1" for i in range(500)}},
    ):
        reply = bench.http.call("GET", "/api/v1/jobs", headers=headers)
        assert 400 <= reply.status < 500, reply
    assert bench.state() == before
    bench.still_serving()


def test_a_session_csrf_header_with_bad_bytes_is_forbidden(bench: Bench) -> None:
    login = bench.http.call("POST", "/api/v1/session", body={"token": bench.admin})
    assert login.status == 200, login
    cookie = login.headers["set-cookie"].split(";", 1)[0]
    before = bench.state()
    for csrf in (b"\xff\xfe", "é".encode(), b"x" * 5000, b""):
        reply = bench.http.call(
            "POST", "/api/v1/jobs", body=SPEC, headers={"Cookie": cookie, "X-CSRF-Token": csrf}
        )
        assert reply.status == 403, (csrf, reply)
    assert bench.state() == before
    bench.http.call("DELETE", "/api/v1/session", headers={"Cookie": cookie})


def _request(target: bytes, token: str) -> bytes:
    return (
        b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\nConnection: close\r\n\r\n"
    )


def test_bad_bytes_and_overlong_values_in_paths_and_query_strings_are_refused(
    bench: Bench,
) -> None:
    job = bench.running_job()
    before = bench.state()
    huge = b"99999999999999999999"
    cases: list[tuple[bytes, int, str | None]] = [
        # (request target, status, field named)
        (b"/api/v1/jobs?state=\xff\xfe", 400, None),
        (b"/api/v1/jobs/\xff", 400, None),
        (b"/api/v1/jobs?state=%FF%FE", 400, "state"),
        (b"/api/v1/jobs?limit=%FF", 400, "limit"),
        (b"/api/v1/jobs?limit=" + b"9" * 5000, 400, "limit"),
        (b"/api/v1/jobs?limit=1e3", 400, "limit"),
        (b"/api/v1/jobs?index=0&wait=nan", 400, "wait"),
        (b"/api/v1/jobs?index=0&wait=inf", 400, "wait"),
        (b"/api/v1/jobs?index=" + huge + b"0&wait=0", 400, "index"),
        (b"/api/v1/audit?after=" + huge, 400, "after"),
        (b"/api/v1/audit?actor=" + b"a" * 300, 400, "actor"),
        (b"/api/v1/events?since=" + huge, 400, "since"),
        (b"/api/v1/events?topics=%FF", 400, "topics"),
        (b"/api/v1/jobs/" + job.encode() + b"/logs?offset=" + huge, 400, "offset"),
        (b"/api/v1/jobs/" + job.encode() + b"/logs?attempt=%00", 400, "attempt"),
        (b"/api/v1/jobs/%FF%FE", 404, "id"),
        (b"/api/v1/jobs/%00", 404, "id"),
        (b"/api/v1/jobs?cursor=" + b"c" * 100_000, 400, None),
        (b"/api/v1/" + b"p" * 100_000, 400, None),
    ]
    for target, status, field in cases:
        got, answer = raw_request(bench.sched.port, _request(target, bench.admin))
        assert got == status, (target[:80], answer[:400])
        if field is not None:
            assert f'"field":"{field}"'.encode() in answer, (target[:80], answer[:400])
    assert bench.state() == before
    bench.still_serving()
