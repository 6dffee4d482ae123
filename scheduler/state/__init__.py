"""The scheduler's authoritative in-memory state and every change made to it.

Its methods are synchronous and do no I/O: each checks its inputs, changes the state,
and records what changed (records and events) in ``changes`` and what must follow in
``effects``. The commands around it make those changes durable before anyone is told
about them. The clock is injected, so liveness and timeouts are testable without
waiting.

The modules are layers, each built on the one before, named after what they hold:
records -> tokens -> blobrefs -> nodes -> lifecycle -> jobs -> agents -> sharing ->
scheduling -> liveness -> queries -> loading -> following -> schedules -> secrets.
"""

from __future__ import annotations

from scheduler.state.agents import LOG_CAP_BYTES, LOG_TRUNCATED_MARKER
from scheduler.state.blobrefs import Gone
from scheduler.state.following import Followed
from scheduler.state.jobs import RETRYABLE
from scheduler.state.nodes import AGENT_SHUTTING_DOWN
from scheduler.state.records import Effects
from scheduler.state.secrets import Secrets


class State(Secrets):
    """Jobs, nodes, tokens and the queue, with every change made to them."""


__all__ = [
    "AGENT_SHUTTING_DOWN",
    "LOG_CAP_BYTES",
    "LOG_TRUNCATED_MARKER",
    "RETRYABLE",
    "Effects",
    "Followed",
    "Gone",
    "State",
]
