"""The records of stored secrets: what a client sends, what it reads back.

A secret is a named value kept encrypted by the scheduler. A job names it in its env
(``{"secret": NAME}``, ``common.models.SecretRef``); the value reaches only the node
that runs an attempt, inside its assignment. No reply, event, audit entry or log
carries a value: a client sends one and never reads it back.
Kept apart from ``common.models`` so that the job records stay one concern.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from msgspec import Meta, Struct

from common.models import NO_NUL, SecretName

#: the longest value a secret may hold (an environment value's bound, ``Arg``)
MAX_SECRET_BYTES = 65536

#: what a secret holds: any text an environment variable can carry (no NUL)
SecretValue = Annotated[str, Meta(min_length=1, max_length=MAX_SECRET_BYTES, pattern=NO_NUL)]


class SecretSet(Struct, forbid_unknown_fields=True, kw_only=True):
    """What a client sends to create a secret, or to give its own one a new value."""

    name: SecretName
    value: SecretValue
    #: every token's jobs may use it (only an admin makes or changes shared secrets);
    #: unset: a new secret is not shared, an existing one stays as it is
    shared: bool | None = None


class SecretInfo(Struct, kw_only=True):
    """A secret as shown: never its value."""

    name: str
    #: the token name that created it; its jobs may use it (every job when shared)
    owner: str
    shared: bool
    created_at: datetime
    #: when its value was last set
    updated_at: datetime


class SecretList(Struct):
    secrets: list[SecretInfo]


class SecretDeleted(Struct):
    """What DELETE /api/v1/secrets/{name} answers: the secret as it was, and the queued
    jobs that needed it, failed with ``error_code`` ``secret_missing``."""

    secret: SecretInfo
    failed_jobs: list[str]
