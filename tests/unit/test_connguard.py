"""The connection guard's accounts and decisions, with plain objects and a fake clock."""

from __future__ import annotations

import re

import pytest

from scheduler.config import SchedulerConfig
from scheduler.connguard import ConnectionGuard, Shed, parse_networks


class FakeHandler:
    def __init__(self) -> None:
        self.dropped = False

    def drop(self) -> None:
        self.dropped = True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _guard(
    *, per_address: int = 2, exempt: str = "", fds: int = 10, limit: int = 1024, reserve: int = 64
) -> tuple[ConnectionGuard, list[Shed], Clock]:
    shed: list[Shed] = []
    clock = Clock()
    guard = ConnectionGuard(
        fd_limit=limit,
        fd_reserve=reserve,
        per_address=per_address,
        exempt=parse_networks(n for n in exempt.split(",") if n),
        on_shed=shed.append,
        clock=clock,
        count_fds=lambda: fds,
    )
    return guard, shed, clock


def test_an_address_holds_at_most_its_cap_of_unauthenticated_connections() -> None:
    guard, shed, _ = _guard(per_address=2)
    a = guard.admit(("203.0.113.7", 1000))
    b = guard.admit(("203.0.113.7", 1001))
    assert a is not None and b is not None
    assert guard.admit(("203.0.113.7", 1002)) is None
    assert shed == [Shed.ADDRESS_CAP]
    # Another address has a cap of its own.
    assert guard.admit(("203.0.113.8", 1000)) is not None
    # An authenticated connection no longer counts, nor does a closed one.
    guard.authenticated(a)
    c = guard.admit(("203.0.113.7", 1003))
    assert c is not None
    guard.closed(b)
    guard.closed(b)  # twice is once
    assert guard.admit(("203.0.113.7", 1004)) is not None
    assert guard.admit(("203.0.113.7", 1005)) is None
    figures = guard.figures()
    assert (figures.authenticated, figures.unauthenticated) == (1, 3)


def test_ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() -> None:
    guard, _, _ = _guard(per_address=1)
    assert guard.key_of(("2001:db8:1:2::5", 1, 0, 0)) == "2001:db8:1:2::/64"
    assert guard.key_of(("2001:db8:1:2:ffff::9", 1, 0, 0)) == "2001:db8:1:2::/64"
    assert guard.key_of(("::ffff:198.51.100.4", 1, 0, 0)) == "198.51.100.4"
    assert guard.admit(("2001:db8:1:2::5", 1, 0, 0)) is not None
    assert guard.admit(("2001:db8:1:2::6", 1, 0, 0)) is None


def test_exempt_networks_and_a_cap_of_zero_count_nothing() -> None:
    guard, _, _ = _guard(per_address=1, exempt="127.0.0.0/8,::1/128,10.1.0.0/16")
    for peer in (("127.0.0.1", 1), ("127.9.9.9", 1), ("::1", 1, 0, 0), ("10.1.2.3", 1)):
        assert guard.key_of(peer) is None
        assert all(guard.admit(peer) is not None for _ in range(5))
    assert guard.key_of(("::ffff:127.0.0.1", 1, 0, 0)) is None
    assert guard.key_of(("10.2.0.1", 1)) == "10.2.0.1"
    uncapped, _, _ = _guard(per_address=0)
    assert uncapped.key_of(("203.0.113.7", 1)) is None
    assert uncapped.key_of("/run/berth.sock") is None


def test_a_bad_network_is_named() -> None:
    with pytest.raises(ValueError, match=re.escape("'10.0.0.0/33'")):
        parse_networks(["127.0.0.0/8", "10.0.0.0/33"])


def test_room_is_what_the_reserve_leaves_and_the_oldest_unauthenticated_go_first() -> None:
    guard, shed, clock = _guard(per_address=0, fds=50, limit=100, reserve=10)
    handlers: list[FakeHandler] = []
    conns = []
    for i in range(40):
        assert guard.has_room()
        conn = guard.admit(("198.51.100.1", i), fileno=50 + i)
        assert conn is not None
        handler = FakeHandler()
        guard.attach(conn, handler)
        handlers.append(handler)
        conns.append(conn)
    # 50 other descriptors were counted before; 40 connections since make 90: the reserve.
    assert guard.open_fds() == 90
    assert not guard.has_room()
    guard.authenticated(conns[0])  # an agent's: never closed for room
    assert guard.make_room()
    dropped = [i for i, h in enumerate(handlers) if h.dropped]
    assert dropped == list(range(1, 17))
    assert shed == [Shed.FD_RESERVE] * 16
    # Those being closed count as free at once; their accounts end when they close.
    assert guard.has_room()
    for i in dropped:
        guard.closed(conns[i])
    assert guard.open_fds() == 74
    # Recounted later: the count of the process wins over the estimate.
    clock.now += 5
    guard._count_fds = lambda: 200
    assert guard.open_fds() == 200
    assert not guard.has_room()


def test_without_unauthenticated_connections_there_is_no_room_to_make() -> None:
    guard, _, _ = _guard(per_address=0, fds=95, limit=100, reserve=10)
    conn = guard.admit(("198.51.100.1", 1))
    assert conn is not None
    guard.attach(conn, FakeHandler())
    guard.authenticated(conn)
    assert not guard.has_room()
    assert not guard.make_room()


def test_a_descriptor_number_says_at_least_that_many_are_open() -> None:
    guard, _, _ = _guard(per_address=0, fds=10, limit=1024, reserve=64)
    assert guard.open_fds() == 10
    guard.admit(("198.51.100.1", 1), fileno=999)
    assert guard.open_fds() == 1000
    assert not guard.has_room()


def test_the_default_reserve_is_a_share_of_the_limit() -> None:
    config = SchedulerConfig()
    assert config.fd_reserve_of(1024) == 64
    assert config.fd_reserve_of(65536) == 4096
    assert config.fd_reserve_of(100) == 50
    config.fd_reserve = 500
    assert config.fd_reserve_of(65536) == 500
    assert config.fd_reserve_of(256) == 128
