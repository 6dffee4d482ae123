"""Replay slots: tokens take turns, however many replays one of them queues."""

from __future__ import annotations

import asyncio

from scheduler.limits import FairSlots


def test_a_token_with_many_waiters_takes_one_turn_among_the_tokens() -> None:
    async def scenario() -> tuple[list[str], int]:
        slots = FairSlots(1)
        order: list[str] = []

        async def replay(key: str, name: str) -> None:
            for _ in range(2):
                async with slots.slot(key):
                    order.append(name)
                    await asyncio.sleep(0)

        # Four replays of one token queue before another token's single one.
        tasks = [asyncio.create_task(replay("mallory", f"m{i}")) for i in range(4)]
        tasks.append(asyncio.create_task(replay("alice", "a")))
        await asyncio.gather(*tasks)
        return order, len(slots._keys)

    order, keys_left = asyncio.run(scenario())
    # Alice's first chunk comes right after mallory's first, not after all eight.
    assert order.index("a") <= 2, order
    assert sorted(order) == sorted(["a", "a"] + [f"m{i}" for i in range(4)] * 2)
    assert keys_left == 0


def test_slots_bound_how_many_hold_at_once() -> None:
    async def scenario() -> int:
        slots = FairSlots(3)
        holding = most = 0

        async def replay(key: str) -> None:
            nonlocal holding, most
            async with slots.slot(key):
                holding += 1
                most = max(most, holding)
                await asyncio.sleep(0)
                holding -= 1

        await asyncio.gather(*(replay(f"t{i}") for i in range(10)))
        return most

    assert asyncio.run(scenario()) == 3
