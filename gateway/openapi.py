"""`/openapi.json`: the REST API described from the route table and the protobuf
descriptors (proto3 JSON mapping), so the document cannot drift from the code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway import routes

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?\d+(\.\d+)?s$"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.FieldMask": {"type": "string"},
}


class _Schemas:
    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def ref(self, desc: Descriptor | EnumDescriptor) -> dict[str, Any]:
        name = desc.full_name
        if name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[name])
        if name not in self.components:
            self.components[name] = {}  # placeholder breaks recursion
            if isinstance(desc, EnumDescriptor):
                self.components[name] = {
                    "type": "string",
                    "enum": [v.name for v in desc.values],
                }
            else:
                self.components[name] = self._message(desc)
        return {"$ref": f"#/components/schemas/{name}"}

    def _message(self, desc: Descriptor) -> dict[str, Any]:
        props: dict[str, Any] = {}
        for field in desc.fields:
            props[field.json_name] = self._field(field)
        return {"type": "object", "properties": props, "additionalProperties": False}

    def _field(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value = field.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self._single(value)}
        single = self._single(field)
        if field.is_repeated:
            return {"type": "array", "items": single}
        return single

    def _single(self, field: FieldDescriptor) -> dict[str, Any]:
        # A message (enum) field always has its message_type (enum_type) set.
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            return self.ref(cast(Descriptor, field.message_type))
        if field.type == FieldDescriptor.TYPE_ENUM:
            return self.ref(cast(EnumDescriptor, field.enum_type))
        return dict(_SCALARS[field.type])


def _descriptor(message: type[Message]) -> Descriptor:
    """`message.DESCRIPTOR`; types-protobuf also allows the upb class, which is registered as
    a `Descriptor` at runtime."""
    return cast(Descriptor, message.DESCRIPTOR)


_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details", "request_id"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object"}},
                "request_id": {"type": "string"},
            },
        }
    },
}


def _param(p: routes.Param, schemas: _Schemas) -> dict[str, Any]:
    if p.kind in ("string", "integer", "boolean"):
        schema: dict[str, Any] = {"type": p.kind}
    elif p.kind == "date-time":
        schema = {"type": "string", "format": "date-time"}
    else:
        # An enum-prefix kind always comes with its enum.
        schema = schemas.ref(cast("_EnumTypeWrapper[Any]", p.enum).DESCRIPTOR)
    return {
        "name": p.name,
        "in": "query",
        "required": False,
        "description": p.description,
        "schema": schema,
    }


def document(table: Sequence[routes.Route]) -> dict[str, Any]:
    schemas = _Schemas()
    paths: dict[str, Any] = {}
    errors_ref = {"$ref": "#/components/schemas/Error"}
    for route in table:
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{route.rpc}_{route.method.lower()}_{route.path.count('{')}",
            "parameters": [_param(p, schemas) for p in route.query],
            "responses": {
                str(route.created_status): {
                    "description": "Success.",
                    "content": {
                        "application/json": {"schema": schemas.ref(_descriptor(route.response))}
                    },
                },
                "default": {
                    "description": "An error in the suite's one envelope.",
                    "content": {"application/json": {"schema": errors_ref}},
                },
            },
        }
        for name in route.headers:
            op["parameters"].append(
                {
                    "name": name,
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "maxLength": 128},
                }
            )
        if "{" in route.path:
            var = route.path.split("{", 1)[1].split("}", 1)[0]
            op["parameters"].append(
                {"name": var, "in": "path", "required": True, "schema": {"type": "string"}}
            )
        if route.role:
            op["security"] = [{"bearer": []}]
            op["x-required-role"] = route.role
        if route.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schemas.ref(_descriptor(route.body))}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = op
    for path, summary in (
        ("/health", "Liveness of the gateway, with each backend's health."),
        ("/metrics", "Prometheus metrics of the gateway."),
        ("/metrics/aiops", "The suite's aiops_* metrics gathered from every service."),
        ("/.well-known/jwks.json", "Public keys that verify the suite's tokens."),
    ):
        paths[path] = {"get": {"summary": summary, "responses": {"200": {"description": "OK"}}}}
    schemas.components["Error"] = _ERROR
    return {
        "openapi": "3.0.3",
        "info": {"title": "AIOps suite REST API", "version": "5.7.1"},
        "servers": [{"url": "/"}],
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
        "paths": paths,
    }
