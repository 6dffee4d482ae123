"""Browser sessions for the dashboard: a token, once presented, becomes an HttpOnly,
SameSite=Strict cookie, and every state-changing request made with that cookie must
carry the session's CSRF token in a header.

:class:`SessionBackend` is what the HTTP layer asks; two backends keep the sessions:

- :class:`Sessions` (SQLite, a single scheduler): in memory. A scheduler restart logs
  browsers out, which is acceptable for a dashboard and keeps no extra secret on disk.
- :class:`scheduler.sessions_pg.PostgresSessions` (``--store postgresql://...``): in
  the database, so that a browser stays logged in when a load balancer or a failover
  sends it to another scheduler sharing it.

Both keep the same rules: a session ends ``SESSION_TTL_S`` after it starts; a token has
at most ``MAX_SESSIONS_PER_TOKEN`` open and its next login ends its own oldest; past
``MAX_SESSIONS`` in all, expired ones are dropped and then new logins refused. A
revoked token ends its sessions because every request looks its token up again (the
HTTP layer does, by ``Session.token_digest``), not because a backend forgets them.
"""

from __future__ import annotations

import secrets
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.errors import TooManyRequests

if TYPE_CHECKING:
    from scheduler.config import SchedulerConfig

#: the cookie that carries the session id
COOKIE = "berth_session"
#: the header a cookie-authenticated mutation must carry
CSRF_HEADER = "X-CSRF-Token"
#: sessions end this long after they start
SESSION_TTL_S = 12 * 3600.0
#: the most sessions one token may have open; its own oldest go first
MAX_SESSIONS_PER_TOKEN = 100
#: the most sessions kept in all (a memory bound): past it, expired ones are dropped and
#: then new logins refused, since evicting another token's session would log it out
MAX_SESSIONS = 10_000


@dataclass(slots=True, frozen=True)
class Session:
    id: str
    csrf: str
    #: sha256 of the token that opened it: a revoked token ends its sessions
    token_digest: str
    #: when it ends, on its backend's clock (monotonic in memory, the epoch in a
    #: database that several hosts read)
    expires: float


class SessionBackend(ABC):
    """Where dashboard sessions are kept. ``get`` runs on every cookie-authenticated
    request, hence async: a backend may have to ask a database."""

    @abstractmethod
    async def open(self, token_digest: str) -> Session:
        """A new session for this token; its own oldest ends past the per-token cap.

        Raises TooManyRequests when the total cap is reached by other tokens' live
        sessions."""

    @abstractmethod
    async def get(self, session_id: str) -> Session | None:
        """The live session with this id, or None (unknown, closed or expired)."""

    @abstractmethod
    async def close(self, session_id: str) -> None:
        """End the session; an unknown id is no error."""

    async def stop(self) -> None:  # noqa: B027 - a backend with nothing to release
        """Release what the backend holds (a database pool) when the scheduler stops."""


def open_sessions(config: SchedulerConfig) -> SessionBackend:
    """The sessions of the store ``--store`` names: in PostgreSQL for a DSN, else in
    memory."""
    if config.postgres:
        # Only then: asyncpg is not loaded by a scheduler on SQLite.
        from scheduler.sessions_pg import PostgresSessions

        return PostgresSessions(config.store)
    return Sessions()


def too_many_sessions() -> TooManyRequests:
    """The refusal of a login past the total cap (the same from every backend)."""
    return TooManyRequests(
        "too many dashboard sessions are open; try again later", retry_after_s=60
    )


def new_session(token_digest: str, expires: float) -> Session:
    """A session with a new id and CSRF token, each from the system's CSPRNG."""
    return Session(
        id=secrets.token_urlsafe(32),
        csrf=secrets.token_urlsafe(24),
        token_digest=token_digest,
        expires=expires,
    )


class Sessions(SessionBackend):
    """Sessions in this process's memory (SQLite: one scheduler)."""

    def __init__(
        self, *, per_token: int = MAX_SESSIONS_PER_TOKEN, total: int = MAX_SESSIONS
    ) -> None:
        self.per_token = per_token
        self.total = total
        self._by_id: dict[str, Session] = {}
        #: token digest -> its session ids, oldest first
        self._by_token: dict[str, dict[str, None]] = {}

    async def open(self, token_digest: str) -> Session:
        now = time.monotonic()
        own = self._by_token.get(token_digest, {})
        while len(own) >= self.per_token:
            self._drop(next(iter(own)))
        if len(self._by_id) >= self.total:
            for old in [s for s in self._by_id.values() if s.expires < now]:
                self._drop(old.id)
        if len(self._by_id) >= self.total:
            raise too_many_sessions()
        session = new_session(token_digest, now + SESSION_TTL_S)
        self._by_id[session.id] = session
        self._by_token.setdefault(token_digest, {})[session.id] = None
        return session

    async def get(self, session_id: str) -> Session | None:
        session = self._by_id.get(session_id)
        if session is None:
            return None
        if session.expires < time.monotonic():
            self._drop(session_id)
            return None
        return session

    async def close(self, session_id: str) -> None:
        self._drop(session_id)

    def _drop(self, session_id: str) -> None:
        session = self._by_id.pop(session_id, None)
        if session is None:
            return
        own = self._by_token.get(session.token_digest)
        if own is not None:
            own.pop(session_id, None)
            if not own:
                del self._by_token[session.token_digest]
