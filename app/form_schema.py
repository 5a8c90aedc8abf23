"""The multipart/form-data body of a task as its own schema (`TextToImageForm`): image fields are files
(`format: binary`), other fields keep their types, objects and lists are JSON text, and there is no
`null`, so that Swagger UI and generated clients never send the text "null" for a field left empty.
It says what `app/body.py` accepts: files or text for images, JSON text for lists and objects, repeated
keys for lists."""

from __future__ import annotations

import copy

from pydantic import BaseModel

from model.tasks import image_fields

from .openapi_examples import FORM_FALLBACKS, REQUEST_EXAMPLES

BINARY = {"type": "string", "format": "binary"}


def form_name(model: type[BaseModel]) -> str:
    """`TextToImageRequest` -> `TextToImageForm`."""
    return model.__name__.removesuffix("Request") + "Form"


def _without_null(prop: dict) -> dict:
    """An optional field's schema without its `null` branch and `null` default (a form leaves it out)."""
    prop = copy.deepcopy(prop)
    options = prop.pop("anyOf", None)
    if options is not None:
        rest = [o for o in options if o.get("type") != "null"]
        if len(rest) == 1 and "$ref" in rest[0]:
            prop = {**rest[0], **{k: v for k, v in prop.items() if k == "description"}}
        elif len(rest) == 1:
            prop = {**rest[0], **prop}
        else:
            prop["anyOf"] = rest
    if prop.get("default", 0) is None:
        prop.pop("default")
    return prop


def _is_json_text(prop: dict) -> bool:
    """Objects, and lists of anything but files, travel as JSON text in a form."""
    if "$ref" in prop or prop.get("type") == "object" or prop.get("format") == "json":
        return True
    return prop.get("type") == "array" and prop.get("items", {}).get("format") != "binary"


def _prefilled(name: str, prop: dict, required: bool, example: dict) -> dict:
    """The field with the value the docs' form should show (Swagger UI sends what a field shows): the
    task example's, else its default, else nothing for optional text and JSON (left out when empty), else
    FORM_FALLBACKS. An optional object without a value (the webhook) is declared as the JSON text it is in
    a form, so that an empty field is possible and no sample object is sent."""
    if name in example:
        return {**prop, "example": example[name]}
    if "default" in prop or required:
        return prop
    if "$ref" in prop or prop.get("type") == "object":
        text = (prop.get("description") or "").rstrip(".")
        return {"type": "string", "format": "json", "example": "",
                "description": f"{text}: JSON text, e.g. {{\"url\": \"https://...\", \"secret\": \"...\"}}".lstrip(": ")}
    if prop.get("type") == "string":
        return {**prop, "example": ""}
    if name in FORM_FALLBACKS:
        return {**prop, "example": FORM_FALLBACKS[name]}
    return prop


def form_schema(model: type[BaseModel], json_schema: dict, example: dict | None = None) -> tuple[dict, dict]:
    """(the form's schema, the media type's `encoding`) for a task request model and its JSON schema;
    `example` (the task's request example) prefills the fields."""
    images = image_fields(model)
    required = set(json_schema.get("required", []))
    properties = {}
    for name, prop in json_schema["properties"].items():
        prop = _without_null(prop)
        if name not in images:
            prop = _prefilled(name, prop, name in required, example or {})
        if name in images:
            text = (prop.get("description") or "An image").rstrip(".")
            description = f"{text}: a PNG, JPEG or WebP file (or its base64 text, or an http(s) URL)"
            if images[name]:
                prop = {"type": "array", "items": dict(BINARY), "description": description + "; one part per image",
                        **{k: prop[k] for k in ("minItems", "maxItems") if k in prop}}
            else:
                prop = {**BINARY, "description": description}
        properties[name] = prop
    schema = {"title": form_name(model), "type": "object", "properties": properties,
              "required": list(json_schema.get("required", [])), "additionalProperties": False}
    if json_schema.get("description"):
        schema["description"] = json_schema["description"]
    encoding = {name: {"contentType": "application/json"} for name, prop in properties.items() if _is_json_text(prop)}
    encoding.update({name: {"contentType": "image/png, image/jpeg, image/webp"} for name in images})
    return schema, encoding


def add_forms(openapi: dict, models: dict[str, type[BaseModel]]) -> None:
    """For each `POST /v1/<task>`: a `<Task>Form` component and the multipart content that refers to it."""
    components = openapi["components"]["schemas"]
    for task, model in models.items():
        op = openapi["paths"][f"/v1/{task}"]["post"]
        schema, encoding = form_schema(model, components[model.__name__], REQUEST_EXAMPLES.get(task))
        components[form_name(model)] = schema
        op["requestBody"]["content"]["multipart/form-data"] = {
            "schema": {"$ref": f"#/components/schemas/{form_name(model)}"}, "encoding": encoding,
        }
