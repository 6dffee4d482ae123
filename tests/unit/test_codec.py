"""The wire codec: validation errors name the offending field; records round-trip."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from common.codec import convert, decode, dumps, encode, loads, to_builtins
from common.errors import CodecError, InvalidRequest
from common.models import (
    Attempt,
    Constraints,
    Job,
    JobResources,
    JobSpec,
    Node,
    Progress,
    Report,
    Resources,
)
from common.states import JobState, NodeState


def _field_of(data: bytes | str) -> str:
    with pytest.raises(CodecError) as info:
        decode(data, JobSpec)
    assert info.value.status == 400
    return str(info.value.details["field"])


def test_a_minimal_spec_gets_the_documented_defaults() -> None:
    spec = decode(b'{"image": "busybox"}', JobSpec)
    assert spec.image == "busybox"
    assert spec.resources == JobResources(cpu=1.0, memory_mb=256, gpus=0)
    assert spec.priority == 50
    assert spec.max_retries == 0
    assert spec.network == "none"
    assert spec.command is None


def test_command_may_be_a_list_or_a_string() -> None:
    assert decode(b'{"image": "b", "command": ["echo", "hi"]}', JobSpec).command == ["echo", "hi"]
    assert decode(b'{"image": "b", "command": "echo hi"}', JobSpec).command == "echo hi"


def test_negative_cpu_names_the_nested_field() -> None:
    assert _field_of(b'{"image": "b", "resources": {"cpu": -1}}') == "$.resources.cpu"


def test_zero_cpu_is_refused_for_a_job() -> None:
    assert _field_of(b'{"image": "b", "resources": {"cpu": 0}}') == "$.resources.cpu"


def test_unknown_top_level_field_is_named() -> None:
    assert _field_of(b'{"image": "b", "imagee": "x"}') == "$.imagee"


def test_unknown_nested_field_is_named_with_its_path() -> None:
    assert _field_of(b'{"image": "b", "resources": {"cpu": 1, "disk": 2}}') == "$.resources.disk"


def test_missing_image_is_named() -> None:
    assert _field_of(b'{"name": "no image"}') == "$.image"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"image": 5}', "$.image"),
        (b'{"image": "b", "timeout_s": "10"}', "$.timeout_s"),
        (b'{"image": "b", "resources": {"memory_mb": 1.5}}', "$.resources.memory_mb"),
        (b'{"image": "b", "command": ["echo", 1]}', "$.command[1]"),
        (b'{"image": "b", "priority": "high"}', "$.priority"),
        (b'{"image": "b", "env": ["A=1"]}', "$.env"),
    ],
)
def test_a_value_of_the_wrong_type_names_its_field(body: bytes, field: str) -> None:
    assert _field_of(body) == field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"image": "b", "resources": {"memory_mb": 99999999999}}', "$.resources.memory_mb"),
        (b'{"image": "b", "resources": {"cpu": 100000}}', "$.resources.cpu"),
        (b'{"image": "b", "resources": {"gpus": 1000}}', "$.resources.gpus"),
        (b'{"image": "b", "priority": 101}', "$.priority"),
        (b'{"image": "b", "max_retries": -1}', "$.max_retries"),
        (b'{"image": "b", "timeout_s": 0}', "$.timeout_s"),
        (b'{"image": "b", "network": "overlay"}', "$.network"),
        (b'{"image": "has space"}', "$.image"),
        (b'{"image": ""}', "$.image"),
    ],
)
def test_an_out_of_range_value_names_its_field(body: bytes, field: str) -> None:
    assert _field_of(body) == field


@pytest.mark.parametrize(
    "body", [b'{"image":', b"", b"not json", b'{"image": "b"} trailing', "{'image': 'b'}"]
)
def test_malformed_json_points_at_the_root(body: bytes | str) -> None:
    assert _field_of(body) == "$"


def test_a_non_object_body_points_at_the_root() -> None:
    assert _field_of(b"[1, 2]") == "$"


def test_codec_error_is_an_invalid_request_with_a_message_naming_the_field() -> None:
    with pytest.raises(InvalidRequest) as info:
        decode(b'{"image": "b", "resources": {"cpu": -1}}', JobSpec)
    assert info.value.message.startswith("$.resources.cpu:")
    body = info.value.to_body()
    assert body["error"]["code"] == "invalid"
    assert body["error"]["details"] == {"field": "$.resources.cpu"}


def test_convert_validates_already_decoded_data_with_the_same_paths() -> None:
    assert convert({"image": "b"}, JobSpec).image == "b"
    with pytest.raises(CodecError) as info:
        convert({"image": "b", "resources": {"cpu": -2}}, JobSpec)
    assert info.value.details["field"] == "$.resources.cpu"
    with pytest.raises(CodecError) as info:
        convert({"attempt": 1, "bogus": True}, Report)
    assert info.value.details["field"] == "$.bogus"


def test_untyped_loads_of_malformed_json_points_at_the_root() -> None:
    assert loads(b'{"a": [1, 2]}') == {"a": [1, 2]}
    with pytest.raises(CodecError) as info:
        loads(b"{nope")
    assert info.value.details["field"] == "$"


def _full_job() -> Job:
    """A job with every field set, typed exactly as the model types it."""
    t0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    t1 = datetime(2024, 5, 1, 12, 0, 5, 250000, tzinfo=UTC)
    spec = JobSpec(
        image="busybox:latest",
        name="index-build",
        command=["sh", "-c", "echo hi"],
        env={"LANG": "C.UTF-8"},
        workdir="/work",
        resources=JobResources(cpu=0.5, memory_mb=512, gpus=1),
        timeout_s=90.0,
        max_retries=2,
        priority=70,
        constraints=Constraints(labels={"zone": "a"}),
        network="bridge",
        inputs="ab" * 32,
        labels={"team": "search"},
    )
    job = Job(
        id="0001a2b3c4d5e6",
        name="index-build",
        state=JobState.RUNNING,
        spec=spec,
        created_at=t0,
        reason=None,
        attempt=2,
        node_id="n0123456789abcd",
        assigned_at=t1,
        started_at=t1,
        progress=Progress(45.0, "Searching the index"),
        index=17,
        attempts=[
            Attempt(
                attempt=1,
                node_id="nffff",
                state=JobState.FAILED,
                assigned_at=t0,
                started_at=t0,
                finished_at=t1,
                exit_code=3,
                error="exit code 3",
            )
        ],
        failed_nodes=["nffff"],
        not_before=t1,
        retries=1,
        submitted_by="admin",
    )
    # Normalise the containers (list or tuple) to what the model declares.
    return convert(to_builtins(job), Job)


def test_a_job_survives_encode_then_decode_unchanged() -> None:
    job = _full_job()
    assert decode(encode(job), Job) == job


def test_an_encoded_job_uses_state_strings_and_rfc3339_utc_timestamps() -> None:
    doc = loads(encode(_full_job()))
    assert doc["state"] == "running"
    assert doc["attempts"][0]["state"] == "failed"
    assert doc["created_at"] == "2024-05-01T12:00:00Z"
    assert doc["started_at"] == "2024-05-01T12:00:05.250000Z"
    assert doc["spec"]["resources"] == {"cpu": 0.5, "memory_mb": 512, "gpus": 1}


def test_a_job_survives_to_builtins_then_convert_and_dumps_then_decode() -> None:
    job = _full_job()
    assert convert(to_builtins(job), Job) == job
    assert decode(dumps(job), Job) == job


def test_a_node_survives_encode_then_decode() -> None:
    node = Node(
        id="n1",
        name="worker-1",
        state=NodeState.BUSY,
        capacity=Resources(cpu=4.0, memory_mb=8192, gpus=0),
        registered_at=datetime(2024, 5, 1, tzinfo=UTC),
        allocated=Resources(cpu=1.5, memory_mb=1024),
        running_jobs=["j1"],
        labels={"zone": "a"},
    )
    assert decode(encode(node), Node) == node
