"""A tool's JSON schema, as a configuration file writes it, turned into typed parameters.

Tools from configuration state their arguments as a JSON schema (what OpenAI-style ``tools``
carry). The registry validates arguments strictly through a typed model, so the schema is read
into the same ``name -> (type, default, description)`` fields a Python signature gives
(:meth:`~duplexer.actors.tool_registry.Tool.from_fields`). The subset understood is what
function-calling schemas use: an object of properties typed ``string``, ``integer``, ``number``,
``boolean``, ``array`` (of one of those) or ``object``, with ``enum``, ``default``,
``description`` and ``required``. Anything else is a :class:`SchemaError` naming the place,
so a schema the model would be shown is never silently weakened.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

SCALARS: dict[str, type] = {"string": str, "integer": int, "number": float, "boolean": bool}
_PROPERTY_KEYS = frozenset({"type", "description", "enum", "default", "items", "title"})
_OBJECT_KEYS = frozenset({"type", "properties", "required", "additionalProperties", "description", "title"})


class SchemaError(ValueError):
    """A schema outside the supported subset; ``where`` is the path inside ``parameters``."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where


def _scalar(value: Any, where: str) -> type:
    if not isinstance(value, str) or value not in SCALARS:
        raise SchemaError(where, f"type must be one of {', '.join(SCALARS)}, array or object")
    return SCALARS[value]


def _annotation(prop: Any, where: str) -> Any:
    if not isinstance(prop, Mapping):
        raise SchemaError(where, "a property's schema must be a mapping")
    unknown = sorted(set(prop) - _PROPERTY_KEYS)
    if unknown:
        raise SchemaError(f"{where}.{unknown[0]}", "not supported in a tool schema")
    if "enum" in prop:
        choices = prop["enum"]
        ok = isinstance(choices, list) and choices and all(isinstance(c, (str, int, float, bool)) for c in choices)
        if not ok:
            raise SchemaError(f"{where}.enum", "must be a non-empty list of strings or numbers")
        return Literal[tuple(choices)]
    kind = prop.get("type")
    if kind == "array":
        items = prop.get("items", {})
        if not isinstance(items, Mapping) or set(items) - {"type", "description"}:
            raise SchemaError(f"{where}.items", "must be {type: string|integer|number|boolean}")
        return list[_scalar(items.get("type"), f"{where}.items.type")] if items else list[Any]  # type: ignore[misc]
    if kind == "object":
        return dict[str, Any]
    return _scalar(kind, f"{where}.type")


def fields_from_schema(schema: Any) -> dict[str, tuple[Any, Any, str]]:
    """``name -> (annotation, default or ..., description)`` for an object schema."""
    if not isinstance(schema, Mapping):
        raise SchemaError("", "must be a mapping (a JSON schema of type object)")
    unknown = sorted(set(schema) - _OBJECT_KEYS)
    if unknown:
        raise SchemaError(f".{unknown[0]}", "not supported in a tool schema")
    if schema.get("type", "object") != "object":
        raise SchemaError(".type", "the arguments' schema must be of type object")
    if schema.get("additionalProperties", False) is not False:
        raise SchemaError(".additionalProperties", "must be false (arguments are checked strictly)")
    properties = schema.get("properties", {})
    if not isinstance(properties, Mapping):
        raise SchemaError(".properties", "must be a mapping of argument names to schemas")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(name, str) for name in required):
        raise SchemaError(".required", "must be a list of argument names")
    missing = [name for name in required if name not in properties]
    if missing:
        raise SchemaError(".required", f"names {missing[0]!r}, which is not under properties")
    fields: dict[str, tuple[Any, Any, str]] = {}
    for name, prop in properties.items():
        where = f".properties.{name}"
        if not isinstance(name, str) or not name.isidentifier():
            raise SchemaError(where, "an argument name must be a Python identifier")
        annotation = _annotation(prop, where)
        description = prop.get("description", "")
        if not isinstance(description, str):
            raise SchemaError(f"{where}.description", "must be a string")
        if name in required:
            fields[name] = (annotation, ..., description)
        elif "default" in prop:
            try:
                TypeAdapter(annotation).validate_python(prop["default"], strict=True)
            except ValidationError:
                raise SchemaError(f"{where}.default", "does not fit the property's own type") from None
            fields[name] = (annotation, prop["default"], description)
        else:
            fields[name] = (annotation | None, None, description)
    return fields
