"""What `berth dev` suggests running first, for each executor its agent may get.

The e2e tests (tests/e2e/test_dev.py) run the suggestion for real with dockerd and
without it; these cover the cases that cannot run anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.dev_cmd import LocalImage, client_env, first_job, small_image


def test_the_smallest_known_image_wins_whatever_its_registry() -> None:
    images = [
        LocalImage("python:3.11", 50_000_000),
        LocalImage("registry.example.org:5000/library/debian:12", 120_000_000),
        LocalImage("alpine:3.20", 8_000_000),
        LocalImage("berth-test/busybox:1", 2_000_000),
        LocalImage("busybox:latest", 4_000_000),
    ]
    assert small_image(images) == "berth-test/busybox:1"
    assert small_image(images[:3]) == "alpine:3.20"
    assert small_image(images[:2]) == "registry.example.org:5000/library/debian:12"
    assert small_image(images[:1]) is None


def test_with_docker_the_first_job_names_a_local_image() -> None:
    first = first_job("auto", [LocalImage("alpine:3.20", 1)])
    assert first.command == "berth run alpine:3.20 -- echo hello"
    assert first.note is None


@pytest.mark.parametrize("executor", ["process", "auto"])
def test_with_processes_the_first_job_runs_a_command_of_the_host(executor: str) -> None:
    # auto without a dockerd, or process even where one answers.
    images = None if executor == "auto" else [LocalImage("busybox:1", 1)]
    first = first_job(executor, images)
    assert first.command == "berth run busybox -- echo hello"
    assert first.note is not None and "local processes" in first.note


def test_docker_without_an_image_or_a_dockerd_points_to_the_process_executor() -> None:
    none_here = first_job("auto", [LocalImage("python:3.11", 1)])
    assert none_here.command is None
    assert none_here.note is not None and "berth dev --executor process" in none_here.note
    no_dockerd = first_job("docker", None)
    assert no_dockerd.command is None
    assert no_dockerd.note is not None and "dockerd does not answer" in no_dockerd.note


def test_the_client_is_told_only_what_it_would_not_find(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("BERTH_ADDR", "BERTH_TOKEN", "BERTH_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    state = tmp_path / "state"
    state.mkdir()
    (state / "admin.token").write_text("secret\n")
    assert client_env(["http://127.0.0.1:8750"], Path("state"), None) == []
    other = tmp_path / "elsewhere"
    assert client_env(["http://127.0.0.1:9000"], other, None) == [
        "BERTH_ADDR=http://127.0.0.1:9000",
        f"BERTH_STATE_DIR={other}",
    ]
    urls = ["https://127.0.0.1:8750", "https://127.0.0.1:8751"]
    assert client_env(urls, state, tmp_path / "ca.pem") == [
        "BERTH_ADDR=https://127.0.0.1:8750,https://127.0.0.1:8751",
        f"BERTH_CA_FILE={tmp_path / 'ca.pem'}",
    ]
    # A token in the environment wins over the state directory: name ours when it differs.
    monkeypatch.setenv("BERTH_TOKEN", "secret")
    assert client_env(["http://127.0.0.1:8750"], state, None) == []
    monkeypatch.setenv("BERTH_TOKEN", "someone-else")
    assert client_env(["http://127.0.0.1:8750"], state, None) == [
        f'BERTH_TOKEN="$(cat {state / "admin.token"})"'
    ]
