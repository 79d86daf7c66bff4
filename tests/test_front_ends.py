"""`turborank serve --front-ends N`: front-end processes feeding one model process.

In process: the limits' shares, the metrics' sum, the forward service (joined batches, a failure
kept to its own front end) and the Reranker that scores in another process. Through the real
command: the same scores as one process, /metrics counting every front end, a front end that dies
at once stopping the server and one that dies later started again, and the front ends leaving when
the model process is killed (SIGTERM draining every front end: test_server's drain test)."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import weakref

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from tests.serve_process import front_end_pids, gone, serve_process  # noqa: E402
from turborank.scoring_options import NonFiniteScoreError  # noqa: E402
from turborank.serving.app import create_app  # noqa: E402
from turborank.serving.front_end import (  # noqa: E402
    FAILED,
    METRICS_PUSH_S,
    OK,
    MetricsLink,
    ModelLink,
    ModelProcessError,
    RemoteModelReranker,
    front_end_settings,
    share,
)
from turborank.serving.front_ends import (  # noqa: E402
    MAX_RESTARTS,
    ForwardService,
    FrontEnds,
    MetricsRelay,
)
from turborank.serving.metrics import ServerMetrics, render_sum  # noqa: E402
from turborank.serving.scheduler import BatchError  # noqa: E402
from turborank.serving.settings import Listener, ServeSettings  # noqa: E402
from turborank.testing_server import free_port, serve_command  # noqa: E402
from turborank.tokenization import PairTokenizer  # noqa: E402

DOCS = ["the cat sat on the mat", "a document about retrieval", "", "x " * 40, "relevance scores"]


# --- in process -----------------------------------------------------------------------------------


@pytest.mark.parametrize("total,parts", [(512, 2), (7, 3), (2, 4), (1, 1), (100, 16)])
def test_shares_add_up_to_the_limit_and_none_is_zero(total, parts):
    shares = [share(total, parts, i) for i in range(parts)]
    assert min(shares) >= 1 and max(shares) - min(shares) <= 1
    assert sum(shares) == max(total, parts)


def test_front_end_settings_split_the_limits_that_count_across_requests():
    settings = ServeSettings("m", max_concurrent_requests=10, max_requests_per_client=8, max_connections=5)
    parts = [front_end_settings(settings, 3, i) for i in range(3)]
    assert [p.max_concurrent_requests for p in parts] == [4, 3, 3]
    assert [p.max_requests_per_client for p in parts] == [4, 3, 3]  # never above the share
    assert [p.max_connections for p in parts] == [2, 2, 1]
    assert all(p.max_documents == settings.max_documents for p in parts)
    unlimited = front_end_settings(ServeSettings("m"), 2, 0)
    assert unlimited.max_requests_per_client is None and unlimited.max_connections is None


def _metrics_after(requests: int, failures: int) -> ServerMetrics:
    metrics = ServerMetrics()
    for _ in range(requests):
        metrics.answered("/rerank", 200, 0.004, None)
    for _ in range(failures):
        metrics.answered("/rerank", 422, 0.001, "Validation")
    metrics.observe("batch", seconds=0.002, pairs=3, tokens=300)
    metrics.active.set(requests)
    return metrics


def test_metrics_of_one_process_render_as_they_always_did():
    metrics = _metrics_after(3, 1)
    assert render_sum([metrics.snapshot()]) == metrics.render()


def test_metrics_of_several_processes_add_up():
    text = render_sum([_metrics_after(3, 1).snapshot(), _metrics_after(2, 0).snapshot()]).decode()
    lines = set(text.splitlines())
    assert 'turborank_requests_total{code="200",endpoint="/rerank"} 5.0' in lines
    assert 'turborank_requests_total{code="422",endpoint="/rerank"} 1.0' in lines
    assert 'turborank_request_duration_seconds_count{endpoint="/rerank"} 6.0' in lines
    assert 'turborank_batch_pairs_bucket{le="4.0"} 2.0' in lines
    assert "turborank_tokens_total 600.0" in lines and "turborank_active_requests 5.0" in lines
    assert (
        'te_request_count{method="rerank"} 6' in lines and 'te_request_failure{err="validation"} 1' in lines
    )


def test_a_push_brings_back_the_model_description_and_a_scrape_every_front_ends_metrics():
    context = multiprocessing.get_context("spawn")
    counter = iter(range(100))
    relay = MetricsRelay(lambda: {"graphed_batches": next(counter)})
    links, ends = [], []
    for index in range(2):
        here, there = context.Pipe()
        relay.attach(index, here)
        links.append(MetricsLink(there))
        ends.append(there)
    first, second = _metrics_after(1, 0).snapshot(), _metrics_after(2, 0).snapshot()
    assert not relay.has_pushed(0)
    assert links[0].push(lambda: first) == {"graphed_batches": 0}  # live, not as at the start
    assert links[1].push(lambda: second) == {"graphed_batches": 1}
    assert relay.has_pushed(0) and relay.has_pushed(1)
    assert links[0].scrape(lambda: first) == [first, second]
    assert links[1].scrape(lambda: second) == [second, first]
    ends[1].close()  # the second front end is gone: its counters stay in the sum, its gauges go
    deadline = time.monotonic() + 10
    while links[0].scrape(lambda: first)[1:] == [second] and time.monotonic() < deadline:
        time.sleep(0.01)
    text = render_sum(links[0].scrape(lambda: first)).decode().splitlines()
    assert 'turborank_requests_total{code="200",endpoint="/rerank"} 3.0' in text
    assert "turborank_active_requests 1.0" in text  # the first front end's alone


class _SlowModel:
    def describe(self) -> dict:
        time.sleep(0.3)
        return {"device": "cpu"}


def test_once_joined_no_relay_thread_holds_the_model():
    """The server joins the relay before it exits: a relay thread still ending while the interpreter
    finalises would free the model there, and freeing a tensor then aborts the process (status -6
    instead of the server's own, seen when a front end died at its start)."""
    context = multiprocessing.get_context("spawn")
    model = _SlowModel()
    held = weakref.ref(model)
    relay = MetricsRelay(model.describe)
    for index in range(2):
        here, there = context.Pipe()
        relay.attach(index, here)
        there.send(("push", _metrics_after(1, 0).snapshot()))  # its last push, answered slowly
        there.close()  # the front end has exited
    del model, here
    relay.join(timeout_s=10)
    del relay
    gc.collect()
    assert held() is None


class _Recorder:
    """A Reranker stand-in for the forward service: logits = the pairs' lengths; an input holding
    the id ``poison`` fails its forward."""

    def __init__(self, poison: int | None = None) -> None:
        self.calls: list[int] = []
        self.poison = poison

    def logits(self, encoded, batch_size, max_batch_tokens):
        self.calls.append(len(encoded.input_ids))
        if any(self.poison in ids for ids in encoded.input_ids):
            raise ValueError("poisoned batch")
        if any(NAN_ID in ids for ids in encoded.input_ids):
            raise NonFiniteScoreError("the model produced a non-finite score (nan) for pair 0 (input order)")
        return torch.tensor([float(n) for n in encoded.lengths])

    def describe(self) -> dict:
        return {"device": "cpu"}


NAN_ID = 777


def _encoded(*lengths: int, first: int = 1):
    from turborank.tokenization import EncodedPairs

    ids = [[first] * n for n in lengths]
    return EncodedPairs(ids, None, [False] * len(ids))


def test_forward_service_joins_waiting_batches_and_keeps_a_failure_to_its_own_front_end():
    context = multiprocessing.get_context("spawn")
    model = _Recorder(poison=666)
    service = ForwardService(model, max_batch_tokens=100)
    ends = [context.Pipe() for _ in range(3)]
    # Sent before the model thread starts, so that they wait together.
    batches = [_encoded(3, 5), _encoded(7, first=666), _encoded(2)]
    for (here, there), batch in zip(ends, batches, strict=True):
        service.attach(here)
        there.send(batch)
    service.start()
    answers = [there.recv() for _, there in ends]
    service.stop()
    assert answers[0] == (OK, [3.0, 5.0]) and answers[2] == (OK, [2.0])
    assert answers[1] == (FAILED, "ValueError: poisoned batch")
    assert model.calls[0] == 4  # one joined forward first, then each alone after it failed


def test_forward_service_keeps_a_forward_within_max_batch_tokens():
    context = multiprocessing.get_context("spawn")
    model = _Recorder()
    service = ForwardService(model, max_batch_tokens=10)
    ends = [context.Pipe() for _ in range(3)]
    for (here, there), batch in zip(ends, [_encoded(6), _encoded(6), _encoded(4)], strict=True):
        service.attach(here)
        there.send(batch)
    service.start()
    assert [there.recv() for _, there in ends] == [(OK, [6.0]), (OK, [6.0]), (OK, [4.0])]
    service.stop()
    assert model.calls == [1, 2]  # 6 alone (6 + 6 > 10), then 6 + 4


def test_a_non_finite_score_reads_as_in_one_process():
    """The model process says which kind of failure it was: a front end's scheduler then answers a
    non-finite score with its own message (not the model process's pair numbers), retrying each
    request alone, as one process does."""
    from turborank.serving.scheduler import BatchScheduler

    context = multiprocessing.get_context("spawn")
    here, there = context.Pipe()
    service = ForwardService(_Recorder(), max_batch_tokens=100)
    service.attach(here)
    service.start()
    link = ModelLink(there)
    with pytest.raises(NonFiniteScoreError):
        link(_encoded(3, first=NAN_ID))
    scheduler = BatchScheduler(link, max_batch_tokens=100)
    scheduler.start()
    try:

        class Request:  # an owner: a request, as the server's are
            pass

        async def both():
            loop = asyncio.get_running_loop()
            bad = scheduler.submit(_encoded(2, first=NAN_ID), owner=Request(), loop=loop)
            good = scheduler.submit(_encoded(4), owner=Request(), loop=loop)
            return await asyncio.gather(bad.future, good.future, return_exceptions=True)

        bad, good = asyncio.run(both())
    finally:
        scheduler.stop()
        there.close()
        service.stop()
    assert good == [4.0]
    assert isinstance(bad, BatchError) and "pair 0" not in str(bad) and "non-finite" in str(bad)


def test_a_front_end_is_not_started_again_before_it_served_or_when_it_keeps_dying():
    fronts = FrontEnds(_Recorder(), ServeSettings("m"), Listener(), 2, "ckpt", json_logs=False)
    here, there = multiprocessing.get_context("spawn").Pipe()
    fronts._metrics.attach(0, here)
    assert "before it served" in fronts._cannot_restart(0, time.monotonic())
    MetricsLink(there).push(lambda: _metrics_after(1, 0).snapshot())
    there.close()  # it died: the relay may see its pipe end before the watcher sees it exit
    time.sleep(0.2)
    assert [fronts._cannot_restart(0, time.monotonic()) for _ in range(MAX_RESTARTS)] == [None] * MAX_RESTARTS
    assert "4th time" in fronts._cannot_restart(0, time.monotonic())


def test_a_restarted_front_end_is_its_own_entry_and_the_gone_ones_fold_into_one():
    """The new start's first push may come before the old connection's end is seen: neither takes
    the other's place, and every front end gone adds its counters to one retired snapshot."""
    context = multiprocessing.get_context("spawn")
    relay = MetricsRelay(dict)
    first_here, first = context.Pipe()
    relay.attach(0, first_here)
    MetricsLink(first).push(lambda: _metrics_after(3, 0).snapshot())
    again_here, again = context.Pipe()
    relay.attach(0, again_here)  # front end 0 started again
    assert not relay.has_pushed(0)
    MetricsLink(again).push(lambda: _metrics_after(2, 0).snapshot())
    assert relay.has_pushed(0)
    first.close()  # the old start's end is seen after the new start's push
    watcher_here, watcher = context.Pipe()
    relay.attach(1, watcher_here)
    watching = MetricsLink(watcher)

    def requests_counted() -> list[str]:
        lines = render_sum(watching.scrape(lambda: _metrics_after(0, 0).snapshot())).decode().splitlines()
        return [line for line in lines if line.startswith("turborank_requests_total")]

    deadline = time.monotonic() + 10
    while requests_counted() != ['turborank_requests_total{code="200",endpoint="/rerank"} 5.0']:
        assert time.monotonic() < deadline, requests_counted()
        time.sleep(0.01)
    again.close()
    while (
        requests_counted() != ['turborank_requests_total{code="200",endpoint="/rerank"} 5.0']
        or len(watching.scrape(lambda: _metrics_after(0, 0).snapshot())) != 2
    ):  # this front end's own, and one retired snapshot for both gone
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_batch_that_cannot_be_read_is_answered_and_the_model_thread_goes_on():
    context = multiprocessing.get_context("spawn")
    here, there = context.Pipe()
    service = ForwardService(_Recorder(), max_batch_tokens=100)
    service.attach(here)
    service.start()
    try:
        there.send_bytes(b"not a pickle")
        assert there.poll(10)  # answered, not left waiting
        assert there.recv() == (FAILED, "the model process could not read the batch")
        assert ModelLink(there)(_encoded(3)).tolist() == [3.0]
    finally:
        there.close()
        service.stop()


def test_leaving_on_an_error_stops_the_front_ends_already_started(monkeypatch):
    """A start that fails (no memory to spawn) must not leave the others serving without a model,
    nor the model process waiting for them."""
    fronts = FrontEnds(_Recorder(), ServeSettings("m"), Listener("127.0.0.1", free_port()), 2, "c", False)
    started = []

    def start(index: int, engine: dict) -> None:
        if index == 1:
            raise OSError(12, "Cannot allocate memory")
        process = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(120,))
        process.start()
        started.append(process)
        fronts._processes[index] = (process, time.monotonic())

    monkeypatch.setattr(fronts, "_start", start)
    with pytest.raises(OSError, match="allocate"):
        fronts.run()
    assert started and all(process.exitcode is not None for process in started)


def test_a_remote_model_reranker_scores_like_the_model_itself(reranker, small_ckpt):
    """Tokenised here, scored by a forward service over a pipe: rank and predict as the local
    Reranker's; describe() is the model's; a gone model process is a ModelProcessError."""
    context = multiprocessing.get_context("spawn")
    here, there = context.Pipe()
    service = ForwardService(reranker, max_batch_tokens=4096)
    service.attach(here)
    service.start()
    tokenizer = PairTokenizer.from_directory(small_ckpt, reranker.config.max_position_embeddings)
    remote = RemoteModelReranker(tokenizer, reranker.config, reranker.describe(), "remote", ModelLink(there))
    try:
        assert remote.rank("cat", DOCS) == reranker.rank("cat", DOCS)
        assert remote.predict([("q", d) for d in DOCS]) == reranker.predict([("q", d) for d in DOCS])
        assert remote.describe()["device"] == "cpu" and remote.dtype == reranker.dtype
        with pytest.raises(RuntimeError, match="model process"):
            remote.module  # noqa: B018
    finally:
        there.close()  # the front end leaves: the service's reader sees the end of its pipe
        service.stop()
    gone, kept = context.Pipe()
    gone.close()  # the model process's end
    remote = RemoteModelReranker(tokenizer, reranker.config, reranker.describe(), "remote", ModelLink(kept))
    with pytest.raises(ModelProcessError, match="gone"):
        remote.predict([("q", "d")])


@pytest.mark.parametrize("before", [True, False])
def test_a_front_end_is_warm_before_it_accepts(reranker, before):
    """Front ends share one listening socket: one that accepted while still warming up would answer
    503 to a request that a ready front end could have served. The one process warms up behind."""

    async def startup() -> bool:
        app = create_app(reranker, ServeSettings("m"), warm_before_serving=before)
        async with app.router.lifespan_context(app):
            return app.state.turborank.warmed  # what the first accepted connection would see

    assert asyncio.run(startup()) is before


# --- the command ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def front_ends_server(small_ckpt, tmp_path_factory):
    log = tmp_path_factory.mktemp("front_ends") / "server.log"
    with serve_process(small_ckpt, log, "--front-ends", "2", "--max-concurrent-requests", "8") as (proc, url):
        yield proc, url, log


def test_front_ends_answer_as_one_process_and_metrics_count_every_front_end(front_ends_server, reranker):
    proc, url, _ = front_ends_server
    assert len(front_end_pids(proc.pid)) == 2
    expected = [r["score"] for r in sorted(reranker.rank("cat", DOCS), key=lambda r: r["corpus_id"])]
    # New connections each, so that the kernel hands them to both front ends.
    for _ in range(12):
        response = httpx.post(url + "/rerank", json={"query": "cat", "texts": DOCS}, timeout=60)
        assert response.status_code == 200, response.text
        got = [r["score"] for r in sorted(response.json(), key=lambda r: r["index"])]
        assert got == pytest.approx(expected, abs=1e-6)
    info = httpx.get(url + "/info").json()
    # The server's limits, as a client sizes its concurrency by them; the answering front end's share
    assert info["device"] == "cpu" and info["max_concurrent_requests"] == 8
    front = info["front_ends"]
    assert front["count"] == 2 and front["index"] in (0, 1) and front["share"]["max_concurrent_requests"] == 4
    time.sleep(1.5)  # the other front end's counters arrive every second
    lines = httpx.get(url + "/metrics").text.splitlines()
    assert 'turborank_requests_total{code="200",endpoint="/rerank"} 12.0' in lines
    bad = httpx.post(url + "/rerank", json={"query": "cat", "texts": "not a list"})
    assert bad.status_code == 422 and "texts" in bad.text


def test_a_front_end_that_dies_at_its_start_stops_the_server_with_status_1(small_ckpt, tmp_path):
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            serve_command(small_ckpt, free_port(), "--front-ends", "2"), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        while len(front := front_end_pids(proc.pid)) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        os.kill(front[0], signal.SIGKILL)  # before it could serve
        try:
            status = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server did not stop within 60 s: {log.read_text()[-4000:]}")
        assert status == 1, log.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "before it served: stopping the server" in log.read_text()


def test_a_front_end_that_dies_later_is_started_again_and_all_leave_with_the_model_process(
    small_ckpt, tmp_path
):
    log = tmp_path / "server.log"
    with serve_process(small_ckpt, log, "--front-ends", "2") as (proc, url):
        first = front_end_pids(proc.pid)
        time.sleep(2 * METRICS_PUSH_S)  # it has served: its metrics went to the model process
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 120
        while (len(now := front_end_pids(proc.pid)) < 2 or first[0] in now) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(now) == 2 and first[1] in now and first[0] not in now
        for _ in range(6):
            answer = httpx.post(url + "/rerank", json={"query": "q", "texts": ["a"]}, timeout=60)
            assert answer.status_code == 200
        assert proc.poll() is None
        proc.kill()  # the model process: its front ends drain and exit on their own
        proc.wait(timeout=30)
    assert "exited with status -9: starting it again" in log.read_text()
    deadline = time.monotonic() + 30
    while not all(gone(pid) for pid in now) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(gone(pid) for pid in now)


def test_front_ends_with_ray_is_refused(small_ckpt):
    done = subprocess.run(
        [
            *(sys.executable, "-m", "turborank.cli", "serve", "--model", str(small_ckpt)),
            *("--front-ends", "2", "--ray", "local"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "--front-ends" in done.stderr


def _fronts_with_recorded_starts(monkeypatch, signal_in: str) -> tuple[FrontEnds, list[bool]]:
    """Three front ends whose spawns are recorded (was the socket they were handed open?) and run
    a sleeping process; a SIGTERM lands inside the first start, in ``signal_in``: "pipe" (while
    its pipes are made) or "start" (while the spawn runs)."""
    recorder = _Recorder()
    recorder.config = None
    fronts = FrontEnds(recorder, ServeSettings("m"), Listener("127.0.0.1", free_port()), 3, "c", False)
    real = multiprocessing.get_context("spawn")
    handed: list[bool] = []

    class Recorded:
        def __init__(self, target, args, name):
            self._socket = args[1]
            self._process = real.Process(target=time.sleep, args=(60,))

        def start(self):
            if signal_in == "start":
                fronts._on_signal(signal.SIGTERM, None)
            handed.append(self._socket.fileno() != -1)
            self._process.start()

        def __getattr__(self, name):
            return getattr(self._process, name)

    def pipe():
        if signal_in == "pipe":
            fronts._on_signal(signal.SIGTERM, None)
        return real.Pipe()

    monkeypatch.setattr(
        fronts, "_context", type("Context", (), {"Pipe": staticmethod(pipe), "Process": Recorded})()
    )
    return fronts, handed


@pytest.mark.parametrize("signal_in", ["start", "pipe"])
def test_a_signal_while_the_front_ends_start_drains_instead_of_failing(monkeypatch, signal_in):
    """The signal closed the listening socket while the loop kept starting front ends, each handed
    the closed socket: the server left with status 1 ("bad value(s) in fds_to_keep"); a signal
    while a start made its pipes (before the spawn) closed it too."""
    fronts, handed = _fronts_with_recorded_starts(monkeypatch, signal_in)
    assert fronts.run() == 0  # the started one was told to stop and did
    assert handed == [True]  # one start, with an open socket; none after the signal
    assert fronts._socket.fileno() == -1
