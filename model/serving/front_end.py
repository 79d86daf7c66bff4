"""One front-end process of ``turborank serve --front-ends N`` (``front_ends`` starts them).

A front end is a whole ``turborank serve`` app (HTTP, limits, body reading, tokenising, batching,
answers, drain, its share of the metrics) on the listening socket it shares with the other front
ends. Only its forwards leave it: the scheduler hands each batch to the model process over a pipe
and waits for the logits (``ModelLink``). Its metrics go to the model process every
``METRICS_PUSH_S`` (the model's ``describe()`` for ``/info`` comes back) and ``/metrics`` answers
the sum over every front end (``MetricsLink``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
from array import array
from collections.abc import Callable
from multiprocessing import parent_process
from multiprocessing.connection import Connection
from typing import Any

import torch

from turborank.config import JinaBertConfig
from turborank.reranker import Reranker
from turborank.scoring_options import NonFiniteScoreError
from turborank.serving.metrics import MetricsSnapshot
from turborank.serving.settings import Listener, ServeSettings
from turborank.tokenization import EncodedPairs, PairTokenizer

logger = logging.getLogger("turborank.serving")
# How often a front end sends its counters to the model process: the other front ends' part of a
# scrape is at most this old (the scraped front end's own part is live).
METRICS_PUSH_S = 1.0


# What the model process answers a batch with: (OK, logits), (NON_FINITE, message) or (FAILED,
# message).
OK, NON_FINITE, FAILED = "ok", "non-finite", "failed"


class ModelProcessError(RuntimeError):
    """A forward in the model process failed, or the model process is gone."""


def share(total: int, parts: int, index: int) -> int:
    """Front end ``index``'s share of ``total`` (at least 1): the shares add up to ``total`` when it
    is at least ``parts``."""
    return max(1, total // parts + (index < total % parts))


def front_end_settings(settings: ServeSettings, parts: int, index: int) -> ServeSettings:
    """Front end ``index``'s settings: its share of the limits that count across requests."""
    slots = share(settings.max_concurrent_requests, parts, index)
    per_client = settings.max_requests_per_client
    connections = settings.max_connections
    return dataclasses.replace(
        settings,
        max_concurrent_requests=slots,
        max_requests_per_client=None if per_client is None else min(per_client, slots),
        max_connections=None if connections is None else share(connections, parts, index),
    )


@dataclasses.dataclass(frozen=True)
class FrontEndSpec:
    """What a front-end process is started with (all of it picklable)."""

    index: int
    checkpoint: str  # the resolved checkpoint directory (its tokenizer files)
    config: JinaBertConfig
    engine: dict[str, Any]  # the model process's Reranker.describe()
    name: str
    server_settings: ServeSettings  # the whole server's, as given (what /info reports)
    count: int  # front ends in the server
    listener: Listener
    json_logs: bool

    @property
    def settings(self) -> ServeSettings:
        """This front end's: its share of the limits."""
        return front_end_settings(self.server_settings, self.count, self.index)


class ModelLink:
    """The front end's end of its forward pipe: one batch out, its logits (or the failure) back."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._lock = threading.Lock()

    def __call__(self, encoded: EncodedPairs) -> torch.Tensor:
        compact = _as_arrays(encoded)
        with self._lock:
            try:
                self._connection.send(compact)
                outcome, value = self._connection.recv()
            except (EOFError, OSError) as exc:
                raise ModelProcessError("the model process is gone") from exc
        if outcome == OK:
            return torch.tensor(value, dtype=torch.float32)
        # As in one process: the scheduler answers a non-finite score with its own message (the
        # pair numbers in this one are the model process's batch's, not a request's).
        raise (NonFiniteScoreError if outcome == NON_FINITE else ModelProcessError)(value)


def _as_arrays(encoded: EncodedPairs) -> EncodedPairs:
    """The batch with each sequence an int64 ``array``: it crosses the pipe as bytes, and packing
    copies it in one ``memcpy``, so the model process, which every front end shares, spends about
    40 us per 15k tokens on it instead of 500 (a list of ints is unpickled and converted int by
    int there); the conversion here costs about 90 us more than pickling the lists."""

    def arrays(sequences: list[list[int]]) -> list[array]:
        converted = []
        for sequence in sequences:
            values = array("q")
            values.fromlist(sequence)
            converted.append(values)
        return converted

    types = encoded.token_type_ids
    return EncodedPairs(
        arrays(encoded.input_ids),  # type: ignore[arg-type]  # sequences of ints, as packing takes
        None if types is None else arrays(types),  # type: ignore[arg-type]
        encoded.was_truncated,
        encoded.over_length,
    )


class MetricsLink:
    """The front end's end of its metrics pipe: pushes its snapshot, and on a scrape gets the other
    front ends' latest."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._lock = threading.Lock()

    def push(self, take: Callable[[], MetricsSnapshot]) -> dict[str, Any]:
        """Sends this front end's snapshot; returns the model's ``describe()`` as it is now.
        Snapshots are taken under the lock, so the model process gets them in the order taken
        and an older one never replaces a newer one there."""
        with self._lock:
            self._connection.send(("push", take()))
            return self._connection.recv()

    def scrape(self, take: Callable[[], MetricsSnapshot]) -> list[MetricsSnapshot]:
        """This front end's snapshot, then the other front ends' (and those of front ends gone,
        their counters only) as the model process holds them."""
        with self._lock:
            own = take()
            self._connection.send(("scrape", own))
            return [own, *self._connection.recv()]


class RemoteModelReranker(Reranker):
    """A Reranker that tokenises in this process and scores in the model process: ``encode``,
    ``logits``, ``predict`` and ``rank`` work as on the model's own Reranker; ``describe`` is the
    model process's. It holds no weights, so ``module``, ``to`` and CUDA graphs are not here."""

    def __init__(
        self,
        tokenizer: PairTokenizer,
        config: JinaBertConfig,
        engine: dict[str, Any],
        name: str,
        link: ModelLink,
    ) -> None:
        super().__init__(None, tokenizer, name=name)  # type: ignore[arg-type]  # no model here
        self._remote_config = config
        self._engine = engine
        self._link = link

    @property
    def config(self) -> JinaBertConfig:
        return self._remote_config

    @property
    def device(self) -> torch.device:
        return torch.device(self._engine["device"])

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self._engine["dtype"])

    @property
    def module(self) -> Any:
        raise RuntimeError("the model lives in the model process; a front end has no module")

    def to(self, device: str | torch.device) -> Reranker:
        raise RuntimeError("the model lives in the model process; a front end cannot move it")

    def enable_cuda_graphs(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA graphs are the model process's (serve --cuda-graphs)")

    def describe(self) -> dict[str, Any]:
        """The model process's ``describe()``, as of the last metrics push (at most a second old:
        its CUDA-graph counters move)."""
        return dict(self._engine)

    def update_engine(self, engine: dict[str, Any]) -> None:
        self._engine = engine

    def _score_encoded(self, encoded: EncodedPairs, *batching: Any, **options: Any) -> torch.Tensor:
        # The model process batches by its own max_batch_tokens (the server's setting).
        return self._link(encoded)


def run_front_end(
    spec: FrontEndSpec, listening: socket.socket, forwards: Connection, metrics: Connection
) -> None:
    """A front-end process's body: serve on ``listening`` until drained (SIGTERM from the model
    process) or until the model process is gone."""
    # Signals come from the model process alone (it passes each one on, as SIGTERM): a terminal's
    # Ctrl-C, sent to the whole process group, would otherwise arrive twice and skip the drain,
    # or stop a front end still starting with a KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.setpgrp()
    from turborank.serving.app import create_app
    from turborank.serving.logs import serve_logging
    from turborank.serving.server import DrainingServer, uvicorn_config

    with serve_logging(spec.listener.log_level, spec.json_logs):
        tokenizer = PairTokenizer.from_directory(spec.checkpoint, spec.config.max_position_embeddings)
        reranker = RemoteModelReranker(tokenizer, spec.config, spec.engine, spec.name, ModelLink(forwards))
        app = create_app(reranker, spec.settings, warm_before_serving=True)
        state = app.state.turborank
        state.front_end_of = (spec.server_settings, spec.count, spec.index)
        link = MetricsLink(metrics)
        state.metrics_of_all = lambda: link.scrape(state.metrics.snapshot)
        stop = threading.Event()
        pusher = threading.Thread(target=_push_metrics, args=(state, reranker, link, stop), daemon=True)
        pusher.start()
        threading.Thread(target=_exit_with_model_process, daemon=True).start()
        # Which process a log line comes from: the front ends share the model process's stderr.
        logger.info("front end %d (pid %d) starting", spec.index, os.getpid())
        server = DrainingServer(uvicorn_config(app, spec.listener), state)
        try:
            server.run_as_the_process(sockets=[listening])
        finally:
            stop.set()
            # Ended before the interpreter exits, which would otherwise free what the thread holds
            # (the app's state) while it finalises: freeing a tensor there aborts the process.
            pusher.join(timeout=10.0)


def _push_metrics(
    state: Any, reranker: RemoteModelReranker, link: MetricsLink, stop: threading.Event
) -> None:
    while not stop.wait(METRICS_PUSH_S):
        try:
            reranker.update_engine(link.push(state.metrics.snapshot))
        except (OSError, EOFError):
            return


def _exit_with_model_process() -> None:
    """Drain (forwards now fail at once, so it is quick) when the model process is gone."""
    parent = parent_process()
    if parent is None:
        return
    parent.join()
    logger.error("the model process is gone: this front end drains and exits")
    os.kill(os.getpid(), signal.SIGTERM)
