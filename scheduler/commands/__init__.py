"""The scheduler's commands: what routes call, one per request.

A command checks its input, applies it to the state, commits and returns: returned
means durable, raised means nothing changed. What must follow a commit (long polls
woken, a placement pass, events published, webhooks) follows from the change set.
"""

from __future__ import annotations

from scheduler.commands.admin import AdminCommands
from scheduler.commands.agents import AgentCommands
from scheduler.commands.jobs import ACTIONS, MAX_SELECTED, JobCommands
from scheduler.commands.reads import NOT_READABLE, Reads
from scheduler.commands.schedules import ScheduleCommands
from scheduler.commands.secrets import SecretCommands


class Scheduler(ScheduleCommands, SecretCommands, JobCommands, AgentCommands, AdminCommands, Reads):
    """The scheduler service with every command clients, agents and operators give."""


__all__ = ["ACTIONS", "MAX_SELECTED", "NOT_READABLE", "Scheduler"]
