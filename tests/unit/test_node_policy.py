"""Node policy on plain objects: the allow-list's words, what a job needs, the agent's
refusal with links resolved, the spec's validation, the docker options it leads to, the
process executor's refusal, and the scheduler keeping such jobs off nodes that refuse."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from agent.executors.base import AttemptInfo
from agent.executors.docker import READ_ONLY_TMP, container_options
from agent.executors.process import unsupported
from agent.policy import NodePolicy
from common import codec, policy
from common.errors import CodecError, InvalidRequest
from common.models import JobResources, JobSpec, Mount, RegisterRequest, Resources
from common.states import JobState
from scheduler.config import SchedulerConfig
from scheduler.state import State

T0 = 1_700_000_000.0
INFO = AttemptInfo("j1", 1, "n1", 60.0, 64)


def spec(**fields: Any) -> JobSpec:
    return JobSpec(image="busybox", resources=JobResources(cpu=1.0, memory_mb=64), **fields)


# --- the allow-list's words --------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "canonical"),
    [
        ("privileged", "privileged"),
        (" host-network ", "host-network"),
        ("mount:/srv/data", "mount:/srv/data"),
        ("mount:/srv//data/./", "mount:/srv/data"),
        ("mount://srv", "mount:/srv"),
        ("mount:/", "mount:/"),
    ],
)
def test_allow_entries_are_made_canonical(item: str, canonical: str) -> None:
    assert policy.normalise(item) == canonical


@pytest.mark.parametrize(
    ("item", "complaint"),
    [
        ("mount:srv", "must be absolute"),
        ("mount:/srv/../etc", "may not contain '..'"),
        ("host", "is not one of privileged, host-network, mount:/PATH"),
        ("", "is not one of"),
    ],
)
def test_bad_allow_entries_are_refused_saying_why(item: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        policy.normalise(item)


def test_a_plain_job_needs_nothing() -> None:
    assert policy.needs(spec()) == ()
    assert policy.needs(spec(network="bridge", read_only=True, user="1000")) == ()


def test_needs_name_privileged_mode_the_host_network_and_each_mount_source() -> None:
    job = spec(
        privileged=True,
        network="host",
        mounts=(
            Mount("/srv/data/", "/data"),
            Mount("/srv/data", "/again"),
            Mount("//opt/x", "/x", read_only=False),
        ),
    )
    assert policy.needs(job) == ("privileged", "host-network", "mount:/srv/data", "mount:/opt/x")


def test_the_refusal_says_what_and_how_to_allow_it() -> None:
    assert policy.refusal("privileged") == (
        "refused by node policy: privileged mode is not allowed on this node "
        "(start the agent with --allow privileged)"
    )
    assert "host networking is not allowed" in policy.refusal("host-network")
    assert policy.refusal("mount:/srv/x").endswith(
        "mounting /srv/x from the host is not allowed on this node "
        "(start the agent with --allow mount:/srv/x or a directory above it)"
    )


# --- the agent's decision -----------------------------------------------------------------


def test_an_agent_without_an_allow_list_refuses_every_permission() -> None:
    agent = NodePolicy()
    assert agent.refusal(spec()) is None
    assert agent.refusal(spec(privileged=True)) == policy.refusal("privileged")
    assert agent.refusal(spec(network="host")) == policy.refusal("host-network")
    assert agent.refusal(spec(mounts=(Mount("/srv", "/srv"),))) == policy.refusal("mount:/srv")


def test_an_agent_allows_exactly_what_it_lists() -> None:
    agent = NodePolicy(["privileged", "mount:/srv/data"])
    assert agent.refusal(spec(privileged=True)) is None
    assert agent.refusal(spec(privileged=True, network="host")) == policy.refusal("host-network")
    assert agent.refusal(spec(mounts=(Mount("/srv/data/a", "/a"),))) is None
    assert agent.refusal(spec(mounts=(Mount("/srv/database", "/a"),))) == policy.refusal(
        "mount:/srv/database"
    )


def test_a_link_inside_an_allowed_directory_cannot_lead_a_mount_out(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    secret = tmp_path / "secret"
    allowed.mkdir()
    secret.mkdir()
    (allowed / "escape").symlink_to(secret)
    (allowed / "real").mkdir()
    agent = NodePolicy([f"mount:{allowed}"])
    escape = str(allowed / "escape")
    assert agent.refusal(spec(mounts=(Mount(escape, "/x"),))) == policy.refusal(f"mount:{escape}")
    assert agent.refusal(spec(mounts=(Mount(str(allowed / "real"), "/x"),))) is None


def test_links_are_resolved_on_the_allowed_side_too(tmp_path: Path) -> None:
    real = tmp_path / "disk"
    (real / "set").mkdir(parents=True)
    alias = tmp_path / "data"
    alias.symlink_to(real)
    # Allowed through the alias, asked for by the real path, and the other way round.
    assert (
        NodePolicy([f"mount:{alias}"]).refusal(spec(mounts=(Mount(str(real / "set"), "/s"),)))
        is None
    )
    assert (
        NodePolicy([f"mount:{real}"]).refusal(spec(mounts=(Mount(str(alias / "set"), "/s"),)))
        is None
    )


def test_the_agent_sends_its_entries_canonical_and_once() -> None:
    assert NodePolicy(["privileged", "mount:/srv/", "privileged"]).allow == (
        "privileged",
        "mount:/srv",
    )


# --- the spec's validation ---------------------------------------------------------------


def _error(body: dict[str, Any]) -> CodecError:
    with pytest.raises(CodecError) as caught:
        codec.decode(codec.dumps({"image": "busybox", **body}), JobSpec)
    return caught.value


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (
            {"mounts": [{"source": "srv", "target": "/s"}]},
            "$.mounts[0]",
            "source must be an absolute",
        ),
        (
            {
                "mounts": [
                    {"source": "/a", "target": "/b"},
                    {"source": "/srv/../etc", "target": "/e"},
                ]
            },
            "$.mounts[1]",
            "source must be an absolute path without '..'",
        ),
        (
            {"mounts": [{"source": "/a", "target": "b"}]},
            "$.mounts[0]",
            "target must be an absolute",
        ),
        (
            {"mounts": [{"source": "/a", "target": "/workspace"}]},
            "$.mounts[0]",
            "target may not be",
        ),
        ({"mounts": [{"source": "/a", "target": "/"}]}, "$.mounts[0]", "target may not be"),
        ({"mounts": [{"source": "/a"}]}, "$.mounts[0].target", "missing required field"),
        ({"user": "1000 0"}, "$.user", "matching regex"),
        ({"network": "container:x"}, "$.network", "Invalid enum value"),
        ({"privileged": "yes"}, "$.privileged", "Expected `bool`"),
    ],
)
def test_bad_hardening_fields_are_refused_naming_the_field(
    body: dict[str, Any], field: str, words: str
) -> None:
    error = _error(body)
    assert error.details == {"field": field}
    assert words in error.message
    assert error.message.startswith(f"{field}: ")


def test_the_hardening_fields_decode() -> None:
    decoded = codec.decode(
        codec.dumps(
            {
                "image": "busybox",
                "user": "1000:1000",
                "read_only": True,
                "privileged": True,
                "network": "host",
                "mounts": [{"source": "/srv/data", "target": "/data", "read_only": False}],
            }
        ),
        JobSpec,
    )
    assert decoded.user == "1000:1000"
    assert decoded.read_only and decoded.privileged
    assert decoded.network == "host"
    assert decoded.mounts == (Mount("/srv/data", "/data", read_only=False),)
    assert codec.decode(b'{"image": "x"}', JobSpec).mounts == ()


def test_a_register_request_with_a_bad_allow_entry_is_refused_naming_it() -> None:
    body = {"name": "n", "capacity": {"cpu": 1, "memory_mb": 1}, "allow": ["privileged", "root"]}
    with pytest.raises(CodecError) as caught:
        codec.decode(codec.dumps(body), RegisterRequest)
    assert caught.value.details == {"field": "$.allow[1]"}


# --- what the docker executor asks of dockerd ---------------------------------------------


def test_the_default_container_drops_everything_and_has_no_network() -> None:
    host = container_options(INFO, spec(), pids_limit=99)["host_config"]
    assert host["cap_drop"] == ["ALL"]
    assert host["security_opt"] == ["no-new-privileges"]
    assert host["network_mode"] == "none"
    assert host["pids_limit"] == 99
    for key in ("privileged", "read_only", "mounts", "tmpfs"):
        assert key not in host


def test_hardening_and_permissions_reach_the_container_options() -> None:
    opts = container_options(
        INFO,
        spec(
            user="1000",
            read_only=True,
            privileged=True,
            network="host",
            mounts=(Mount("/srv/link", "/data"),),
        ),
        sources=["/srv/real"],
    )
    host = opts["host_config"]
    assert opts["user"] == "1000"
    assert host["read_only"] is True
    assert host["tmpfs"] == {READ_ONLY_TMP: "rw,nosuid,nodev,size=64m"}
    assert host["privileged"] is True and "cap_drop" not in host
    assert host["network_mode"] == "host"
    [mount] = host["mounts"]
    # The resolved source is what is bound: the path the policy checked.
    assert (mount["Source"], mount["Target"], mount["ReadOnly"]) == ("/srv/real", "/data", True)


def test_a_job_mounting_its_own_tmp_gets_no_tmpfs_over_it() -> None:
    job = spec(read_only=True, mounts=(Mount("/srv/t", "/tmp/", read_only=False),))
    assert "tmpfs" not in container_options(INFO, job)["host_config"]


# --- the process executor -----------------------------------------------------------------


def test_the_process_executor_refuses_what_only_a_container_gives() -> None:
    assert unsupported(spec()) is None
    assert unsupported(spec(network="host")) is None
    refused = unsupported(spec(read_only=True, user="1000", privileged=True))
    assert refused is not None
    assert refused.startswith("the process executor cannot honour read_only, user, privileged")
    assert "mounts" in (unsupported(spec(mounts=(Mount("/a", "/b"),))) or "")


# --- the scheduler ------------------------------------------------------------------------


def _cluster() -> State:
    clock = [T0]
    return State(SchedulerConfig(restart_grace_s=0.0), clock=lambda: clock[0], rng=random.Random(1))


def _register(c: State, name: str, allow: list[str]) -> str:
    node, _ = c.register(
        RegisterRequest(
            name=name,
            capacity=Resources(cpu=4, memory_mb=4096),
            max_parallel=4,
            allow=allow,
        )
    )
    return node.id


def test_the_scheduler_places_a_job_only_on_a_node_that_allows_it() -> None:
    c = _cluster()
    plain = _register(c, "plain", [])
    open_ = _register(c, "open", ["privileged", "mount:/srv"])
    assert c.nodes[open_].allow == ["privileged", "mount:/srv"]
    assert c.nodes[plain].allow == []
    jobs = [c.submit(spec(privileged=True), submitted_by="t")[0] for _ in range(3)]
    mounting = c.submit(spec(mounts=(Mount("/srv/x", "/x"),)), submitted_by="t")[0]
    host_net = c.submit(spec(network="host"), submitted_by="t")[0]
    c.place()
    for job in [*jobs, mounting]:
        assert job.state is JobState.ASSIGNED
        assert job.node_id == open_
    assert host_net.state is JobState.QUEUED
    assert host_net.reason == (
        "0/2 nodes are available: 2 do not allow host networking (--allow host-network)"
    )
    assert host_net.pending == {"allow_list": 2}


def test_two_mounts_on_one_target_are_refused_naming_the_second() -> None:
    c = _cluster()
    twice = spec(mounts=(Mount("/a", "/data"), Mount("/b", "/data/")))
    with pytest.raises(InvalidRequest) as caught:
        c.submit(twice, submitted_by="t")
    assert caught.value.details == {"field": "$.mounts[1].target"}
    assert "another mount already has the target /data" in caught.value.message
