"""The host's NVIDIA GPUs, found and watched through NVML (the ``nvidia-ml-py`` package).

``berth agent --gpus`` says which GPUs the agent offers:

- ``auto`` (the default): every GPU NVML finds. Without NVML (no driver, no library)
  there are none, and the agent says so once: "no GPUs found (NVML: <why>)".
- ``0,1``: those indices. With NVML each must exist, and is registered with its UUID,
  model and memory; without NVML they are registered by index only (UUID, model and
  memory unknown), which suits a host whose driver the agent cannot reach.
- ``none``: no GPUs; NVML is not asked.

With NVML the agent samples each offered GPU's utilisation and memory in use for its
heartbeats. An attempt's GPUs (``GpuGrant``) are named by UUID where known, so that
the CUDA runtime and the container toolkit see exactly those devices, else by index.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pynvml

from agent.config import GpuSelection
from common.models import MAX_GPUS, GpuDevice, GpuUse

log = logging.getLogger(__name__)

_MIB = 1024 * 1024


class GpuError(Exception):
    """The GPUs named cannot be offered (an index NVML does not know)."""


def parse_selection(text: str) -> GpuSelection:
    """``auto`` | ``none`` | comma-separated indices (``0,1``); ValueError otherwise."""
    word = text.strip().lower()
    if word in ("auto", "none"):
        return "auto" if word == "auto" else "none"
    try:
        named = [int(part) for part in word.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{text!r} is not auto, none or GPU indices like 0,1") from None
    if not named:
        raise ValueError("no GPU index given")
    if any(i < 0 or i >= MAX_GPUS for i in named):
        raise ValueError(f"a GPU index is 0 to {MAX_GPUS - 1}")
    if len(set(named)) != len(named):
        raise ValueError("a GPU index is named twice")
    return tuple(sorted(named))


@dataclass(frozen=True)
class GpuGrant:
    """The GPUs an attempt was given, on an agent that offers GPUs (possibly none)."""

    #: indices on the host, as the scheduler assigned them ($BERTH_GPUS)
    indices: tuple[int, ...] = ()
    #: the same GPUs as CUDA and the container toolkit name them: UUIDs, else indices
    ids: tuple[str, ...] = ()

    def process_env(self) -> dict[str, str]:
        """What a process job's environment holds so that it sees only its GPUs: none
        at all when it was given none."""
        ids = ",".join(self.ids)
        return {
            "BERTH_GPUS": ",".join(str(i) for i in self.indices),
            # Indices then count in PCI bus order, as NVML's do.
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "CUDA_VISIBLE_DEVICES": ids,
            "NVIDIA_VISIBLE_DEVICES": ids or "none",
        }


def process_env(grant: GpuGrant | None) -> dict[str, str]:
    """The GPU variables of a process job's environment: only its GPUs visible on an
    agent that offers GPUs; on one that offers none only an empty $BERTH_GPUS."""
    return {"BERTH_GPUS": ""} if grant is None else grant.process_env()


class Gpus:
    """The GPUs this agent offers, and (with NVML) their live use."""

    def __init__(self, devices: Sequence[GpuDevice] = (), handles: Sequence[Any] = ()) -> None:
        self.devices = list(devices)
        #: NVML handles, one per device; empty without NVML
        self._handles = list(handles)
        self._failing: set[int] = set()

    @property
    def sampling(self) -> bool:
        """Whether live use can be sampled (NVML answered)."""
        return bool(self._handles)

    def grant(self, indices: Sequence[int]) -> GpuGrant | None:
        """How an attempt given these GPUs names them; None when the agent offers none
        (a job then runs as it would without this feature)."""
        if not self.devices:
            return None
        uuids = {d.index: d.uuid for d in self.devices}
        ids = tuple(uuids.get(i) or str(i) for i in indices)
        return GpuGrant(tuple(indices), ids)

    def sample(self) -> list[GpuUse]:
        """Each GPU's utilisation and memory in use (blocking; NVML calls are short).
        A GPU NVML cannot read is left out, and said so once until it answers again."""
        if not self._handles:
            return []
        out = []
        for device, handle in zip(self.devices, self._handles, strict=True):
            try:
                rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            except pynvml.NVMLError as e:
                if device.index not in self._failing:
                    self._failing.add(device.index)
                    log.warning("GPU %d cannot be read (NVML: %s)", device.index, e)
                continue
            self._failing.discard(device.index)
            out.append(
                GpuUse(
                    index=device.index,
                    utilization_percent=float(min(100, max(0, rates.gpu))),
                    memory_used_mb=int(memory.used) // _MIB,
                )
            )
        return out

    def close(self) -> None:
        if self._handles:
            self._handles = []
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError as e:
                log.debug("NVML shutdown: %s", e)


def discover(selection: GpuSelection) -> Gpus:
    """The GPUs to offer for ``--gpus``; raises GpuError when it names one NVML lacks."""
    if selection == "none":
        return Gpus()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        if selection == "auto":
            log.info("no GPUs found (NVML: %s)", e)
            return Gpus()
        listed = ",".join(str(i) for i in selection)
        log.warning(
            "NVML is not available (%s): GPUs %s are offered by index only, their model, "
            "memory and use unknown",
            e,
            listed,
        )
        return Gpus([GpuDevice(index=i) for i in selection])
    try:
        return _from_nvml(selection if isinstance(selection, tuple) else None)
    except BaseException:
        pynvml.nvmlShutdown()
        raise


def _from_nvml(named: tuple[int, ...] | None) -> Gpus:
    """The GPUs NVML finds (``named``: only those indices, each of which must exist)."""
    count = pynvml.nvmlDeviceGetCount()
    wanted: Sequence[int]
    if named is None:
        wanted = range(min(count, MAX_GPUS))
        if not count:
            log.info("no GPUs found (NVML: no devices)")
    else:
        missing = [i for i in named if i >= count]
        if missing:
            found = f"{count} (indices 0 to {count - 1})" if count else "none"
            raise GpuError(f"--gpus names GPU {missing[0]}, but NVML finds {found}")
        wanted = named
    devices, handles = [], []
    for i in wanted:
        handle = pynvml.nvmlDeviceGetHandleByIndex(i)
        devices.append(
            GpuDevice(
                index=i,
                uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                model=_text(pynvml.nvmlDeviceGetName(handle)),
                memory_mb=max(1, int(pynvml.nvmlDeviceGetMemoryInfo(handle).total) // _MIB),
            )
        )
        handles.append(handle)
    if not devices:
        pynvml.nvmlShutdown()
        return Gpus()
    for d in devices:
        log.info("GPU %d: %s, %s MiB, %s", d.index, d.model, d.memory_mb, d.uuid)
    return Gpus(devices, handles)


def _text(value: str | bytes) -> str | None:
    """NVML's strings (bytes from older bindings, str from newer ones); None if empty."""
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    return text.strip() or None
