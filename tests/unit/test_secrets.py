"""Secrets' pure parts: sealing at rest, the key file, masking in output, the env an
attempt gets, and the state's rules for jobs that name secrets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.executors.base import AttemptInfo
from agent.executors.docker import LABEL_SECRET_ENV, container_options, secret_values
from agent.secretvalues import (
    MASK,
    LogMasker,
    MissingSecret,
    env_secret_values,
    plain_env,
    resolve_env,
    secret_env_names,
)
from common import codec
from common.errors import InvalidRequest
from common.models import Assignment, JobSpec, SecretRef
from common.schedule_models import ScheduleSpec
from common.states import JobState
from scheduler.commands.secrets import open_assignments
from scheduler.secretbox import (
    KEY_BYTES,
    SecretBox,
    SecretsKeyError,
    SecretUnreadable,
    load_key,
)
from scheduler.state.secrets import SECRET_MISSING, SECRET_UNREADABLE
from scheduler.store.base import Changes
from tests.unit.test_cluster import FakeClock, job_spec, new_cluster, register

KEY = bytes(range(KEY_BYTES))


# --- sealing -------------------------------------------------------------------------------


def test_a_sealed_value_opens_only_under_its_name_and_key() -> None:
    box = SecretBox(KEY)
    sealed = box.seal("db", b"hunter2")
    assert b"hunter2" not in sealed
    assert box.open("db", sealed, box.key_id) == b"hunter2"
    # A fresh nonce each time: the same value never seals the same way twice.
    assert box.seal("db", b"hunter2") != sealed
    with pytest.raises(SecretUnreadable):
        box.open("other", sealed, box.key_id)  # copied onto another secret's row
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SecretUnreadable):
        box.open("db", tampered, box.key_id)
    other = SecretBox(bytes(KEY_BYTES))
    assert other.key_id != box.key_id
    with pytest.raises(SecretUnreadable, match="another key"):
        other.open("db", sealed, box.key_id)
    with pytest.raises(SecretUnreadable):
        other.open("db", sealed, other.key_id)


def test_the_key_file_is_made_private_once_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "secrets.key"
    key = load_key(path)
    assert len(key) == KEY_BYTES
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_key(path) == key
    assert SecretBox(key).key_id not in path.read_text()


def test_a_key_file_open_to_others_or_malformed_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    load_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(SecretsKeyError, match="chmod 600"):
        load_key(path)
    os.chmod(path, 0o600)
    path.write_text("too short\n")
    with pytest.raises(SecretsKeyError, match="32 random bytes"):
        load_key(path)


# --- masking -------------------------------------------------------------------------------


def masked_in_chunks(values: list[str], data: bytes, cuts: list[int]) -> bytes:
    masker = LogMasker(values)
    out, start = [], 0
    for cut in sorted(set(cuts)):
        out.append(masker.feed(data[start:cut]))
        start = cut
    out.append(masker.feed(data[start:]))
    out.append(masker.flush())
    return b"".join(out)


def test_a_value_is_masked_wherever_it_appears() -> None:
    masker = LogMasker(["hunter2"])
    assert masker.feed(b"token is hunter2\nhunter2hunter2\n") == (
        b"token is [masked]\n[masked][masked]\n"
    )
    assert masker.mask_text("bad value hunter2") == "bad value [masked]"


def test_a_value_split_across_reads_is_masked() -> None:
    data = b"abc secret-value def\n"
    for cut in range(len(data) + 1):
        assert masked_in_chunks(["secret-value"], data, [cut]) == b"abc [masked] def\n"


def test_whole_lines_go_out_at_once_and_only_a_possible_start_is_held() -> None:
    masker = LogMasker(["a-long-secret"])
    assert masker.feed(b"line one\nline two\npartial") == b"line one\nline two\n"
    # What could be the start of a value (at most its length less one byte) is held;
    # more output lets the rest go.
    assert masker.feed(b" and more than the value's length") == b"partial and more than the va"
    assert masker.flush() == b"lue's length"


def test_the_longest_value_wins_and_blanks_around_a_value_do_not_hide_it() -> None:
    assert LogMasker(["ab", "abcd"]).mask(b"abcd ab") == b"[masked] [masked]"
    assert LogMasker(["value-from-a-file\n"]).mask(b"x value-from-a-file y") == (b"x [masked] y")


def test_a_value_with_a_line_break_is_masked_across_lines() -> None:
    value = "-----BEGIN KEY-----\nabc\n-----END KEY-----"
    data = f"key:\n{value}\nafter\n".encode()
    for cut in range(len(data) + 1):
        assert masked_in_chunks([value], data, [cut]) == b"key:\n" + MASK + b"\nafter\n"


def test_without_values_output_passes_unchanged() -> None:
    masker = LogMasker([])
    assert not masker.active
    assert masker.feed(b"partial") == b"partial"
    assert masker.flush() == b""


@given(
    values=st.lists(st.text("ab\nc", min_size=1, max_size=5), max_size=3),
    data=st.lists(st.sampled_from([b"a", b"b", b"c", b"\n"]), max_size=60).map(b"".join),
    cuts=st.lists(st.integers(0, 60), max_size=6),
)
def test_what_is_shipped_does_not_depend_on_how_the_output_was_read(
    values: list[str], data: bytes, cuts: list[int]
) -> None:
    assert masked_in_chunks(values, data, cuts) == LogMasker(values).mask(data)


# --- the attempt's environment ---------------------------------------------------------------


def test_secret_references_are_resolved_from_the_assignment() -> None:
    spec = JobSpec(image="busybox", env={"A": "1", "T": SecretRef("tok"), "U": SecretRef("tok")})
    assert spec.secret_names() == ["tok"]
    assert secret_env_names(spec) == ("T", "U")
    # Only what the env takes is masked: what a re-adopting agent finds there again.
    assert env_secret_values(spec, {"tok": "v", "pull": "x"}) == ["v"]
    resolved = resolve_env(spec, {"tok": "v"})
    assert plain_env(resolved) == {"A": "1", "T": "v", "U": "v"}
    assert spec.env["T"] == SecretRef("tok")  # the job's own spec keeps the reference
    with pytest.raises(MissingSecret, match="'tok'"):
        resolve_env(spec, {})
    with pytest.raises(MissingSecret):
        plain_env(spec)


def test_a_container_is_labelled_with_the_names_of_its_secret_variables_only() -> None:
    spec = resolve_env(JobSpec(image="busybox", env={"T": SecretRef("tok")}), {"tok": "hunter2"})
    info = AttemptInfo("j1", 1, "n1", 60.0, 256, secret_env=("T",))
    opts = container_options(info, spec)
    assert opts["environment"]["T"] == "hunter2"
    assert opts["labels"][LABEL_SECRET_ENV] == "T"
    assert "hunter2" not in codec.dumps(opts["labels"]).decode()
    # A re-adopting agent finds the values to mask again in the container's env.
    attrs = {"Config": {"Env": ["PATH=/bin", "T=hunter2", "X=y=z"]}}
    assert secret_values(attrs, "T") == ("hunter2",)
    assert secret_values(attrs, "") == ()


def test_an_assignment_is_sent_with_a_value_in_it_only_there() -> None:
    spec = JobSpec(image="busybox", env={"T": SecretRef("tok")})
    a = Assignment("j1", 1, spec, secrets={"tok": "hunter2"})
    assert codec.decode(codec.encode(a), Assignment).secrets == {"tok": "hunter2"}
    assert b"hunter2" not in codec.encode(spec)


# --- the state's rules ---------------------------------------------------------------------


def test_a_job_may_name_only_its_owners_secrets_and_shared_ones() -> None:
    c = new_cluster(FakeClock())
    box = SecretBox(KEY)
    c.put_secret("mine", "alice", False, box.key_id, box.seal("mine", b"1"))
    c.put_secret("theirs", "bob", False, box.key_id, box.seal("theirs", b"2"))
    c.put_secret("common", "admin", True, box.key_id, box.seal("common", b"3"))
    env = {"A": SecretRef("mine"), "C": SecretRef("common")}
    c.check_secret_refs(job_spec(env=env), "alice", "$")
    for name in ("theirs", "nowhere"):
        with pytest.raises(InvalidRequest) as refused:
            c.check_secret_refs(job_spec(env={"T": SecretRef(name)}), "alice", "$.jobs[0]")
        assert refused.value.details == {"field": "$.jobs[0].env.T"}
        assert "may use" in refused.value.message


def test_deleting_a_secret_fails_the_queued_jobs_that_need_it() -> None:
    clock = FakeClock()
    c = new_cluster(clock)
    box = SecretBox(KEY)
    c.put_secret("tok", "alice", False, box.key_id, box.seal("tok", b"v"))
    needs, _ = c.submit(job_spec(env={"T": SecretRef("tok")}), submitted_by="alice")
    other, _ = c.submit(job_spec(), submitted_by="alice")
    info, failed = c.delete_secret("tok")
    assert info.name == "tok" and failed == [needs.id]
    assert needs.state is JobState.FAILED and needs.error_code == SECRET_MISSING
    assert "tok" in (needs.reason or "") and other.state is JobState.QUEUED
    assert "tok" not in c.secrets and c.changes.deleted_secrets == ["tok"]
    assert "tok" not in c.changes.secrets


def test_an_assignment_gets_its_values_or_its_job_fails() -> None:
    clock = FakeClock()
    c = new_cluster(clock)
    register(c, "n1")
    box = SecretBox(KEY)
    c.put_secret("tok", "alice", False, box.key_id, box.seal("tok", b"hunter2"))
    c.put_secret("odd", "alice", False, "another-key", b"\x01" + bytes(40))
    good, _ = c.submit(job_spec(env={"T": SecretRef("tok")}), submitted_by="alice")
    stolen, _ = c.submit(job_spec(env={"T": SecretRef("tok")}), submitted_by="bob")
    unreadable, _ = c.submit(job_spec(env={"T": SecretRef("odd")}), submitted_by="alice")
    c.place()
    c.take_changes()
    node_id = next(iter(c.nodes))
    c.events.committed([], c.events.last_index)
    found, _ = c.pending_assignments(node_id, 0)
    assert len(found) == 3
    out, failed = open_assignments(c, box, found)
    assert failed and [a.job_id for a in out] == [good.id]
    assert out[0].secrets == {"tok": "hunter2"}
    assert stolen.state is JobState.FAILED and stolen.error_code == SECRET_MISSING
    assert unreadable.state is JobState.FAILED and unreadable.error_code == SECRET_UNREADABLE
    assert "hunter2" not in (stolen.reason or "") + (unreadable.reason or "")


def test_a_change_set_keeps_the_last_word_on_a_secret() -> None:
    box = SecretBox(KEY)
    c = new_cluster(FakeClock())
    c.put_secret("tok", "alice", False, box.key_id, box.seal("tok", b"v"))
    first = c.take_changes()
    c.delete_secret("tok")
    second = c.take_changes()
    c.put_secret("tok", "alice", False, box.key_id, box.seal("tok", b"w"))
    third = c.take_changes()
    merged = Changes()
    for changes in (first, second, third):
        merged.merge(changes)
    assert list(merged.secrets) == ["tok"] and merged.deleted_secrets == []
    merged = Changes()
    for changes in (first, second):
        merged.merge(changes)
    assert merged.secrets == {} and merged.deleted_secrets == ["tok"]


def test_a_schedules_run_that_needs_a_deleted_secret_is_skipped_saying_why() -> None:
    clock = FakeClock()
    c = new_cluster(clock)
    c.add_token("alice-token", "submit", "alice")
    box = SecretBox(KEY)
    c.put_secret("tok", "alice", False, box.key_id, box.seal("tok", b"v"))
    job = JobSpec(image="busybox", env={"T": SecretRef("tok")})
    c.put_schedule(
        ScheduleSpec(name="s", cron="* * * * * */10", job=job), owner="alice", create=True
    )
    clock.advance(10)
    assert c.tick_schedules() == 1
    c.delete_secret("tok")
    clock.advance(10)
    assert c.tick_schedules() == 0
    shown = c.schedule("s")
    assert shown.skipped == 1 and "'tok'" in str(shown.last_skip_reason)
