"""The README's JobSpec table lists exactly the model's fields, with their defaults.

Rows are ``| `field` | type | default | meaning |``; a nested spec's fields are
``parent.field`` (``parent[].field`` for a list of them). A default is ``required`` or
JSON, which must convert to the model's own default.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
import pytest

from common.models import ArraySpec, Constraints, Dependency, JobResources, JobSpec, Mount, Webhook
from tests.support import REPO

#: the nested specs the README describes, by the prefix of their rows
NESTED: dict[str, type[msgspec.Struct]] = {
    "resources.": JobResources,
    "array.": ArraySpec,
    "constraints.": Constraints,
    "mounts[].": Mount,
    "depends_on[].": Dependency,
    "webhook.": Webhook,
}
_ROW = re.compile(r"^\| `([a-z_.\[\]]+)` \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$")


def jobspec_rows(readme: str) -> dict[str, tuple[str, str, str]]:
    """field -> (type, default, meaning), from the table under ### JobSpec."""
    section = readme.split("\n### JobSpec\n", 1)[1]
    section = re.split(r"\n#{2,3} ", section, maxsplit=1)[0]
    rows: dict[str, tuple[str, str, str]] = {}
    for line in section.splitlines():
        found = _ROW.match(line)
        if found:
            name = found.group(1)
            assert name not in rows, f"{name} is listed twice"
            rows[name] = (found.group(2).strip(), found.group(3).strip(), found.group(4).strip())
    return rows


ROWS = jobspec_rows((REPO / "README.md").read_text())


def model_fields() -> dict[str, tuple[type[msgspec.Struct], msgspec.structs.FieldInfo]]:
    """Every field the README should list, by its row name."""
    out = {f.encode_name: (JobSpec, f) for f in msgspec.structs.fields(JobSpec)}
    for prefix, struct in NESTED.items():
        for f in msgspec.structs.fields(struct):
            out[prefix + f.encode_name] = (struct, f)
    return out


FIELDS = model_fields()


def test_every_field_of_the_model_is_in_the_readme_and_nothing_else() -> None:
    assert not set(FIELDS) - set(ROWS), f"missing from README: {sorted(set(FIELDS) - set(ROWS))}"
    assert not set(ROWS) - set(FIELDS), f"not in JobSpec: {sorted(set(ROWS) - set(FIELDS))}"


def test_every_nested_spec_has_its_parent_row() -> None:
    for prefix in NESTED:
        assert prefix.rstrip(".").removesuffix("[]") in ROWS


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_the_default_and_the_meaning_are_the_models(name: str) -> None:
    struct, info = FIELDS[name]
    kind, default, meaning = ROWS[name]
    assert kind and meaning.endswith("."), f"{name}: a type and a sentence of meaning"
    if info.required:
        assert default == "required", f"{name} has no default: write required"
        return
    assert default != "required", f"{name} has a default"
    assert default.startswith("`") and default.endswith("`"), f"{name}: the default as `JSON`"
    stated: Any = msgspec.convert(json.loads(default.strip("`")), info.type)
    if info.default is not msgspec.NODEFAULT:
        expected = info.default
    else:
        assert info.default_factory is not msgspec.NODEFAULT
        expected = info.default_factory()
    assert stated == expected, f"{name}: the default of {struct.__name__} is {expected!r}"


def test_the_reader_finds_rows_and_stops_at_the_next_heading() -> None:
    text = (
        "intro\n### JobSpec\n\n| field | type | default | meaning |\n|---|---|---|---|\n"
        "| `image` | string | required | The image. |\n"
        "| `mounts[].source` | string | required | A path. |\n"
        "\n## Layout\n| `after` | string | `1` | Not in the section. |\n"
    )
    assert set(jobspec_rows(text)) == {"image", "mounts[].source"}
