"""/openapi.json with every request body, and /docs served from this process (no CDN).

The rerank routes read their bodies themselves (under the body timeouts, decoded off the event
loop), so FastAPI does not see the request models: each route names its model here
(``request_body``) and ``install`` puts the models' schemas into the document. The Swagger UI page
loads its script and stylesheet from the fastapi-offline package, served here, so it works on a
network with no way out.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.responses import Response

_REF = "#/components/schemas/{model}"
DOCS_URL = "/docs"
# The Swagger UI files fastapi-offline ships, and their media types.
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon.png": "image/png",
}


def request_body(models: list[type[BaseModel]]) -> dict[str, Any]:
    """``openapi_extra`` of a route whose body is one of ``models`` (a path two APIs share)."""
    refs = [{"$ref": _REF.format(model=model.__name__)} for model in models]
    schema = refs[0] if len(refs) == 1 else {"oneOf": refs}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def install(app: FastAPI, request_models: list[type[BaseModel]], bearer: bool) -> None:
    """Make ``app.openapi()`` include ``request_models``; with ``bearer``, mark the routes that need
    the API key (those that answer 401 without it)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        _, definitions = models_json_schema([(m, "validation") for m in request_models], ref_template=_REF)
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {}).update(definitions.get("$defs", {}))
        if bearer:
            components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for operations in schema["paths"].values():
                for operation in operations.values():
                    if "401" in operation.get("responses", {}):
                        operation["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _asset(name: str) -> bytes | None:
    try:
        return (importlib.resources.files("fastapi_offline") / "static" / name).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError):
        return None


def docs_assets_available() -> bool:
    return all(_asset(name) is not None for name in _ASSETS)


def docs_page(title: str) -> Response:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=f"{title} - API",
        swagger_js_url=f"{DOCS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_URL}/favicon.png",
        # Swagger UI would otherwise show a badge fetched from an online validator.
        swagger_ui_parameters={"validatorUrl": None, "defaultModelsExpandDepth": 2},
    )


def docs_asset(name: str) -> Response | None:
    media_type = _ASSETS.get(name)
    content = None if media_type is None else _asset(name)
    if content is None:
        return None
    return Response(content, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})
