"""Periodic jobs, the pure part (scheduler.schedules) and the state's firings with an
injected clock."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from common.errors import Conflict, Forbidden, InvalidRequest, NotFound
from common.models import JobSpec
from common.schedule_models import RECENT_RUNS, Schedule, ScheduleSpec
from common.states import JobState
from scheduler.config import SchedulerConfig
from scheduler.schedules import Action, ScheduleBook, check, decide, next_after
from scheduler.state import State
from scheduler.store.base import Loaded
from tests.unit.test_cluster import FakeClock

UTC_ZONE = ZoneInfo("UTC")
#: 2026-01-01T00:00:00Z, a Thursday
JAN1 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


# --- next firing times -----------------------------------------------------------------


def test_five_fields_fire_on_the_minute() -> None:
    assert next_after("*/15 * * * *", UTC_ZONE, JAN1) == utc(2026, 1, 1, 0, 15)
    assert next_after("0 3 * * *", UTC_ZONE, JAN1) == utc(2026, 1, 1, 3, 0)


def test_the_next_time_is_strictly_after() -> None:
    assert next_after("0 * * * *", UTC_ZONE, utc(2026, 1, 1, 5)) == utc(2026, 1, 1, 6)


def test_a_sixth_field_is_seconds() -> None:
    assert next_after("* * * * * */2", UTC_ZONE, JAN1) == JAN1 + 2
    assert next_after("* * * * * 30", UTC_ZONE, JAN1) == JAN1 + 30
    assert next_after("5 4 * * * 3", UTC_ZONE, JAN1) == utc(2026, 1, 1, 4, 5, 3)


def test_times_are_read_in_the_schedules_timezone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 03:00 in Berlin is 02:00 UTC in winter, 01:00 UTC in summer.
    assert next_after("0 3 * * *", berlin, JAN1) == utc(2026, 1, 1, 2)
    assert next_after("0 3 * * *", berlin, utc(2026, 7, 1)) == utc(2026, 7, 1, 1)


def test_a_time_daylight_saving_skips_fires_at_the_next_that_exists() -> None:
    ny = ZoneInfo("America/New_York")
    # 2026-03-08 02:30 does not exist in New York: the clocks go from 02:00 to 03:00.
    fired = next_after("30 2 * * *", ny, utc(2026, 3, 8, 5))
    assert fired is not None
    local = datetime.fromtimestamp(fired, ny)
    assert (local.month, local.day) == (3, 8) and local.hour == 3


def test_an_expression_that_names_no_date_has_no_next_time() -> None:
    assert next_after("0 0 30 2 *", UTC_ZONE, JAN1) is None


def _spec(**kw: object) -> ScheduleSpec:
    fields: dict[str, object] = {"name": "s", "cron": "* * * * *", "job": JobSpec(image="x")}
    fields.update(kw)
    return ScheduleSpec(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"cron": "nonsense"}, "$.cron"),
        ({"cron": "60 * * * *"}, "$.cron"),
        ({"cron": "* * *"}, "$.cron"),
        ({"cron": "* * * * * * *"}, "$.cron"),
        ({"cron": "0 0 31 2 *"}, "$.cron"),
        ({"timezone": "Nowhere/Town"}, "$.timezone"),
        ({"timezone": "/etc/localtime"}, "$.timezone"),
        ({"timezone": "../zoneinfo/UTC"}, "$.timezone"),
        ({"timezone": ""}, "$.timezone"),
    ],
)
def test_check_names_the_field_it_refuses(kw: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        check(_spec(**kw), JAN1)
    assert e.value.details["field"] == field


def test_check_takes_good_expressions_and_zones() -> None:
    check(_spec(cron="0 3 * * 1-5", timezone="Europe/Berlin"), JAN1)
    check(_spec(cron="*/5 * * * * 10"), JAN1)


# --- what a firing does ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("overlap", "live", "action"),
    [
        ("allow", 0, Action.START),
        ("allow", 2, Action.START),
        ("forbid", 0, Action.START),
        ("forbid", 1, Action.SKIP),
        ("replace", 0, Action.START),
        ("replace", 1, Action.REPLACE),
    ],
)
def test_overlap_decides_a_firing_due_while_leading(
    overlap: str, live: int, action: Action
) -> None:
    got = decide(overlap=overlap, catch_up="none", due=100.0, led_since=50.0, live_runs=live)
    assert got.action is action
    assert (got.reason is not None) == (action is Action.SKIP)


def test_a_firing_missed_before_leading_is_skipped_with_catch_up_none() -> None:
    got = decide(overlap="allow", catch_up="none", due=40.0, led_since=50.0, live_runs=0)
    assert got.action is Action.SKIP and "catch_up none" in str(got.reason)


def test_a_firing_missed_before_leading_runs_with_catch_up_one() -> None:
    got = decide(overlap="allow", catch_up="one", due=40.0, led_since=50.0, live_runs=0)
    assert got.action is Action.START
    # The overlap policy still holds for it.
    got = decide(overlap="forbid", catch_up="one", due=40.0, led_since=50.0, live_runs=1)
    assert got.action is Action.SKIP


# --- the book of schedules -------------------------------------------------------------


def _schedule(name: str, next_at: float | None, paused: bool = False) -> Schedule:
    now = datetime.fromtimestamp(JAN1, UTC)
    return Schedule(
        name=name,
        cron="* * * * *",
        timezone="UTC",
        job=JobSpec(image="x"),
        overlap="allow",
        catch_up="none",
        paused=paused,
        owner="o",
        created_at=now,
        updated_at=now,
        next_run_at=datetime.fromtimestamp(next_at, UTC) if next_at is not None else None,
    )


def test_the_book_returns_due_schedules_earliest_first_once() -> None:
    book = ScheduleBook()
    book.put(_schedule("b", 20))
    book.put(_schedule("a", 10))
    book.put(_schedule("c", 30))
    assert book.next_time() == 10
    assert book.due(5) == []
    assert [s.name for s in book.due(25)] == ["a", "b"]
    # Taken off until put back.
    assert [s.name for s in book.due(25)] == []
    assert book.next_time() == 30


def test_a_changed_or_removed_schedule_leaves_no_stale_time() -> None:
    book = ScheduleBook()
    book.put(_schedule("a", 10))
    book.put(_schedule("a", 50))
    assert book.next_time() == 50
    book.put(_schedule("b", 5, paused=True))
    book.put(_schedule("c", None))
    assert book.next_time() == 50
    book.remove("a")
    assert book.next_time() is None and book.due(100) == []
    assert len(book) == 2


# --- firings in the state, with an injected clock ---------------------------------------


@pytest.fixture
def state(clock: FakeClock) -> State:
    clock.now = JAN1 + 0.5
    made = State(SchedulerConfig(), clock=clock, rng=random.Random(1))
    made.add_token("alice-secret", "submit", "alice")
    return made


def _make(state: State, **kw: object) -> Schedule:
    return state.put_schedule(_spec(**kw), owner="alice", create=True)


def _runs(state: State, name: str = "s") -> list[str]:
    return [j.id for j in state.jobs.values() if j.spec.labels.get("berth.schedule") == name]


def test_a_due_schedule_starts_one_run_as_its_owner_and_moves_on(
    state: State, clock: FakeClock
) -> None:
    made = _make(state, cron="* * * * * */10")
    assert made.next_run_at == datetime.fromtimestamp(JAN1 + 10, UTC)
    clock.now = JAN1 + 9.9
    assert state.tick_schedules() == 0
    # Late by three firing times: one run, the next time after now.
    clock.now = JAN1 + 35
    assert state.tick_schedules() == 1
    (job_id,) = _runs(state)
    job = state.jobs[job_id]
    assert job.submitted_by == "alice" and job.spec.labels["berth.schedule"] == "s"
    shown = state.schedule("s")
    assert shown.last_job_id == job_id
    assert shown.recent_runs[0].due == datetime.fromtimestamp(JAN1 + 10, UTC)
    assert shown.next_run_at == datetime.fromtimestamp(JAN1 + 40, UTC)
    # The run and the schedule's new times are in the same change set.
    changes = state.take_changes()
    assert job_id in changes.jobs and changes.schedules["s"] is shown


def test_forbid_skips_and_records_why(state: State, clock: FakeClock) -> None:
    _make(state, cron="* * * * * *", overlap="forbid")
    clock.now = JAN1 + 1
    assert state.tick_schedules() == 1
    clock.now = JAN1 + 2
    assert state.tick_schedules() == 0
    shown = state.schedule("s")
    assert shown.skipped == 1 and "overlap forbid" in str(shown.last_skip_reason)
    assert len(_runs(state)) == 1
    with pytest.raises(Conflict):
        state.run_schedule("s", by="alice")
    # Once the run ends, the next firing starts one.
    state.cancel(shown.last_job_id or "", by="test")
    clock.now = JAN1 + 3
    assert state.tick_schedules() == 1


def test_replace_cancels_the_run_still_going(state: State, clock: FakeClock) -> None:
    _make(state, cron="* * * * * *", overlap="replace")
    clock.now = JAN1 + 1
    state.tick_schedules()
    first = state.schedule("s").last_job_id
    clock.now = JAN1 + 2
    assert state.tick_schedules() == 1
    assert first is not None and state.jobs[first].state is JobState.CANCELLED
    assert state.schedule("s").last_job_id != first


def test_catch_up_applies_to_firings_due_before_leading(state: State, clock: FakeClock) -> None:
    _make(state, cron="* * * * * */10", catch_up="one")
    state.put_schedule(
        ScheduleSpec(name="n", cron="* * * * * */10", job=JobSpec(image="x"), catch_up="none"),
        owner="alice",
        create=True,
    )
    # Down from before the first firing until well after the third.
    clock.now = JAN1 + 45
    state.led_since = clock.now
    assert state.tick_schedules() == 1
    assert len(_runs(state, "s")) == 1 and _runs(state, "n") == []
    skipped = state.schedule("n")
    assert skipped.skipped == 1 and "catch_up none" in str(skipped.last_skip_reason)
    assert skipped.next_run_at == datetime.fromtimestamp(JAN1 + 50, UTC)
    # After that, firings due while leading fire whatever catch_up says.
    clock.now = JAN1 + 50
    assert state.tick_schedules() == 2


def test_a_run_that_cannot_be_submitted_is_a_skip_not_a_failure(
    state: State, clock: FakeClock
) -> None:
    state.config.max_queued_jobs = 0
    _make(state, cron="* * * * * *")
    clock.now = JAN1 + 1
    assert state.tick_schedules() == 0
    shown = state.schedule("s")
    assert "queue is full" in str(shown.last_skip_reason)
    assert shown.next_run_at == datetime.fromtimestamp(JAN1 + 2, UTC)


def test_recent_runs_keep_the_last_twenty(state: State) -> None:
    _make(state)
    ids = [state.run_schedule("s", by="alice").id for _ in range(RECENT_RUNS + 3)]
    assert [r.job_id for r in state.schedule("s").recent_runs] == ids[-RECENT_RUNS:]


def test_create_replace_delete(state: State) -> None:
    made = _make(state)
    with pytest.raises(Conflict):
        _make(state)
    state.run_schedule("s", by="alice")
    replaced = state.put_schedule(_spec(cron="0 3 * * *"), owner="bob", create=False)
    # The owner and the history stay.
    assert replaced.owner == "alice" and replaced.created_at == made.created_at
    assert len(replaced.recent_runs) == 1
    paused = state.put_schedule(_spec(paused=True), owner="alice", create=False)
    assert paused.next_run_at is None and state.schedules.next_time() is None
    state.delete_schedule("s")
    with pytest.raises(NotFound):
        state.schedule("s")
    changes = state.take_changes()
    assert changes.deleted_schedules == ["s"] and "s" not in changes.schedules
    with pytest.raises(NotFound):
        state.put_schedule(_spec(), owner="alice", create=False)


def test_loading_brings_the_schedules_and_their_times_back(state: State, clock: FakeClock) -> None:
    _make(state, cron="* * * * * */10")
    kept = list(state.take_changes().schedules.values())
    again = State(SchedulerConfig(), clock=clock, rng=random.Random(1))
    again.load(Loaded([], [], {}, [], 0, {}, schedules=kept))
    again.add_token("alice-secret", "submit", "alice")
    assert again.schedules.next_time() == JAN1 + 10
    clock.now = JAN1 + 10
    again.led_since = JAN1
    assert again.tick_schedules() == 1


def test_a_revoked_owner_s_schedule_starts_no_runs(state: State, clock: FakeClock) -> None:
    _make(state, cron="* * * * * *")
    row = state.tokens.find("alice")
    state.tokens.revoke(row, "2026-01-01T00:00:00Z")
    clock.now = JAN1 + 1
    assert state.tick_schedules() == 0
    assert "no live token" in str(state.schedule("s").last_skip_reason)
    with pytest.raises(Forbidden):
        state.run_schedule("s", by="admin")
    assert _runs(state) == []


def test_runs_count_against_the_owner_s_share_of_the_queue(state: State, clock: FakeClock) -> None:
    state.config.max_queued_jobs_per_token = 2
    _make(state, cron="* * * * * *")
    for second in (1, 2, 3):
        clock.now = JAN1 + second
        state.tick_schedules()
    assert len(_runs(state)) == 2
    assert "quota" in str(state.schedule("s").last_skip_reason)


def test_a_firing_that_fails_keeps_its_schedule_on_the_heap_at_its_next_time(
    state: State, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _make(state, cron="* * * * * *")

    def broken(*args: object, **kw: object) -> None:
        raise RuntimeError("broken submit")

    monkeypatch.setattr(state, "submit", broken)
    clock.now = JAN1 + 1
    with pytest.raises(RuntimeError):
        state.tick_schedules()
    # Not tried again at once, nor lost: the next second fires.
    assert state.schedules.next_time() == JAN1 + 2
    monkeypatch.undo()
    clock.now = JAN1 + 2
    assert state.tick_schedules() == 1
