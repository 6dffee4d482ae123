"""The secrets an attempt is given: put into its environment, masked in its output.

The scheduler sends the values of the secrets a spec names inside the attempt's
assignment (``Assignment.secrets``, by secret name). ``resolve_env`` puts each value
where the env says ``{"secret": NAME}``, so that executors see plain strings only.
The agent keeps the values in memory and writes them nowhere itself: the process
executor hands them to the job's process; the docker executor to dockerd, as the
container's environment (which dockerd keeps with the container, as any env value),
labelling the container with the names (never the values) of those variables, so that
a restarted agent that re-adopts it finds the values to mask again.

``LogMasker`` replaces each value, wherever it appears in the output, with
``[masked]`` before the output is shipped, as GitLab masks variables. A value may be
split across two reads of the output: the masker holds back the end of what it was
given that could be the start of a value (at most the longest value's length less one
byte), and, when no value holds a line break, nothing before the last line break, so
that whole lines go out at once. What it holds goes out with the next read, or when
the output ends. What it ships is the same however the output was cut into reads, so
offsets into the masked log stay valid when a re-adopted attempt's output is read
again from its start.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import msgspec

from common.models import JobSpec, SecretRef

#: what replaces a secret's value in the output
MASK = b"[masked]"


class MissingSecret(Exception):
    """The assignment lacks the value of a secret the env names."""


def resolve_env(spec: JobSpec, secrets: Mapping[str, str]) -> JobSpec:
    """``spec`` with each ``{"secret": NAME}`` of its env replaced by the value."""
    if not any(isinstance(v, SecretRef) for v in spec.env.values()):
        return spec
    env: dict[str, str | SecretRef] = {}
    for key, value in spec.env.items():
        if isinstance(value, SecretRef):
            found = secrets.get(value.secret)
            if found is None:
                raise MissingSecret(
                    f"env {key}: the value of secret {value.secret!r} did not come with "
                    "the assignment"
                )
            env[key] = found
        else:
            env[key] = value
    return msgspec.structs.replace(spec, env=env)


def env_secret_values(spec: JobSpec, secrets: Mapping[str, str]) -> list[str]:
    """The values the env of ``spec`` takes from secrets: what its output is masked
    with (and what a re-adopting agent finds in the environment again)."""
    names = {v.secret for v in spec.env.values() if isinstance(v, SecretRef)}
    return [secrets[n] for n in sorted(names) if n in secrets]


def secret_env_names(spec: JobSpec) -> tuple[str, ...]:
    """The env variables of ``spec`` that hold a secret's value."""
    return tuple(k for k, v in spec.env.items() if isinstance(v, SecretRef))


def plain_env(spec: JobSpec) -> dict[str, str]:
    """A resolved spec's env (see ``resolve_env``): every value a string."""
    env: dict[str, str] = {}
    for key, value in spec.env.items():
        if isinstance(value, SecretRef):
            raise MissingSecret(f"env {key}: secret {value.secret!r} was not resolved")
        env[key] = value
    return env


class LogMasker:
    """Masks secret values in a stream of output (see the module docstring)."""

    def __init__(self, values: Iterable[str]) -> None:
        forms: set[bytes] = set()
        for value in values:
            # Also without surrounding blanks: a value read from a file often ends in a
            # line break that `echo $VAR` does not print.
            for form in (value, value.strip()):
                if form:
                    forms.add(form.encode())
        ordered = sorted(forms, key=lambda f: (-len(f), f))
        #: longest first: at each place the longest value that matches is masked
        self._pattern = re.compile(b"|".join(map(re.escape, ordered))) if ordered else None
        self._keep = max((len(f) for f in ordered), default=1) - 1
        self._by_line = not any(b"\n" in f for f in ordered)
        self._held = b""

    @property
    def active(self) -> bool:
        return self._pattern is not None

    def feed(self, data: bytes) -> bytes:
        """The part of the output so far that can be shipped, masked."""
        pattern = self._pattern
        if pattern is None:
            return data
        buf = self._held + data
        # A value starting before ``safe`` lies wholly in ``buf``: it is found now.
        safe = len(buf) - self._keep
        if self._by_line:
            safe = max(safe, buf.rfind(b"\n") + 1)
        out: list[bytes] = []
        pos = 0
        for match in pattern.finditer(buf):
            if match.start() >= safe:
                break
            out.append(buf[pos : match.start()])
            out.append(MASK)
            pos = match.end()
        end = max(pos, safe)
        out.append(buf[pos:end])
        self._held = buf[end:]
        return b"".join(out)

    def flush(self) -> bytes:
        """What is held back, masked: the output has ended."""
        held, self._held = self._held, b""
        return self.mask(held)

    def mask(self, data: bytes) -> bytes:
        """``data`` masked as a whole."""
        return data if self._pattern is None else self._pattern.sub(MASK, data)

    def mask_text(self, text: str) -> str:
        """A message (a report's error) masked."""
        if self._pattern is None:
            return text
        return self.mask(text.encode()).decode(errors="replace")
