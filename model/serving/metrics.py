"""Prometheus metrics of one server (its own registry, so several apps in a process stay apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_PAIR_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "turborank_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "code"],
            registry=r,
        )
        self.errors = Counter(
            "turborank_errors",
            "Error responses by status code and error type",
            ["code", "error_type"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "turborank_request_duration_seconds",
            "Request latency",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "turborank_queue_duration_seconds",
            "Time from queueing to first forward",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.forward_seconds = Histogram(
            "turborank_forward_duration_seconds",
            "Duration of one batched forward",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_pairs = Histogram(
            "turborank_batch_pairs", "Pairs per forward", buckets=_PAIR_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "turborank_batch_tokens", "Tokens per forward", buckets=_TOKEN_BUCKETS, registry=r
        )
        self.tokens = Counter("turborank_tokens", "Tokens scored", registry=r)
        self.truncated = Counter(
            "turborank_truncated_pairs", "Pairs truncated to max_input_length", registry=r
        )
        self.dropped = Counter(
            "turborank_dropped_pairs", "Queued pairs dropped because the client left", registry=r
        )
        self.failed_batches = Counter("turborank_failed_batches", "Forwards that failed", registry=r)
        self.closed_connections = Counter(
            "turborank_closed_connections",
            "Connections the server closed: header_timeout (408), evicted (idle or half-sent, to make "
            "room for a new one), refused (503: every connection carried a request)",
            ["reason"],
            registry=r,
        )
        self.open_connections = Gauge("turborank_open_connections", "Open client connections", registry=r)
        self.active = Gauge("turborank_active_requests", "Requests admitted and not finished", registry=r)
        self.queued_pairs = Gauge("turborank_queued_pairs", "Pairs waiting for a forward", registry=r)

    def observe(self, event: str, **values: float) -> None:
        """Scheduler callback (runs on the batching thread; prometheus_client is thread-safe)."""
        if event == "queue":
            self.queue_seconds.observe(values["seconds"])
        elif event == "batch":
            self.forward_seconds.observe(values["seconds"])
            self.batch_pairs.observe(values["pairs"])
            self.batch_tokens.observe(values["tokens"])
            self.tokens.inc(values["tokens"])
        elif event == "batch_failed":
            self.failed_batches.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
