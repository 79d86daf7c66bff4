"""The served model, as OpenAI's, vLLM's and infinity's clients ask for it: ``GET /v1/models`` (the
list OpenAI's ``models.list`` and vLLM read), ``GET /models`` (infinity's list), and
``GET /v1/models/{id}`` (OpenAI's ``models.retrieve``: the model, or a 404 in OpenAI's error shape
naming the one served)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from turborank.serving import errors
from turborank.serving.auth import authorized, unauthorized
from turborank.serving.errors import APIError
from turborank.serving.responses import ModelCard, ModelList, OpenAIStyleError
from turborank.serving.state import ServerState
from turborank.serving.vllm_infinity import models_body


def add_model_routes(app: FastAPI, state: ServerState, fail: Callable[[Request, APIError], Response]) -> None:
    """The three routes on ``app``; ``fail`` answers an error in the request's shape."""
    settings = state.settings

    def listed(owned_by: str | None) -> dict:
        return models_body(settings.model_name, state.created, settings.max_input_length, owned_by)

    def model_list(path: str, operation_id: str, owned_by: str | None, summary: str) -> None:
        async def models(request: Request) -> Response:
            if settings.api_key is not None and not authorized(request.headers, settings.api_key):
                return fail(request, unauthorized())
            return JSONResponse(listed(owned_by))

        app.add_api_route(
            path,
            models,
            methods=["GET"],
            operation_id=operation_id,
            summary=summary,
            response_model=ModelList,
            responses={401: {"model": OpenAIStyleError}},
        )

    model_list("/v1/models", "v1_models", "turborank", "The served model (OpenAI's and vLLM's list)")
    model_list("/models", "models", None, "The served model (infinity's list)")

    @app.get(
        "/v1/models/{model_id:path}",
        summary="The served model by its id (OpenAI's models.retrieve)",
        operation_id="v1_model",
        response_model=ModelCard,
        responses={401: {"model": OpenAIStyleError}, 404: {"model": OpenAIStyleError}},
    )
    async def model_card(request: Request, model_id: str) -> Response:
        if settings.api_key is not None and not authorized(request.headers, settings.api_key):
            return fail(request, unauthorized())
        card = listed("turborank")["data"][0]
        if model_id != card["id"]:
            message = f"no model {model_id!r} here; the one served is {card['id']!r}"
            return fail(request, APIError(404, errors.NOT_FOUND, message))
        return JSONResponse(card)
