"""Every route of the scheduler, in the order the router tries them: API v1, the
probes and metrics, and the dashboard's files."""

from __future__ import annotations

from scheduler.routes import (
    agents,
    arrays,
    blobs,
    dashboard,
    events,
    groups,
    history,
    jobs,
    logs,
    nodes,
    owners,
    schedules,
    secrets,
    session,
    socket,
    system,
    tokens,
)
from scheduler.routes.table import Route

ROUTES: tuple[Route, ...] = tuple(
    route
    for module in (
        system,
        history,
        jobs,
        arrays,
        nodes,
        agents,
        events,
        socket,
        logs,
        groups,
        blobs,
        session,
        tokens,
        owners,
        schedules,
        secrets,
        dashboard,
    )
    for route in module.routes
)
