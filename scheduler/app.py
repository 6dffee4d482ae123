"""Builds the scheduler's aiohttp application and runs it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from ssl import SSLContext

from aiohttp import web

from common import codec, gcpolicy
from common.fdlimit import raise_nofile_limit
from common.tls import TLSSetupError, server_context
from scheduler.commands import Scheduler
from scheduler.config import SchedulerConfig
from scheduler.connguard import ConnectionGuard, parse_networks
from scheduler.deadlines import authenticated_middleware, handler_factory
from scheduler.http import (
    MAX_BODY,
    PRINCIPAL,
    PRINCIPAL_BY_DIGEST,
    PUBLIC_PATHS,
    SESSIONS,
    auth_middleware,
    errors_middleware,
)
from scheduler.leaderguard import LEADER_ROUTES, leader_middleware
from scheduler.listener import Listener, bind
from scheduler.openapi import document
from scheduler.routes import SERVICE
from scheduler.routes.registry import ROUTES
from scheduler.routes.system import OPENAPI
from scheduler.routes.table import (
    add_routes,
    bookkeeping_paths,
    leader_routes,
    public_paths,
    stateless_paths,
)
from scheduler.sessions import open_sessions
from scheduler.state import State
from scheduler.statedir import make_private
from scheduler.store.base import Store
from scheduler.store.sqlite import SQLiteStore
from scheduler.writeguard import BOOKKEEPING_PATHS, STATELESS_PATHS

log = logging.getLogger(__name__)

DB_FILE = "berth.db"
#: how long requests under way may take to finish when the scheduler stops
SHUTDOWN_TIMEOUT_S = 10.0
#: connections the kernel queues for accept
BACKLOG = 1024


def open_store(config: SchedulerConfig) -> Store:
    """The store ``--store`` names: PostgreSQL for a DSN, else SQLite in the state
    directory."""
    if config.postgres:
        # Only then: asyncpg is not loaded by a scheduler on SQLite.
        from scheduler.store.postgres import PostgresStore

        return PostgresStore(config.store, load_ended_docs=False)
    return SQLiteStore(config.state_dir / DB_FILE, load_ended_docs=False)


def build_app(config: SchedulerConfig) -> web.Application:
    state = State(config)
    store = open_store(config)
    svc = Scheduler(config, store, state)
    # Bodies over the limit are refused by aiohttp before they are read in full.
    app = web.Application(
        middlewares=[
            svc.metrics.middleware(),
            errors_middleware,
            auth_middleware,
            authenticated_middleware,
            leader_middleware,
            svc.guard.middleware,
        ],
        client_max_size=config.max_body_bytes,
    )
    app[SERVICE] = svc
    app[PRINCIPAL] = state.authenticate
    app[PRINCIPAL_BY_DIGEST] = lambda digest: state.tokens.live(digest)
    app[SESSIONS] = sessions = open_sessions(config)
    # The PostgreSQL sessions' pool opens on first use; it closes with the app.
    app.on_cleanup.append(lambda _: sessions.stop())
    app[MAX_BODY] = config.max_body_bytes
    app[PUBLIC_PATHS] = public_paths(ROUTES)
    app[STATELESS_PATHS] = stateless_paths(ROUTES)
    app[BOOKKEEPING_PATHS] = bookkeeping_paths(ROUTES)
    app[LEADER_ROUTES] = leader_routes(ROUTES)
    app[OPENAPI] = codec.dumps(document(ROUTES))
    add_routes(app.router, ROUTES)

    async def on_startup(_: web.Application) -> None:
        await svc.start()

    async def on_shutdown(_: web.Application) -> None:
        svc.release_waiters()

    async def on_cleanup(_: web.Application) -> None:
        await svc.stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


async def _listen(
    config: SchedulerConfig, runner: web.AppRunner, tls: SSLContext | None, fd_limit: int
) -> Listener:
    """Bind ``--listen`` and accept under a ConnectionGuard (scheduler/connguard.py)
    instead of aiohttp's TCPSite (scheduler/listener.py says why)."""
    assert runner.server is not None, "runner.setup() first"
    metrics = runner.app[SERVICE].metrics
    guard = ConnectionGuard(
        fd_limit=fd_limit,
        fd_reserve=config.fd_reserve_of(fd_limit),
        per_address=config.max_unauthenticated_per_address,
        exempt=parse_networks(config.unauthenticated_exempt),
        on_shed=lambda reason: metrics.connections_shed.labels(reason.value).inc(),
        on_pause=metrics.accept_pauses.inc,
    )
    metrics.watch_connections(guard.figures)
    host, port = config.host_port
    listener = Listener(
        await bind(host, port, backlog=BACKLOG),
        handler_factory(
            runner.server,
            guard,
            header_timeout_s=config.header_timeout_s,
            keepalive_timeout_s=config.keepalive_timeout_s,
        ),
        guard,
        tls=tls,
        handshake_timeout=config.header_timeout_s,
    )
    listener.start()
    log.info(
        "connections: header timeout %g s, at most %s unauthenticated per address, "
        "%d of %d descriptors kept in reserve",
        config.header_timeout_s,
        config.max_unauthenticated_per_address or "any number of",
        guard.fd_reserve,
        fd_limit,
    )
    return listener


async def serve(config: SchedulerConfig, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or ``stop`` is set), then shut down cleanly.

    With ``tls_cert`` and ``tls_key`` the port speaks HTTPS only. A certificate or key
    that cannot be used raises TLSSetupError before anything is opened.
    """
    tls = None
    if config.tls_cert is not None or config.tls_key is not None:
        if config.tls_cert is None or config.tls_key is None:
            raise TLSSetupError("a TLS certificate needs its key, and a key its certificate")
        tls = server_context(config.tls_cert, config.tls_key)
    # Before anything is written (a refused start leaves nothing behind): tokens, the
    # database and blobs are for this user only.
    make_private(config.state_dir)
    fd_limit = raise_nofile_limit()
    gcpolicy.tune()
    app = build_app(config)
    # handler_cancellation: a client that goes away (an SSE subscriber, a log follower)
    # ends its handler at once instead of at its next write.
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        handler_cancellation=True,
        keepalive_timeout=config.keepalive_timeout_s,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    try:
        listener = await _listen(config, runner, tls, fd_limit)
    except BaseException:
        await runner.cleanup()
        raise
    host, port = config.host_port
    scheme = "https" if tls is not None else "http"
    log.info(
        "listening on %s://%s:%d (state in %s)", scheme, host, port, config.state_dir.resolve()
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    listener.close()
    await runner.cleanup()
