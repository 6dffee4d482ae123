"""Descriptions of the models' fields for the OpenAPI document, taken from the ``#:``
comment lines above each field in the model's source, where they are written once.

msgspec documents a Struct by its docstring only; the fields' own comments would
otherwise reach nobody who reads the document (the dashboard's submit form shows
them beside each field).
"""

from __future__ import annotations

import inspect
import re
import textwrap
from collections.abc import Iterable, Iterator
from functools import cache
from typing import Any

import msgspec

#: a field of the class body: ``name: type`` at the body's indentation
_FIELD = re.compile(r"^    (\w+)\s*:")
#: reST's inline literal
_LITERAL = re.compile(r"``(.+?)``")


@cache
def field_docs(cls: type) -> dict[str, str]:
    """{field name: its ``#:`` comment, lines joined}, the bases' fields included."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not issubclass(klass, msgspec.Struct) or klass is msgspec.Struct:
            continue
        docs.update(_own_docs(klass))
    return docs


def _own_docs(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in source.splitlines()[1:]:
        text = line.strip()
        if line.startswith("    def ") or line.startswith("    @"):
            break
        if text.startswith("#:"):
            pending.append(text[2:].strip())
            continue
        if text.startswith("#"):
            # A plain comment between a field's description and the field says why the
            # code is so; it is not part of the description.
            continue
        field = _FIELD.match(line)
        if field and pending:
            # The document's descriptions are CommonMark: ``code`` is reST's spelling.
            docs[field.group(1)] = _LITERAL.sub(r"`\1`", " ".join(pending))
        pending = []
    return docs


def describe_fields(models: Iterable[type], components: dict[str, Any]) -> None:
    """Give each property of the components' object schemas the description its
    field's comment holds (where it has none)."""
    for cls in _structs(msgspec.inspect.multi_type_info(list(models))):
        schema = components.get(cls.__name__)
        if not isinstance(schema, dict):
            continue
        props = schema.get("properties", {})
        names = {f.name: f.encode_name for f in msgspec.structs.fields(cls)}
        for name, text in field_docs(cls).items():
            prop = props.get(names.get(name, name))
            if isinstance(prop, dict):
                prop.setdefault("description", text)


def _structs(infos: Iterable[msgspec.inspect.Type]) -> Iterator[type]:
    """The Struct classes in these types and in every type they are made of, once each."""
    seen: set[type] = set()
    todo = list(infos)
    while todo:
        info = todo.pop()
        if isinstance(info, msgspec.inspect.StructType):
            if info.cls in seen:
                continue
            seen.add(info.cls)
            yield info.cls
            todo.extend(f.type for f in info.fields)
            continue
        for attr in ("type", "item_type", "key_type", "value_type"):
            inner = getattr(info, attr, None)
            if isinstance(inner, msgspec.inspect.Type):
                todo.append(inner)
        for attr in ("types", "item_types"):
            inner_types = getattr(info, attr, None)
            if isinstance(inner_types, tuple):
                todo.extend(t for t in inner_types if isinstance(t, msgspec.inspect.Type))
