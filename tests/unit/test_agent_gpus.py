"""The agent's GPUs: ``--gpus``, discovery through the real NVML library (on a host
without an NVIDIA driver, its error paths), how an attempt's GPUs are named, and what
each executor is told."""

from __future__ import annotations

import logging
from pathlib import Path

import pynvml
import pytest

from agent import gpus
from agent.config import AgentConfig
from agent.daemon import Agent
from agent.executors.base import AttemptInfo
from agent.executors.docker import container_options
from agent.executors.process import ProcessExecutor
from common.models import GpuDevice, JobSpec


def nvml_answers() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


#: the error paths need a host where NVML cannot start (no driver or no library)
needs_no_nvml = pytest.mark.skipif(nvml_answers(), reason="NVML answers on this host")


def test_gpus_flag_takes_auto_none_or_indices() -> None:
    assert gpus.parse_selection("auto") == "auto"
    assert gpus.parse_selection(" None ") == "none"
    assert gpus.parse_selection("1,0") == (0, 1)
    for bad, why in (("0,0", "twice"), ("x", "not auto"), (",", "no GPU"), ("64", "0 to 63")):
        with pytest.raises(ValueError, match=why):
            gpus.parse_selection(bad)


@needs_no_nvml
def test_auto_without_a_driver_finds_no_gpus_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="agent.gpus"):
        found = gpus.discover("auto")
    assert found.devices == [] and not found.sampling
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("no GPUs found (NVML: ") for m in said), said
    # The reason is the library's own (here: no libnvidia-ml, or no driver).
    assert any("NVML Shared Library Not Found" in m or "Driver" in m for m in said), said


@needs_no_nvml
def test_indices_without_a_driver_are_offered_by_index_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.gpus"):
        found = gpus.discover((0, 1))
    assert found.devices == [GpuDevice(index=0), GpuDevice(index=1)]
    assert not found.sampling and found.sample() == []
    assert "offered by index only" in caplog.text
    found.close()


def test_none_offers_no_gpus_without_asking_nvml() -> None:
    found = gpus.discover("none")
    assert found.devices == [] and found.grant([]) is None


def test_an_attempts_gpus_are_named_by_uuid_where_known() -> None:
    offered = gpus.Gpus([GpuDevice(index=0, uuid="GPU-aaa", model="M"), GpuDevice(index=1)])
    assert offered.grant([1, 0]) == gpus.GpuGrant((1, 0), ("1", "GPU-aaa"))
    assert offered.grant([]) == gpus.GpuGrant((), ())
    assert gpus.Gpus().grant([0]) is None


def test_a_process_job_sees_only_its_gpus() -> None:
    env = gpus.process_env(gpus.GpuGrant((0, 2), ("GPU-a", "2")))
    assert env["BERTH_GPUS"] == "0,2"
    assert env["CUDA_VISIBLE_DEVICES"] == env["NVIDIA_VISIBLE_DEVICES"] == "GPU-a,2"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    none = gpus.process_env(gpus.GpuGrant())
    assert (none["CUDA_VISIBLE_DEVICES"], none["NVIDIA_VISIBLE_DEVICES"]) == ("", "none")
    assert gpus.process_env(None) == {"BERTH_GPUS": ""}


async def test_the_process_executor_puts_the_gpus_in_the_jobs_environment(
    tmp_path: Path,
) -> None:
    executor = ProcessExecutor(tmp_path / "work")
    grant = gpus.GpuGrant((1,), ("1",))
    info = AttemptInfo("j1", 1, "n1", timeout_s=30.0, memory_mb=64, gpus=grant)
    spec = JobSpec(
        image="ignored",
        # The job's own value does not widen what it was given.
        env={"CUDA_VISIBLE_DEVICES": "0,1"},
        command='echo "$BERTH_GPUS|$CUDA_VISIBLE_DEVICES|$NVIDIA_VISIBLE_DEVICES"',
    )
    ex = await executor.start(info, spec)
    try:
        out = b"".join([chunk async for chunk in ex.logs()])
        assert (await ex.wait()).exit_code == 0
    finally:
        await ex.remove()
    assert out.decode().strip() == "1|1|1"


def test_a_container_requests_exactly_its_gpus() -> None:
    grant = gpus.GpuGrant((0, 3), ("GPU-a", "GPU-d"))
    info = AttemptInfo("j1", 1, "n1", timeout_s=30.0, memory_mb=64, gpus=grant)
    opts = container_options(info, JobSpec(image="cuda"))
    (request,) = opts["host_config"]["device_requests"]
    assert request["DeviceIDs"] == ["GPU-a", "GPU-d"]
    assert request["Capabilities"] == [["gpu"]]
    assert request.get("Count", 0) == 0
    assert opts["environment"]["BERTH_GPUS"] == "0,3"

    plain = container_options(AttemptInfo("j2", 1, "n1", 30.0, 64), JobSpec(image="busybox"))
    assert "device_requests" not in plain["host_config"]
    assert plain["environment"]["BERTH_GPUS"] == ""


class _NoExecutor:
    kind = "process"


def test_the_agent_registers_its_gpus(tmp_path: Path) -> None:
    offered = gpus.Gpus(
        [
            GpuDevice(index=0, uuid="GPU-a", model="NVIDIA H200", memory_mb=143_771),
            GpuDevice(index=1),
        ]
    )
    config = AgentConfig(schedulers=["http://x"], join_token="t", state_dir=tmp_path)
    agent = Agent(config, _NoExecutor(), offered)  # type: ignore[arg-type]
    req = agent.register_request()
    assert req.capacity.gpus == 2
    assert [d.index for d in req.devices] == [0, 1]
    assert Agent(config, _NoExecutor()).register_request().capacity.gpus == 0  # type: ignore[arg-type]


class _FakeNvml:
    """NVML's device calls for two GPUs, put in place of the library's (this host has
    none): what a real driver answers, and a GPU that stops answering."""

    def __init__(self) -> None:
        self.lost: set[int] = set()
        self.shut = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        mib = 1024 * 1024

        class Memory:
            def __init__(self, i: int) -> None:
                self.total, self.used = 81_559 * mib, (100 + i) * mib

        class Rates:
            gpu = 42

        def rates(handle: int) -> Rates:
            if handle in self.lost:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
            return Rates()

        calls = {
            "nvmlInit": lambda: None,
            "nvmlShutdown": lambda: setattr(self, "shut", self.shut + 1),
            "nvmlDeviceGetCount": lambda: 2,
            "nvmlDeviceGetHandleByIndex": lambda i: i,
            "nvmlDeviceGetUUID": lambda h: f"GPU-{h}",
            "nvmlDeviceGetName": lambda h: b"NVIDIA A100-SXM4-80GB",
            "nvmlDeviceGetMemoryInfo": Memory,
            "nvmlDeviceGetUtilizationRates": rates,
        }
        for name, fn in calls.items():
            monkeypatch.setattr(pynvml, name, fn)


def test_with_nvml_each_gpu_is_registered_with_its_facts_and_sampled(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    nvml = _FakeNvml()
    nvml.install(monkeypatch)
    found = gpus.discover("auto")
    assert found.devices == [
        GpuDevice(index=i, uuid=f"GPU-{i}", model="NVIDIA A100-SXM4-80GB", memory_mb=81_559)
        for i in (0, 1)
    ]
    assert [(u.index, u.utilization_percent, u.memory_used_mb) for u in found.sample()] == [
        (0, 42.0, 100),
        (1, 42.0, 101),
    ]
    nvml.lost.add(1)
    with caplog.at_level(logging.WARNING, logger="agent.gpus"):
        assert [u.index for u in found.sample()] == [0]
        found.sample()
    assert caplog.text.count("GPU 1 cannot be read") == 1
    found.close()
    assert nvml.shut == 1

    assert [d.index for d in gpus.discover((1,)).devices] == [1]
    with pytest.raises(gpus.GpuError, match="names GPU 2, but NVML finds 2"):
        gpus.discover((0, 2))
