"""Browser sessions for the dashboard: a token, once presented, becomes an HttpOnly,
SameSite=Strict cookie, and every state-changing request made with that cookie must
carry the session's CSRF token in a header.

Sessions live in memory: a scheduler restart logs browsers out, which is acceptable
for a dashboard and keeps no extra secret on disk.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from common.errors import TooManyRequests

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
    expires: float


class Sessions:
    def __init__(
        self, *, per_token: int = MAX_SESSIONS_PER_TOKEN, total: int = MAX_SESSIONS
    ) -> None:
        self.per_token = per_token
        self.total = total
        self._by_id: dict[str, Session] = {}
        #: token digest -> its session ids, oldest first
        self._by_token: dict[str, dict[str, None]] = {}

    def open(self, token_digest: str) -> Session:
        """A new session for this token; its own oldest ends past ``per_token``.

        Raises TooManyRequests when ``total`` live sessions of other tokens are open."""
        now = time.monotonic()
        own = self._by_token.get(token_digest, {})
        while len(own) >= self.per_token:
            self.close(next(iter(own)))
        if len(self._by_id) >= self.total:
            for old in [s for s in self._by_id.values() if s.expires < now]:
                self.close(old.id)
        if len(self._by_id) >= self.total:
            raise TooManyRequests(
                "too many dashboard sessions are open; try again later", retry_after_s=60
            )
        session = Session(
            id=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(24),
            token_digest=token_digest,
            expires=now + SESSION_TTL_S,
        )
        self._by_id[session.id] = session
        self._by_token.setdefault(token_digest, {})[session.id] = None
        return session

    def get(self, session_id: str) -> Session | None:
        session = self._by_id.get(session_id)
        if session is None:
            return None
        if session.expires < time.monotonic():
            self.close(session_id)
            return None
        return session

    def close(self, session_id: str) -> None:
        session = self._by_id.pop(session_id, None)
        if session is None:
            return
        own = self._by_token.get(session.token_digest)
        if own is not None:
            own.pop(session_id, None)
            if not own:
                del self._by_token[session.token_digest]
