"""What /info answers (our keys and text-embeddings-inference's, which TEI clients read) and the
line the server logs when it starts."""

from __future__ import annotations

import dataclasses
from typing import Any

from turborank import __version__
from turborank.cpu_features import cpu_bf16_support, cpu_identity
from turborank.serving.settings import ServeSettings
from turborank.serving.state import ServerState


def _identity(state: ServerState) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what the server runs: model, version, device, dtype, backends, ALiBi scheme; the engine's
    whole ``describe()``)."""
    engine = state.reranker.describe()
    identity = {"model": state.settings.model_name, "version": __version__}
    identity.update({key: engine[key] for key in ("device", "dtype", "backends", "alibi_scheme")})
    return identity, engine


def _limits(settings: ServeSettings) -> dict[str, Any]:
    """Every setting of the server but its name and key, as ServeSettings names them."""
    hidden = ("model_name", "api_key")
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name not in hidden}


# The limits that serve --front-ends splits between its front ends.
_SHARED_LIMITS = ("max_concurrent_requests", "max_requests_per_client", "max_connections")


def _front_ends(state: ServerState) -> tuple[ServeSettings, dict[str, Any]]:
    """The whole server's settings, and how they are split: a client sizes its concurrency by the
    server's limits, whichever front end answers."""
    if state.front_end_of is None:
        whole, count, index = state.settings, 1, 0
    else:
        whole, count, index = state.front_end_of
    share = {name: getattr(state.settings, name) for name in _SHARED_LIMITS}
    return whole, {"count": count, "index": index, "share": share}


def info_body(state: ServerState) -> dict[str, Any]:
    whole, front_ends = _front_ends(state)
    identity, engine = _identity(state)
    ours = {
        **identity,
        "cpu": cpu_identity().describe(),
        "cpu_bf16": cpu_bf16_support().describe(),
        "linear": engine["linear"],
        **_limits(whole),
        "front_ends": front_ends,
        "cuda_graphs": engine["cuda_graphs"],
    }
    settings = state.settings
    # TEI's Info (router/src/lib.rs); "version" is ours in both.
    tei = {
        "model_id": settings.model_name,
        "model_sha": None,
        "model_dtype": engine["dtype"],
        "served_model_name": settings.model_name,
        "model_type": {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}},
        # TEI queues each pair as a request: its cap on requests per batch is our cap on pairs.
        "max_batch_requests": state.scheduler.max_batch_pairs,
        "tokenization_workers": settings.tokenizer_threads,
        "sha": None,
        "docker_label": None,
    }
    return {**ours, **tei}


def startup_line(state: ServerState) -> tuple[str, dict[str, Any]]:
    """One line an operator can check the deployment against, and its fields for JSON logs."""
    settings = state.settings
    identity, engine = _identity(state)
    fields = {
        **identity,
        "linear": engine["linear"]["engine"],
        "alibi_scheme_reason": engine["alibi_scheme_reason"],
        **_limits(settings),
        "long_documents_jina_cohere": "refused (422)" if settings.strict_input_length else "truncated",
        "long_documents_tei": "truncated" if settings.auto_truncate else "refused unless truncate=true",
        "api_key": settings.api_key is not None,
        "cuda_graphs": engine["cuda_graphs"] is not None,
    }
    backends = ", ".join(f"{op}={name}" for op, name in sorted(fields["backends"].items()))
    message = (
        f"turborank {__version__} serving {fields['model']} on {fields['device']} ({fields['dtype']}); "
        f"backends: {backends}; linear {fields['linear']}; "
        f"ALiBi slopes {fields['alibi_scheme']} ({fields['alibi_scheme_reason']}); "
        f"limits: max_input_length={settings.max_input_length} tokens, "
        f"max_batch_tokens={settings.max_batch_tokens}, max_documents={settings.max_documents} "
        f"(Jina/Cohere), max_client_batch_size={settings.max_client_batch_size} (TEI), "
        f"max_concurrent_requests={settings.max_concurrent_requests}, "
        f"max_body_bytes={settings.max_body_bytes}; long documents: {fields['long_documents_jina_cohere']} "
        f"on Jina/Cohere routes, {fields['long_documents_tei']} on TEI routes; "
        f"API key {'required' if fields['api_key'] else 'off'}; "
        f"CUDA graphs {'on' if fields['cuda_graphs'] else 'off'}"
    )
    return message, fields
