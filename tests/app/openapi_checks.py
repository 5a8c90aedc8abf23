"""Checks against the OpenAPI document, shared by its in-process tests and the served document's."""

from __future__ import annotations


def validate_against(doc: dict, schema: dict, value) -> None:
    """Validate `value` against a schema of the document (its `$ref`s resolved in the document)."""
    from jsonschema import Draft202012Validator

    root = {**schema, "components": doc["components"]}
    Draft202012Validator(root).validate(value)
