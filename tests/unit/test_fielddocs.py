"""The fields' ``#:`` comments become their descriptions in the OpenAPI document."""

from __future__ import annotations

from common.models import JobReport, JobSpec, Mount
from scheduler.fielddocs import field_docs
from scheduler.openapi import document


def test_a_fields_comment_lines_are_joined_into_its_description() -> None:
    docs = field_docs(JobSpec)
    assert docs["depends_on"] == (
        "jobs that must end before this one may start: an id (it must complete), or "
        '{"job": id, "when": "completed" | "ended" | "failed"}'
    )
    assert field_docs(Mount) == {
        "source": "absolute path on the node",
        "target": "absolute path in the container",
    }


def test_a_plain_comment_and_an_undocumented_field_add_nothing() -> None:
    docs = field_docs(JobSpec)
    # mounts has a plain "#" comment between its description and the field.
    assert docs["mounts"] == "host paths to mount; each runs only on nodes that allow its source"
    assert "image" not in docs and "priority" not in docs


def test_a_subclass_has_its_bases_descriptions() -> None:
    assert field_docs(JobReport)["outputs"].startswith("sha256 of the uploaded archive")


def test_the_document_describes_the_fields() -> None:
    schemas = document()["components"]["schemas"]
    props = schemas["JobSpec"]["properties"]
    assert props["depends_on"]["description"] == field_docs(JobSpec)["depends_on"]
    assert props["network"]["description"].startswith('"host" runs only on nodes')
    assert "description" not in props["image"]
    # Nested models too, reached through the fields that hold them.
    assert (
        schemas["Mount"]["properties"]["target"]["description"] == "absolute path in the container"
    )
    assert schemas["Constraints"]["properties"]["gpu_model"]["description"].startswith(
        "every GPU of the node is this model"
    )
