"""What /info answers (our keys and text-embeddings-inference's, which TEI clients read) and the
line the server logs when it starts."""

from __future__ import annotations

from typing import Any

from turborank import __version__
from turborank.cpu_features import cpu_bf16_support, cpu_identity
from turborank.serving.state import ServerState


def info_body(state: ServerState) -> dict[str, Any]:
    settings = state.settings
    engine = state.reranker.describe()
    ours = {
        "model": settings.model_name,
        "version": __version__,
        "device": engine["device"],
        "dtype": engine["dtype"],
        "cpu": cpu_identity().describe(),
        "cpu_bf16": cpu_bf16_support().describe(),
        "backends": engine["backends"],
        "linear": engine["linear"],
        "alibi_scheme": engine["alibi_scheme"],
        "max_input_length": settings.max_input_length,
        "max_batch_tokens": settings.max_batch_tokens,
        "max_client_batch_size": settings.max_client_batch_size,
        "max_documents": settings.max_documents,
        "max_concurrent_requests": settings.max_concurrent_requests,
        "auto_truncate": settings.auto_truncate,
        "strict_input_length": settings.strict_input_length,
        "max_body_bytes": settings.max_body_bytes,
        "body_timeout_s": settings.body_timeout_s,
        "min_body_rate": settings.min_body_rate,
        "cuda_graphs": engine["cuda_graphs"],
    }
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
    engine = state.reranker.describe()
    fields = {
        "model": settings.model_name,
        "version": __version__,
        "device": engine["device"],
        "dtype": engine["dtype"],
        "backends": engine["backends"],
        "linear": engine["linear"]["engine"],
        "alibi_scheme": engine["alibi_scheme"],
        "alibi_scheme_reason": engine["alibi_scheme_reason"],
        "max_input_length": settings.max_input_length,
        "max_batch_tokens": settings.max_batch_tokens,
        "max_documents": settings.max_documents,
        "max_client_batch_size": settings.max_client_batch_size,
        "max_concurrent_requests": settings.max_concurrent_requests,
        "max_body_bytes": settings.max_body_bytes,
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
