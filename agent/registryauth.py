"""The credentials a job's image is pulled with, read from its ``image_pull_secret``.

A job may name a stored secret as its ``image_pull_secret``; the scheduler sends the
value inside the attempt's assignment, as it sends the values of env secrets. The value
is JSON in one of two forms:

- ``{"registry": "registry.example.com", "username": "...", "password": "..."}``;
- a Docker config JSON (what ``docker login`` writes to ``~/.docker/config.json``):
  ``{"auths": {"registry.example.com": {"auth": base64("user:password")}, ...}}``, an
  entry holding ``auth``, or ``username`` and ``password``, or an ``identitytoken``.

An image's registry is read as Docker reads it: the first part of its name when that
holds a dot or a colon or is ``localhost``, else Docker Hub (``docker.io``). A
registry named with a scheme or a path (``https://ghcr.io/v2/``) counts by its host,
and Docker Hub by any of its names. The credentials for the image's registry are used,
and only those: a secret that holds none for it fails the attempt (the job's fault)
instead of sending them to another registry. Credential helpers (``credsStore``,
``credHelpers``) are never run.

The agent keeps the credentials in memory and hands them to dockerd with the pull
request (the Engine API's ``X-Registry-Auth`` header), which keeps them no longer than
the pull; they are written nowhere. No error of this module quotes the value, and
:meth:`PullSecret.redact` masks the credentials in the error text of a failed pull.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.secretvalues import LogMasker, MissingSecret
from common.models import JobSpec

#: the registry of an image whose name names none
DOCKER_HUB = "docker.io"
#: the other names of Docker Hub in Docker config files and image names
_DOCKER_HUB_NAMES = frozenset(
    {DOCKER_HUB, "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
#: the server address Docker gives credentials for Docker Hub
_DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
#: the fields of a Docker config entry, or of the short form, that hold a credential
_CREDENTIAL_FIELDS = ("password", "auth", "identitytoken", "registrytoken")
#: the forms a pull secret may take, for error messages
FORMS = (
    'JSON {"registry": ..., "username": ..., "password": ...} or a Docker config JSON '
    '{"auths": {REGISTRY: {"auth": ...}}}'
)


class PullSecretError(Exception):
    """A pull secret that cannot be used for the image: the job's fault. The message
    never quotes the value."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def registry_host(text: str) -> str:
    """A registry as written in a secret or a config (``https://Ghcr.io/v2/``,
    ``127.0.0.1:5000``) as the host it names, Docker Hub as ``docker.io``."""
    host = text.strip()
    for scheme in ("https://", "http://"):
        if host.lower().startswith(scheme):
            host = host[len(scheme) :]
    host = host.split("/", 1)[0].lower()
    return DOCKER_HUB if host in _DOCKER_HUB_NAMES else host


def image_registry(image: str) -> str:
    """The registry host an image is pulled from (as Docker reads its name)."""
    first, sep, _ = image.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost"):
        return DOCKER_HUB
    return registry_host(first)


@dataclass(frozen=True)
class RegistryAuth:
    """The credentials for one registry; never shown by ``repr``."""

    registry: str
    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)

    def auth_config(self) -> dict[str, str]:
        """The ``auth_config`` of the Docker SDK's pull (sent as X-Registry-Auth)."""
        server = _DOCKER_HUB_SERVER if self.registry == DOCKER_HUB else self.registry
        config = {"serveraddress": server}
        if self.identity_token:
            config["identitytoken"] = self.identity_token
        else:
            config["username"] = self.username
            config["password"] = self.password
        return config


@dataclass(frozen=True)
class PullSecret:
    """A job's ``image_pull_secret``: its name and the value the assignment brought."""

    name: str
    value: str = field(repr=False)

    def auth_for(self, image: str) -> RegistryAuth:
        """The credentials for ``image``'s registry; PullSecretError when the value is
        not one of the two forms or holds none for that registry."""
        host = image_registry(image)
        doc = self._document()
        if "auths" in doc:
            return self._from_config(doc["auths"], host)
        if "registry" in doc or "username" in doc or "password" in doc:
            return self._from_short_form(doc, host, image)
        raise self._error(f"holds neither form: {FORMS}")

    def masked_values(self) -> list[str]:
        """The credentials the value holds (passwords, ``auth`` strings and what they
        decode to, tokens), whatever its form; what error texts are masked with."""
        try:
            doc = json.loads(self.value)
        except ValueError:
            return [self.value]
        if not isinstance(doc, dict):
            return [self.value]
        entries: list[Any] = [doc]
        auths = doc.get("auths")
        if isinstance(auths, dict):
            entries += list(auths.values())
        found: list[str] = []
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            for key in _CREDENTIAL_FIELDS:
                value = entry.get(key)
                if isinstance(value, str) and value:
                    found.append(value)
            decoded = _decode_auth(entry.get("auth"))
            if decoded is not None and decoded[1]:
                found.append(decoded[1])
        return found

    def redact(self, text: str) -> str:
        """``text`` with every credential of the value masked."""
        return LogMasker(self.masked_values()).mask_text(text)

    # --- reading the value -----------------------------------------------------------

    def _error(self, why: str) -> PullSecretError:
        return PullSecretError(f"image_pull_secret {self.name!r} {why}")

    def _document(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.value)
        except ValueError:
            raise self._error(f"is not JSON: it must hold {FORMS}") from None
        if not isinstance(doc, dict):
            raise self._error(f"is not a JSON object: it must hold {FORMS}")
        return doc

    def _from_config(self, auths: Any, host: str) -> RegistryAuth:
        if not isinstance(auths, dict):
            raise self._error('has "auths" that is not an object of registries')
        for key, entry in auths.items():
            if registry_host(str(key)) != host:
                continue
            if not isinstance(entry, dict):
                raise self._error(f"has an entry for {key} that is not an object")
            token = entry.get("identitytoken")
            if isinstance(token, str) and token:
                return RegistryAuth(host, identity_token=token)
            decoded = _decode_auth(entry.get("auth"))
            if decoded is None and entry.get("auth") is not None:
                raise self._error(f"has an auth for {key} that is not base64 of user:password")
            username, password = decoded or (entry.get("username"), entry.get("password"))
            if not isinstance(username, str) or not isinstance(password, str) or not username:
                raise self._error(
                    f"has an entry for {key} without auth, username and password, or identitytoken"
                )
            return RegistryAuth(host, username, password)
        known = ", ".join(sorted({registry_host(str(k)) for k in auths})) or "none"
        raise self._error(
            f"holds no credentials for registry {host}, where the image is (it holds "
            f"credentials for: {known})"
        )

    def _from_short_form(self, doc: dict[str, Any], host: str, image: str) -> RegistryAuth:
        fields = {k: doc.get(k) for k in ("registry", "username", "password")}
        missing = [k for k, v in fields.items() if not isinstance(v, str) or not v]
        if missing:
            raise self._error(f"lacks {', '.join(missing)}: it must hold {FORMS}")
        registry = registry_host(str(fields["registry"]))
        if registry != host:
            raise self._error(
                f"is for registry {registry}, but image {image} is on registry {host}"
            )
        return RegistryAuth(host, str(fields["username"]), str(fields["password"]))


def pull_secret_of(spec: JobSpec, secrets: Mapping[str, str]) -> PullSecret | None:
    """The job's pull secret with the value its assignment brought; None when it names
    none. MissingSecret when the value did not come."""
    name = spec.image_pull_secret
    if name is None:
        return None
    value = secrets.get(name)
    if value is None:
        raise MissingSecret(
            f"image_pull_secret: the value of secret {name!r} did not come with the assignment"
        )
    return PullSecret(name, value)


def _decode_auth(auth: Any) -> tuple[str, str] | None:
    """A Docker config entry's ``auth`` (base64 of ``user:password``) decoded, or None."""
    if not isinstance(auth, str) or not auth:
        return None
    try:
        text = base64.b64decode(auth, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, sep, password = text.partition(":")
    return (username, password) if sep and username else None
