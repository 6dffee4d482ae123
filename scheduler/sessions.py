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

#: the cookie that carries the session id
COOKIE = "berth_session"
#: the header a cookie-authenticated mutation must carry
CSRF_HEADER = "X-CSRF-Token"
#: sessions end this long after they start
SESSION_TTL_S = 12 * 3600.0
#: the most sessions kept; the oldest go first
MAX_SESSIONS = 10_000


@dataclass(slots=True, frozen=True)
class Session:
    id: str
    csrf: str
    #: sha256 of the token that opened it: a revoked token ends its sessions
    token_digest: str
    expires: float


class Sessions:
    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}

    def open(self, token_digest: str) -> Session:
        now = time.monotonic()
        if len(self._by_id) >= MAX_SESSIONS:
            self._by_id.pop(next(iter(self._by_id)))
        session = Session(
            id=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(24),
            token_digest=token_digest,
            expires=now + SESSION_TTL_S,
        )
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str) -> Session | None:
        session = self._by_id.get(session_id)
        if session is None:
            return None
        if session.expires < time.monotonic():
            del self._by_id[session_id]
            return None
        return session

    def close(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)
