"""Limits of one server, checked when they are set."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """Limits of one server; the defaults follow text-embeddings-inference where it has one.

    A request body must keep arriving: no gap of more than ``body_timeout_s`` between two reads,
    and, once ``body_timeout_s`` has passed, at least ``min_body_rate`` bytes per second on average
    (the rule of Apache's mod_reqtimeout; 0 turns it off). Otherwise 408, and the request's slot
    is free again: a stalled upload holds a slot for ``body_timeout_s``, a trickling one for at most
    ``body_timeout_s + max_body_bytes / min_body_rate``.
    """

    model_name: str
    max_batch_tokens: int = 16384
    # Documents per request: TEI's limit on its routes, the hosted APIs' on the Jina/Cohere routes.
    max_client_batch_size: int = 32
    max_documents: int = 1000
    max_concurrent_requests: int = 512
    max_input_length: int = 8192
    # TEI routes: truncate when the request does not say (TEI's --auto-truncate).
    auto_truncate: bool = False
    # Jina/Cohere routes truncate, as the hosted APIs do, unless this is set (then 422).
    strict_input_length: bool = False
    # When set, every route but health, readiness, metrics and the API docs needs "Bearer <key>".
    api_key: str | None = dataclasses.field(default=None, repr=False)
    max_body_bytes: int = 16 * 1024 * 1024
    body_timeout_s: float = 5.0
    min_body_rate: int = 64 * 1024
    tokenizer_threads: int = 2
    ready_max_age_s: float = 30.0
    drain_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        for name in (
            "max_batch_tokens",
            "max_client_batch_size",
            "max_documents",
            "max_concurrent_requests",
            "max_input_length",
            "max_body_bytes",
            "tokenizer_threads",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not _usable_key(self.api_key)):
            raise ValueError("api_key must be a non-empty string of printable ASCII without spaces")
        rate = self.min_body_rate
        if isinstance(rate, bool) or not isinstance(rate, int) or rate < 0:
            raise ValueError(f"min_body_rate must be a non-negative integer (bytes/s), got {rate!r}")
        for name in ("body_timeout_s", "ready_max_age_s", "drain_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


def _usable_key(key: str) -> bool:
    # It travels in an HTTP header: visible ASCII only, or no client could send it.
    return bool(key) and all("!" <= c <= "~" for c in key)
