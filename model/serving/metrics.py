"""Prometheus metrics of one server (its own registry, so several apps in a process stay apart).

Ours are ``turborank_*``. Beside them, under text-embeddings-inference's names (``te_*``), the ones a
TEI dashboard reads: requests by method, successes, failures by error type, request, queue and
forward durations, input lengths, batch sizes and the queue. TEI writes its counters without
prometheus_client's ``_total`` suffix, so those few lines are written here as TEI writes them.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_PAIR_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)

# One server process's metrics as plain picklable values, for a sum over several processes
# (``serve --front-ends``): per family (name, type, help, [(sample, sorted labels, value)]), and
# the TEI counters.
Family = tuple[str, str, str, list[tuple[str, tuple[tuple[str, str], ...], float]]]
MetricsSnapshot = tuple[list[Family], dict[tuple[str, str, str], int]]


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
            "Connections the server closed: header_timeout (408), headers_too_large (431), bad_request "
            "(400: not HTTP), evicted (idle, half-sent or not reading its answer, to make room for a new "
            "one), refused (503: every connection carried a request), write_timeout (its answer unread "
            "for --write-timeout)",
            ["reason"],
            registry=r,
        )
        self.open_connections = Gauge("turborank_open_connections", "Open client connections", registry=r)
        self.active = Gauge("turborank_active_requests", "Requests admitted and not finished", registry=r)
        self.queued_pairs = Gauge("turborank_queued_pairs", "Pairs waiting for a forward", registry=r)
        self.tei = TEIMetrics(r)

    def answered(self, endpoint: str, status: int, seconds: float, failure: str | None) -> None:
        """One scoring request answered with ``status`` (``failure``: TEI's error type, or None)."""
        self.requests.labels(endpoint, str(status)).inc()
        self.request_seconds.labels(endpoint).observe(seconds)
        self.tei.request(seconds, failure)

    def observe(self, event: str, **values: float) -> None:
        """Scheduler callback (runs on the batching thread; prometheus_client is thread-safe)."""
        if event == "queue":
            self.queue_seconds.observe(values["seconds"])
            self.tei.queue_duration.observe(values["seconds"])
        elif event == "batch":
            self.forward_seconds.observe(values["seconds"])
            self.batch_pairs.observe(values["pairs"])
            self.batch_tokens.observe(values["tokens"])
            self.tokens.inc(values["tokens"])
            self.tei.inference_duration.observe(values["seconds"])
            self.tei.batch_size.observe(values["pairs"])
            self.tei.batch_tokens.observe(values["tokens"])
        elif event == "batch_failed":
            self.failed_batches.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry) + self.tei.render_counters()

    def snapshot(self) -> MetricsSnapshot:
        families = [
            (
                m.name,
                m.type,
                m.documentation,
                [(s.name, tuple(sorted(s.labels.items())), s.value) for s in m.samples],
            )
            for m in self.registry.collect()
        ]
        return families, self.tei.counts()


def merge_snapshots(snapshots: list[MetricsSnapshot]) -> MetricsSnapshot:
    """Several processes' metrics as one server's: counters, histograms and gauges (requests in
    flight, queued pairs, open connections) add up; a series' creation time is its earliest."""
    families: dict[str, tuple[str, str, dict[tuple[str, tuple], float]]] = {}
    counts: Tally[tuple[str, str, str]] = Tally()
    for sampled, tei_counts in snapshots:
        counts.update(tei_counts)
        for name, kind, documentation, samples in sampled:
            values = families.setdefault(name, (kind, documentation, {}))[2]
            for sample, labels, value in samples:
                key = (sample, labels)
                if key not in values:
                    values[key] = value
                elif sample.endswith("_created"):
                    values[key] = min(values[key], value)
                else:
                    values[key] += value
    merged = [
        (name, kind, documentation, [(sample, labels, value) for (sample, labels), value in values.items()])
        for name, (kind, documentation, values) in families.items()
    ]
    return merged, dict(counts)


def render_sum(snapshots: list[MetricsSnapshot]) -> bytes:
    """The exposition of ``merge_snapshots(snapshots)``."""
    families, counts = merge_snapshots(snapshots)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    return generate_latest(registry) + _render_tei_counts(counts)


class _Fixed:
    """A collector of values already summed."""

    def __init__(self, families: list[Family]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        collected = []
        for name, kind, documentation, samples in self._families:
            metric = Metric(name, documentation, kind)
            for sample, labels, value in samples:
                metric.add_sample(sample, dict(labels), value)
            collected.append(metric)
        return collected


class TEIMetrics:
    """text-embeddings-inference's metrics of a rerank server, under its names."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def histogram(name: str, what: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, f"{what} (TEI's name)", buckets=buckets, registry=registry)

        self.request_duration = histogram("te_request_duration", "Request duration", _LATENCY_BUCKETS)
        self.queue_duration = histogram("te_request_queue_duration", "Time in the queue", _LATENCY_BUCKETS)
        self.inference_duration = histogram("te_batch_inference_duration", "One forward", _LATENCY_BUCKETS)
        self.input_length = histogram("te_request_input_length", "Tokens of a request", _TOKEN_BUCKETS)
        self.batch_size = histogram("te_batch_next_size", "Pairs per forward", _PAIR_BUCKETS)
        self.batch_tokens = histogram("te_batch_next_tokens", "Tokens per forward", _TOKEN_BUCKETS)
        self.queue_size = Gauge(
            "te_queue_size", "Pairs waiting for a forward (TEI's name)", registry=registry
        )
        self._lock = threading.Lock()
        self._counts: Tally[tuple[str, str, str]] = Tally()

    def request(self, seconds: float, failure: str | None) -> None:
        """One rerank request answered: a success, or a failure of TEI's error type ``failure``."""
        self.request_duration.observe(seconds)
        with self._lock:
            self._counts["te_request_count", "method", "rerank"] += 1
            if failure is None:
                self._counts["te_request_success", "method", "rerank"] += 1
            else:
                self._counts["te_request_failure", "err", failure.lower()] += 1

    def counts(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self._counts)

    def render_counters(self) -> bytes:
        return _render_tei_counts(self.counts())


def _render_tei_counts(counts: dict[tuple[str, str, str], int]) -> bytes:
    lines, typed = [], set()
    for (name, label, value), count in sorted(counts.items()):
        if name not in typed:
            typed.add(name)
            lines.append(f"# TYPE {name} counter")
        lines.append(f'{name}{{{label}="{value}"}} {count}')
    return "".join(line + "\n" for line in lines).encode()
