"""Pure pieces of the agent: the progress parser, backoff, log shipping, final reports,
container options, and client error decoding."""

from __future__ import annotations

import pytest

from agent.executors.base import AttemptInfo, ExitStatus
from agent.executors.docker import container_options
from agent.logship import LogShipper
from agent.progress import LineSplitter, last_progress, parse_progress
from agent.runner import final_report
from common import codec
from common.client import Backoff, backoff_delay, error_from_body
from common.errors import Conflict, IllegalTransition, NotFound, StaleAttempt, Unavailable
from common.models import JobResources, JobSpec, Progress

# --- progress ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("::progress::45 Searching the index", Progress(45.0, "Searching the index")),
        (b"::progress::45 Searching the index\n", Progress(45.0, "Searching the index")),
        ("::progress::100", Progress(100.0, "")),
        ("::progress::12.5%  halfway there  ", Progress(12.5, "halfway there")),
        ("::progress::0 start\r\n", Progress(0.0, "start")),
    ],
)
def test_progress_lines_are_parsed(line: str | bytes, expected: Progress) -> None:
    assert parse_progress(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "plain output",
        " ::progress::45 indented",
        "::progress::",
        "::progress::abc",
        "::progress::101 too much",
        "::progress::-5 negative",
        "say ::progress::45",
    ],
)
def test_other_lines_are_not_progress(line: str) -> None:
    assert parse_progress(line) is None


def test_progress_lines_split_across_chunks_are_found() -> None:
    lines = LineSplitter()
    assert last_progress(lines, b"out\n::progr") is None
    assert last_progress(lines, b"ess::30 one\n::progress::60 two\nrest") == Progress(60.0, "two")
    assert lines.finish() == [b"rest"]


# --- backoff -------------------------------------------------------------------------------


def test_backoff_grows_exponentially_with_jitter_up_to_its_cap() -> None:
    low = [backoff_delay(n, base=0.1, cap=5.0, rand=lambda: 0.0) for n in range(10)]
    high = [backoff_delay(n, base=0.1, cap=5.0, rand=lambda: 1.0) for n in range(10)]
    assert low[:4] == pytest.approx([0.05, 0.1, 0.2, 0.4])
    assert high[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert max(high) == pytest.approx(5.0)
    assert min(low[-3:]) == pytest.approx(2.5)  # never below half the ceiling


def test_backoff_object_resets() -> None:
    b = Backoff(base=1.0, cap=8.0, rand=lambda: 1.0)
    assert [b.next() for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    b.reset()
    assert b.next() == 1.0


# --- log shipping against an in-memory log store with the scheduler's rules -------------------


class LogStore:
    """The scheduler's append rule: bytes up to ``end`` are ignored, a gap is a Conflict."""

    def __init__(self, cap: int = 1 << 30) -> None:
        self.data = bytearray()
        self.cap = cap
        self.fail_next = 0
        self.lose_reply_next = 0
        self.calls = 0

    async def append(self, offset: int, chunk: bytes) -> int:
        self.calls += 1
        if self.fail_next:
            self.fail_next -= 1
            raise Unavailable("scheduler away")
        end = len(self.data)
        if offset > end:
            raise Conflict("gap", {"offset": end})
        fresh = chunk[end - offset :]
        room = self.cap - end
        self.data += fresh[: max(0, room)]
        if self.lose_reply_next:
            self.lose_reply_next -= 1
            raise Unavailable("reply lost")
        return len(self.data)


async def test_shipper_sends_everything_in_order_in_batches() -> None:
    store = LogStore()
    ship = LogShipper(store.append, flush_bytes=10, max_append=8)
    ship.write(b"hello ")
    assert not ship.should_flush()
    ship.write(b"world, again\n")
    assert ship.should_flush()
    await ship.flush()
    assert bytes(store.data) == b"hello world, again\n"
    assert ship.pending == 0
    assert ship.offset == len(store.data)


async def test_shipper_lag_is_the_age_of_the_oldest_byte_not_yet_acknowledged() -> None:
    store = LogStore()
    now = [100.0]
    calls = 0

    async def second_append_fails(offset: int, chunk: bytes) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise Unavailable("scheduler away")
        return await store.append(offset, chunk)

    ship = LogShipper(second_append_fails, max_append=4, clock=lambda: now[0])
    assert ship.lag_s() == 0.0
    ship.write(b"abcd")
    now[0] = 103.0
    ship.write(b"efgh")
    now[0] = 110.0
    assert ship.lag_s() == 10.0
    with pytest.raises(Unavailable):
        await ship.flush()  # "abcd" is acknowledged, "efgh" is not
    assert ship.pending == 4
    assert ship.lag_s() == 7.0  # dated by the second write now
    await ship.flush()
    assert ship.lag_s() == 0.0 and ship.pending == 0
    assert bytes(store.data) == b"abcdefgh"


async def test_shipper_loses_nothing_when_appends_fail_or_replies_are_lost() -> None:
    store = LogStore()
    ship = LogShipper(store.append)
    ship.write(b"first\n")
    store.fail_next = 1
    with pytest.raises(Unavailable):
        await ship.flush()
    assert ship.pending == 6
    store.lose_reply_next = 1
    with pytest.raises(Unavailable):
        await ship.flush()  # stored, but the agent does not know
    ship.write(b"second\n")
    await ship.flush()  # the duplicate part is ignored by the server
    assert bytes(store.data) == b"first\nsecond\n"


async def test_shipper_resumes_from_the_server_end_after_a_restart() -> None:
    store = LogStore()
    store.data += b"line 1\nline 2\n"
    ship = LogShipper(store.append)
    assert await ship.sync() == 14
    # The executor replays the output from the start; what the server has is skipped.
    assert ship.write(b"line 1\nli") == b""
    assert ship.write(b"ne 2\nline 3\n") == b"line 3\n"
    await ship.flush()
    assert bytes(store.data) == b"line 1\nline 2\nline 3\n"


async def test_shipper_resends_from_the_end_the_server_names_on_a_conflict() -> None:
    store = LogStore()
    ship = LogShipper(store.append)
    ship.write(b"abc")
    await ship.flush()
    store.data = bytearray(b"ab")  # the server lost a byte it had acknowledged
    ship.write(b"def")
    await ship.flush()
    assert bytes(store.data).startswith(b"ab\n[berth: 1 bytes of output were lost]\n")
    assert bytes(store.data).endswith(b"def")


async def test_shipper_stops_at_the_server_cap() -> None:
    store = LogStore(cap=5)
    ship = LogShipper(store.append)
    ship.write(b"0123456789")
    await ship.flush()
    assert ship.capped
    ship.write(b"more")
    await ship.flush()
    assert bytes(store.data) == b"01234"
    assert store.calls == 1


async def test_shipper_does_not_retry_a_stale_attempt() -> None:
    async def stale(offset: int, chunk: bytes) -> int:
        raise StaleAttempt("not current")

    ship = LogShipper(stale)
    ship.write(b"x")
    with pytest.raises(StaleAttempt):
        await ship.flush()


# --- final reports -------------------------------------------------------------------------


def test_final_report_of_each_outcome() -> None:
    ok = final_report(2, ExitStatus(0), stopped_as=None)
    assert (ok.attempt, ok.state, ok.exit_code) == (2, "completed", 0)
    bad = final_report(1, ExitStatus(3), stopped_as=None)
    assert (bad.state, bad.exit_code, bad.error, bad.infra_failure) == (
        "failed",
        3,
        "exit code 3",
        False,
    )
    oom = final_report(1, ExitStatus(137, oom_killed=True), stopped_as=None, memory_mb=16)
    assert (oom.state, oom.error, oom.oom_killed) == (
        "failed",
        "out of memory (limit 16 MiB)",
        True,
    )
    late = final_report(1, ExitStatus(137), stopped_as="timed_out", timeout_s=2)
    assert (late.state, late.error) == ("timed_out", "timed out after 2 s")
    gone = final_report(1, ExitStatus(143), stopped_as="cancelled", reason="by alice")
    assert (gone.state, gone.error) == ("cancelled", "by alice")
    lost = final_report(1, ExitStatus(None, infra_error="lost"), stopped_as=None)
    assert (lost.state, lost.infra_failure, lost.exit_code) == ("failed", True, None)


# --- container options ---------------------------------------------------------------------


def test_container_options_lock_the_container_down() -> None:
    info = AttemptInfo("j1", 3, "n1", timeout_s=60.0, memory_mb=128)
    spec = JobSpec(
        image="img:1",
        command="echo hi",
        env={"A": "1"},
        workdir="/w",
        resources=JobResources(cpu=1.5, memory_mb=128),
        timeout_s=60,
    )
    opts = container_options(info, spec, pids_limit=100)
    assert opts["command"] == ["sh", "-c", "echo hi"]
    host = opts["host_config"]
    assert host["nano_cpus"] == 1_500_000_000
    assert host["mem_limit"] == host["memswap_limit"] == "128m"
    assert host["pids_limit"] == 100
    assert host["security_opt"] == ["no-new-privileges"]
    assert host["cap_drop"] == ["ALL"]
    assert host["network_mode"] == "none"
    assert opts["working_dir"] == "/w"
    assert opts["environment"]["A"] == "1"
    labels = opts["labels"]
    assert (labels["berth.job"], labels["berth.attempt"], labels["berth.node"]) == ("j1", "3", "n1")
    exec_form = container_options(info, JobSpec(image="i", command=["a", "b c"], network="bridge"))
    assert exec_form["command"] == ["a", "b c"]
    assert exec_form["host_config"]["network_mode"] == "bridge"
    assert container_options(info, JobSpec(image="i"))["command"] is None


# --- client error decoding -----------------------------------------------------------------


def _body(code: str, message: str = "m", details: dict[str, object] | None = None) -> bytes:
    return codec.dumps({"error": {"code": code, "message": message, "details": details or {}}})


def test_error_bodies_become_their_classes() -> None:
    e = error_from_body(409, _body("stale_attempt", "old", {"command": "cancel"}))
    assert isinstance(e, StaleAttempt)
    assert (e.message, e.details) == ("old", {"command": "cancel"})
    illegal = error_from_body(409, _body("illegal_transition", "cannot", {"from": "a"}))
    assert isinstance(illegal, IllegalTransition)
    assert illegal.message == "cannot"
    conflict = error_from_body(409, _body("conflict", "gap", {"offset": 7}))
    assert type(conflict) is Conflict
    assert conflict.details["offset"] == 7
    assert isinstance(error_from_body(404, b"<html>nope</html>"), NotFound)
    assert isinstance(error_from_body(503, _body("who_knows")), Unavailable)
