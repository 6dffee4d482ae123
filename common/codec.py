"""The wire codec: JSON in, validated records out, and back.

Typed payloads are decoded and validated by msgspec in one pass, so a bad request
fails with the path of the offending field (``$.resources.cpu``). Untyped payloads
(events, ad-hoc documents) go through orjson.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, TypeVar

import msgspec
import orjson

from common.errors import CodecError

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
_PATH = re.compile(r" - at (?:`key` in )?`(\$[^`]*)`$")
_NAMED = re.compile(r"(?:unknown|missing required) field `([^`]*)`")


def encode(obj: Any) -> bytes:
    """Encode a record, or plain data holding records, as JSON bytes."""
    return _encoder.encode(obj)


def decode(data: bytes | str, type_: type[T]) -> T:
    """Decode JSON into ``type_``; raise CodecError naming the field on any mismatch."""
    dec = _decoders.get(type_)
    if dec is None:
        dec = _decoders[type_] = msgspec.json.Decoder(type_)
    try:
        return dec.decode(data)  # type: ignore[no-any-return]
    except msgspec.ValidationError as e:
        raise _validation_error(str(e)) from e
    except msgspec.DecodeError as e:
        raise CodecError(f"malformed JSON: {e}", {"field": "$"}) from e
    except UnicodeDecodeError as e:
        # msgspec checks UTF-8 inside strings but raises Python's error for it, not its own.
        raise CodecError(
            f"malformed JSON: a string is not valid UTF-8 ({e.reason})", {"field": "$"}
        ) from e


def convert(obj: Any, type_: type[T]) -> T:
    """Validate already-decoded data (for example one item of a batch) into ``type_``."""
    try:
        return msgspec.convert(obj, type_)
    except msgspec.ValidationError as e:
        raise _validation_error(str(e)) from e


def to_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)


def dumps(obj: Any) -> bytes:
    """Encode untyped data (dicts, lists, scalars) with orjson."""
    return orjson.dumps(obj, default=msgspec.to_builtins)


def loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise CodecError(f"malformed JSON: {e}", {"field": "$"}) from e


def _validation_error(text: str) -> CodecError:
    m = _PATH.search(text)
    path = m.group(1) if m else "$"
    message = _PATH.sub("", text)
    named = _NAMED.search(message)
    if named:
        # The error sits on the object; the field it names is what the client must fix.
        path = f"{path}.{named.group(1)}"
    return CodecError(f"{path}: {message}", {"field": path})


def rfc3339(dt: datetime) -> str:
    """A timestamp in the form msgspec writes, so stored strings sort in time order."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
