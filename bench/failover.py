"""How long a PostgreSQL-backed scheduler trio is unavailable when the leader is SIGKILLed.

Starts a throwaway PostgreSQL cluster (``tests.pg.start_cluster``), three real `berth
scheduler` processes on one database (each with its own state directory and
``--advertise-url``), and one real `berth agent --executor process` (3 slots) given
all three URLs: real processes throughout, no simulated agents. Through ``BerthClient``
with all three URLs, three submit loops submit trivial jobs (each creates a marker file
and exits) one at a time with a 0.3 s pause, each submit resent under its
Idempotency-Key until acknowledged; the client's event stream (all three URLs) records
every job that completes. The rig is the one ``tests/chaos/test_failover.py`` runs,
without its audit triggers.

After a warm-up the leader is killed with SIGKILL ``--kills`` times (default 10), each
time started again at once on its state directory (it comes back as a standby), with
``--between-s`` seconds of load (default 3) before the next kill. For each kill:

- to_first_ack_s: from the kill to the acknowledgement of the first submit sent after it
  (a reply the dead leader had already sent does not count);
- to_first_completed_s: from the kill to the first job the scheduler recorded as
  completed after it (the job.state event's time, read from the event stream);
- new_leader, epoch: who took over, and the epoch it leads.

Afterwards it waits for every acknowledged job to end and counts those that did not
complete and the (job, attempt) pairs that ran twice. A killed scheduler that exits
while starting again is started once more, and the error it exited with is listed in
``restart_errors`` (a fault of its own, not part of the failover time).

Prints one JSON object: the per-kill figures, medians and maxima, and the targets
(first acknowledged submit: median <= 2 s, max <= 5 s) as booleans.

Run: ``python bench/failover.py [--kills 10] [--between-s 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.loop import event_loop_factory
from tests.chaos.test_failover import Follower, Load, Rig, Scheduler, read_markers, settle
from tests.pg import find_bin, start_cluster

TARGET_FIRST_ACK_MEDIAN_S = 2.0
TARGET_FIRST_ACK_MAX_S = 5.0
#: load before the first kill, so that the agent is running jobs when it comes
WARM_UP_S = 3.0
#: starts of a killed scheduler tried before the bench gives up
RESTART_TRIES = 3


async def bench(kills: int, between_s: float) -> dict[str, Any]:
    bindir = find_bin()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (Debian package postgresql)")
    cluster = start_cluster(bindir)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rig = Rig(cluster, Path(tmp), agents=("agent-1",), audit=False)
            try:
                return await _measure(rig, kills, between_s)
            finally:
                await rig.close()
    finally:
        cluster.stop()


async def _measure(rig: Rig, kills: int, between_s: float) -> dict[str, Any]:
    t_start = time.monotonic()
    await rig.start()
    assert rig.client is not None
    rig_start_s = time.monotonic() - t_start
    load = Load(rig.client, rig.markers, "bench")
    follower = Follower(rig.new_client())
    follower.start()
    load.start()
    per_kill: list[dict[str, Any]] = []
    walls: list[float] = []
    restart_errors: list[str] = []
    try:
        await asyncio.sleep(WARM_UP_S)
        killed_epoch = 0
        for _ in range(kills):
            leader, killed_epoch = await rig.leader(epoch_above=killed_epoch)
            walls.append(time.time())
            t_kill = time.monotonic()
            leader.proc.kill()
            to_ack = await load.wait_ack_after(t_kill)
            successor, epoch = await rig.leader(epoch_above=killed_epoch)
            per_kill.append(
                {
                    "killed": leader.name,
                    "new_leader": successor.name,
                    "epoch": epoch,
                    "to_first_ack_s": round(to_ack, 3),
                }
            )
            await _restart(rig, leader, restart_errors)
            await asyncio.sleep(between_s)
        await load.stop()
        ids = set(load.acked.values())
        jobs = await settle(rig.client, ids)
        (row,) = await rig.fetch("SELECT max(idx) AS hi FROM events")
        await follower.wait_for(row["hi"])
    finally:
        await follower.stop()
        await follower.client.close()
    for figures, wall in zip(per_kill, walls, strict=True):
        done = follower.first_completed_after(wall)
        figures["to_first_completed_s"] = None if done is None else round(done, 3)
    ran, twice = read_markers(rig.markers)
    completed = sum(1 for i in ids if i in jobs and jobs[i].state == "completed")
    acks = [k["to_first_ack_s"] for k in per_kill]
    dones = [k["to_first_completed_s"] for k in per_kill if k["to_first_completed_s"] is not None]
    ack_median = round(statistics.median(acks), 3)
    ack_max = max(acks)
    return {
        "kills": kills,
        "between_s": between_s,
        "schedulers": 3,
        "agents": "1 real agent, process executor, 3 slots",
        "rig_start_s": round(rig_start_s, 2),
        "per_kill": per_kill,
        "to_first_ack_s_median": ack_median,
        "to_first_ack_s_max": ack_max,
        "to_first_completed_s_median": round(statistics.median(dones), 3) if dones else None,
        "to_first_completed_s_max": max(dones) if dones else None,
        "acknowledged": len(ids),
        "completed": completed,
        "not_completed": len(ids) - completed,
        "runs": len(ran),
        "ran_twice": len(twice),
        "forked_submits": len(load.forked),
        "events_seen": len(follower.seen),
        "restart_errors": restart_errors,
        "targets": {
            "to_first_ack_s_median": TARGET_FIRST_ACK_MEDIAN_S,
            "to_first_ack_s_max": TARGET_FIRST_ACK_MAX_S,
            "to_first_ack_s_median_met": ack_median <= TARGET_FIRST_ACK_MEDIAN_S,
            "to_first_ack_s_max_met": ack_max <= TARGET_FIRST_ACK_MAX_S,
        },
    }


async def _restart(rig: Rig, s: Scheduler, errors: list[str]) -> None:
    """Start a killed scheduler again; one that exits while starting is counted in
    ``errors`` (the last error line of its log) and started once more."""
    for _ in range(RESTART_TRIES - 1):
        try:
            await rig.restart(s)
            return
        except RuntimeError as e:
            lines = [line for line in str(e).splitlines() if "Error" in line]
            errors.append(lines[-1] if lines else str(e)[-200:])
    await rig.restart(s)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--between-s", type=float, default=3.0)
    args = p.parse_args()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        result = runner.run(bench(args.kills, args.between_s))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
