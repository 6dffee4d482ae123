"""The tokens the scheduler knows: who may call it, in which role.

Only a token's sha256 is kept. People's tokens (admin, submit, read) are revoked by
marking them, so the audit log's names keep meaning something; an agent's node token
is dropped outright when the node registers again and gets a new one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from common.errors import Conflict, InvalidRequest, NotFound


@dataclass(slots=True, frozen=True)
class TokenRow:
    #: sha256 of the token; the token itself is never stored
    digest: str
    #: admin, submit or read for people; join and node for agents
    role: str
    name: str
    node_id: str | None = None
    #: a submit token that may see and act on every job, not only its own
    all_jobs: bool = False
    created_at: str | None = None
    created_by: str | None = None
    #: set when revoked: the row stays so the token's history reads whole
    revoked_at: str | None = None

    @property
    def id(self) -> str:
        """A public name for the token: a prefix of its digest, never the secret."""
        return self.digest[:12]


#: roles a person's token may have; ``join`` and ``node`` belong to agents
PERSON_ROLES = ("admin", "submit", "read")
JOIN = "join"
NODE = "node"
#: token names: they become job owners and audit actors, so they are plain and short
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


class TokenBook:
    def __init__(self, rows: Iterable[TokenRow] = ()) -> None:
        self._rows: dict[str, TokenRow] = {r.digest: r for r in rows}

    def __iter__(self) -> Iterator[TokenRow]:
        return iter(self._rows.values())

    def authenticate(self, token: str) -> TokenRow | None:
        """The live token matching ``token``, or None.

        The lookup is keyed by the sha256 of what was sent, which a caller cannot steer
        byte by byte; the final comparison is constant-time all the same.
        """
        digest = token_digest(token)
        row = self._rows.get(digest)
        if row is None or not hmac.compare_digest(row.digest, digest):
            return None
        return row if row.revoked_at is None else None

    def live(self, digest: str) -> TokenRow | None:
        """The token with this digest if it has not been revoked (for sessions)."""
        row = self._rows.get(digest)
        return row if row is not None and row.revoked_at is None else None

    def known(self, token: str) -> bool:
        """Whether this secret was ever issued, revoked or not."""
        return token_digest(token) in self._rows

    def put(self, row: TokenRow) -> TokenRow:
        self._rows[row.digest] = row
        return row

    def check_new(self, role: str, name: str) -> None:
        """A person's token: a known role and a name no live token has."""
        if role not in PERSON_ROLES:
            raise InvalidRequest(
                f"role must be one of {', '.join(PERSON_ROLES)}", {"field": "$.role"}
            )
        if not NAME_PATTERN.match(name):
            raise InvalidRequest(
                "name must be 1-64 letters, digits or ._@- and start with a letter or digit",
                {"field": "$.name"},
            )
        if any(r.name == name and r.revoked_at is None for r in self._rows.values()):
            raise Conflict(f"a live token is already named {name!r}", {"field": "$.name"})

    def find(self, token_id: str) -> TokenRow:
        """A person's or the join token by its public id (a digest prefix) or its name."""
        found = [
            r
            for r in self._rows.values()
            if r.role != NODE and (r.id == token_id or (r.name == token_id and not r.revoked_at))
        ]
        if len(found) != 1:
            raise NotFound(f"no token {token_id!r}")
        return found[0]

    def revoke(self, row: TokenRow, at: str) -> TokenRow:
        if row.revoked_at is not None:
            raise Conflict(f"token {row.id} is already revoked")
        return self.put(replace(row, revoked_at=at))

    def drop(self, digest: str) -> None:
        self._rows.pop(digest, None)

    def of_node(self, node_id: str) -> list[TokenRow]:
        return [r for r in self._rows.values() if r.node_id == node_id]

    def proves_node(self, token: str | None, node_id: str) -> bool:
        """Whether ``token`` is a live node token of this node (its agent's proof of
        identity when it registers again)."""
        if token is None:
            return False
        row = self.authenticate(token)
        return row is not None and row.role == NODE and row.node_id == node_id

    def listing(self, *, revoked: bool = False) -> list[TokenRow]:
        """People's tokens and the join token, oldest first; node tokens are on nodes."""
        rows = [
            r for r in self._rows.values() if r.role != NODE and (revoked or r.revoked_at is None)
        ]
        return sorted(rows, key=lambda r: (r.created_at or "", r.name))
