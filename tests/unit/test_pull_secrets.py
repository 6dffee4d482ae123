"""Private registries' pure parts: reading an image_pull_secret in its two forms for an
image's registry, what a failed pull's error is masked with, the scheduler's rules for
jobs that name a pull secret, and how `berth job` and `berth submit` show and set them."""

from __future__ import annotations

import base64
import json

import docker.errors
import pytest

from agent.executors.docker import _unauthorized
from agent.registryauth import (
    DOCKER_HUB,
    PullSecret,
    PullSecretError,
    image_registry,
    pull_secret_of,
    registry_host,
)
from agent.secretvalues import MissingSecret
from cli.job_detail import job_detail
from cli.jobs_cmd import _with_rules
from cli.live_cmd import CommandError
from cli.run_cmd import image_pull_fields
from common import codec
from common.errors import InvalidRequest
from common.models import JobSpec, SecretRef
from common.states import JobState
from scheduler.commands.secrets import open_assignments
from scheduler.secretbox import KEY_BYTES, SecretBox
from scheduler.state.secrets import SECRET_MISSING
from tests.unit.test_cluster import FakeClock, job_spec, new_cluster, register
from tests.unit.test_job_detail import NOW, queued

KEY = bytes(range(KEY_BYTES))
PASSWORD = "pa55-Word:x"
SHORT = json.dumps({"registry": "registry.example.com", "username": "ci", "password": PASSWORD})


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _config(**auths: dict[str, str]) -> str:
    return json.dumps({"auths": auths})


# --- which registry ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("busybox", DOCKER_HUB),
        ("library/busybox:1", DOCKER_HUB),
        ("team/app@sha256:" + "a" * 64, DOCKER_HUB),
        ("docker.io/team/app", DOCKER_HUB),
        ("index.docker.io/team/app:2", DOCKER_HUB),
        ("localhost/app", "localhost"),
        ("127.0.0.1:5000/berth/private:1", "127.0.0.1:5000"),
        ("Registry.Example.com/a/b/c:3", "registry.example.com"),
    ],
)
def test_an_images_registry_is_read_as_docker_reads_it(image: str, registry: str) -> None:
    assert image_registry(image) == registry


def test_a_registry_counts_by_its_host_whatever_the_scheme_or_path() -> None:
    assert registry_host("https://Ghcr.io/v2/") == "ghcr.io"
    assert registry_host("http://127.0.0.1:5000") == "127.0.0.1:5000"
    assert registry_host("https://index.docker.io/v1/") == DOCKER_HUB
    assert registry_host("registry-1.docker.io") == DOCKER_HUB


# --- the two forms -------------------------------------------------------------------------


def test_the_short_form_gives_its_credentials_to_its_registry_only() -> None:
    secret = PullSecret("reg", SHORT)
    auth = secret.auth_for("registry.example.com/team/app:1")
    assert auth.auth_config() == {
        "serveraddress": "registry.example.com",
        "username": "ci",
        "password": PASSWORD,
    }
    with pytest.raises(PullSecretError) as wrong:
        secret.auth_for("ghcr.io/team/app:1")
    assert "registry.example.com" in wrong.value.message and "ghcr.io" in wrong.value.message
    assert PASSWORD not in wrong.value.message


def test_a_docker_config_gives_the_entry_of_the_images_registry() -> None:
    value = _config(
        **{
            "https://index.docker.io/v1/": {"auth": _auth("hubuser", "hub-pass")},
            "127.0.0.1:5000": {"auth": _auth("berth", PASSWORD)},
            "https://ghcr.io": {"username": "gh", "password": "gh-pass"},
            "quay.io": {"identitytoken": "tok-123"},
        }
    )
    secret = PullSecret("cfg", value)
    local = secret.auth_for("127.0.0.1:5000/berth/private:1").auth_config()
    assert local == {"serveraddress": "127.0.0.1:5000", "username": "berth", "password": PASSWORD}
    hub = secret.auth_for("busybox").auth_config()
    assert hub["username"] == "hubuser" and hub["serveraddress"] == "https://index.docker.io/v1/"
    assert secret.auth_for("ghcr.io/a/b").password == "gh-pass"
    assert secret.auth_for("quay.io/a/b").auth_config() == {
        "serveraddress": "quay.io",
        "identitytoken": "tok-123",
    }
    with pytest.raises(PullSecretError) as none:
        secret.auth_for("registry.example.com/a")
    text = none.value.message
    assert "no credentials for registry registry.example.com" in text
    assert "127.0.0.1:5000" in text and PASSWORD not in text


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("hunter2-not-json", "is not JSON"),
        ('["hunter2-in-a-list"]', "not a JSON object"),
        ('{"token": "hunter2"}', "neither form"),
        ('{"registry": "r.io", "username": "u"}', "lacks password"),
        (_config(**{"r.io": {"auth": "hunter2!!"}}), "not base64"),
        (_config(**{"r.io": {"password": "hunter2"}}), "without auth"),
        ('{"auths": ["hunter2"]}', "not an object"),
    ],
)
def test_a_malformed_value_is_refused_without_quoting_it(value: str, why: str) -> None:
    with pytest.raises(PullSecretError) as refused:
        PullSecret("bad", value).auth_for("r.io/app")
    assert why in refused.value.message and "'bad'" in refused.value.message
    assert "hunter2" not in refused.value.message


def test_the_credentials_are_masked_in_error_text_and_never_shown_by_repr() -> None:
    secret = PullSecret("cfg", _config(**{"r.io": {"auth": _auth("u", PASSWORD)}}))
    encoded = _auth("u", PASSWORD)
    text = f"dockerd said: {encoded} and {PASSWORD} are wrong for u"
    assert secret.redact(text) == "dockerd said: [masked] and [masked] are wrong for u"
    short = PullSecret("reg", SHORT)
    assert short.redact(f"bad {PASSWORD}") == "bad [masked]"
    assert PASSWORD not in repr(short) and PASSWORD not in repr(
        short.auth_for("registry.example.com/a")
    )
    assert PullSecret("odd", "not json").redact("x not json y") == "x [masked] y"


def test_a_pull_secret_comes_from_the_assignments_values_or_is_missing() -> None:
    spec = JobSpec(image="r.io/app", image_pull_secret="reg")
    assert pull_secret_of(spec, {"reg": SHORT}) == PullSecret("reg", SHORT)
    assert pull_secret_of(JobSpec(image="r.io/app"), {"reg": SHORT}) is None
    with pytest.raises(MissingSecret, match="image_pull_secret"):
        pull_secret_of(spec, {})


def test_a_refused_pull_is_told_apart_from_other_failures() -> None:
    def api_error(text: str) -> docker.errors.APIError:
        return docker.errors.APIError(text, explanation=text)

    for text in (
        'Head "http://127.0.0.1:5000/v2/a/manifests/1": no basic auth credentials',
        "unauthorized: authentication required",
        "pull access denied for team/app, repository does not exist or may require login",
    ):
        assert _unauthorized(api_error(text), text)
    for text in ("manifest for r.io/a:1 not found: manifest unknown", "connection refused"):
        assert not _unauthorized(api_error(text), text)


# --- the scheduler's rules -----------------------------------------------------------------


def test_a_pull_secret_must_be_the_owners_or_shared() -> None:
    c = new_cluster(FakeClock())
    box = SecretBox(KEY)
    c.put_secret("mine", "alice", False, box.key_id, box.seal("mine", b"{}"))
    c.put_secret("theirs", "bob", False, box.key_id, box.seal("theirs", b"{}"))
    c.put_secret("common", "admin", True, box.key_id, box.seal("common", b"{}"))
    for name in ("mine", "common"):
        c.check_secret_refs(job_spec(image_pull_secret=name), "alice", "$")
    for name in ("theirs", "nowhere"):
        with pytest.raises(InvalidRequest) as refused:
            c.check_secret_refs(job_spec(image_pull_secret=name), "alice", "$")
        assert refused.value.details == {"field": "$.image_pull_secret"}
        assert "may use" in refused.value.message


def test_a_pull_secret_is_delivered_and_deleting_it_fails_queued_jobs() -> None:
    clock = FakeClock()
    c = new_cluster(clock)
    box = SecretBox(KEY)
    c.put_secret("reg", "alice", False, box.key_id, box.seal("reg", SHORT.encode()))
    c.put_secret("tok", "alice", False, box.key_id, box.seal("tok", b"v"))
    spec = job_spec(image_pull_secret="reg", env={"T": SecretRef("tok")})
    assert spec.secret_names() == ["tok", "reg"]
    assert job_spec(image_pull_secret="tok", env={"T": SecretRef("tok")}).secret_names() == ["tok"]
    # Only a pull secret, no env: still delivered.
    register(c, "n1")
    runs, _ = c.submit(job_spec(image_pull_secret="reg"), submitted_by="alice")
    c.place()
    c.take_changes()
    node_id = next(iter(c.nodes))
    c.events.committed([], c.events.last_index)
    found, _ = c.pending_assignments(node_id, 0)
    out, failed = open_assignments(c, box, found)
    assert not failed and [a.job_id for a in out] == [runs.id]
    assert out[0].secrets == {"reg": SHORT}
    assert PASSWORD.encode() not in codec.encode(runs)
    # A queued job that needs it fails when it is deleted.
    waits, _ = c.submit(job_spec(cpu=64, image_pull_secret="reg"), submitted_by="alice")
    _info, failed_ids = c.delete_secret("reg")
    assert failed_ids == [waits.id]
    assert waits.state is JobState.FAILED and waits.error_code == SECRET_MISSING


# --- the command line ----------------------------------------------------------------------


def test_berth_job_shows_how_the_image_is_pulled() -> None:
    plain = job_detail(queued(JobSpec(image="busybox")), NOW)
    assert "pull " not in plain
    both = JobSpec(image="r.io/app", image_pull_secret="reg", pull_policy="always")
    assert "pull      always, with secret reg" in job_detail(queued(both), NOW)
    secret_only = JobSpec(image="r.io/app", image_pull_secret="reg")
    assert "pull      the agent's pull policy, with secret reg" in job_detail(
        queued(secret_only), NOW
    )
    assert "pull      never\n" in job_detail(queued(JobSpec(image="a", pull_policy="never")), NOW)


def test_berth_submit_sets_the_pull_fields_on_every_spec_checked_as_the_api_checks() -> None:
    specs = [JobSpec(image="a"), JobSpec(image="b", pull_policy="never")]
    fields = image_pull_fields("reg", "always")
    out = _with_rules(specs, fields)
    assert [(s.image_pull_secret, s.pull_policy) for s in out] == [("reg", "always")] * 2
    assert _with_rules(specs, image_pull_fields(None, None)) == specs
    with pytest.raises(CommandError, match="image_pull_secret"):
        _with_rules(specs, image_pull_fields("no/slash", None))
