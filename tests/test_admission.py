"""Request slots shared between clients: which upload gives up its slot when every slot is in use,
and that a request whose slot was given away is never scored."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

pytest.importorskip("fastapi")

from turborank.serving.admission import Admission
from turborank.serving.app import ServeSettings, create_app
from turborank.serving.errors import APIError

BODY = json.dumps({"query": "q", "texts": ["a document"]}).encode()


async def hold(admission: Admission, client: str, uploading: bool, held: asyncio.Future) -> None:
    """A request of ``client`` holding a slot (uploading its body, or being scored) until cancelled."""
    slot = admission.admit(client)
    slot.uploading = uploading
    held.set_result(slot)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(3600)


@pytest.mark.parametrize("first", ["scoring", "uploading"])
def test_of_two_equally_busy_clients_the_one_with_an_upload_gives_up_a_slot(first):
    """Four slots: client 'scoring' has two requests being scored, client 'uploading' two stalled
    uploads; a third client takes one of the uploads whichever of the two came first (the first
    in the table used to be the only one looked at, and its scored requests are never cut short)."""

    async def scenario() -> tuple[bool, list[bool]]:
        admission = Admission(limit=4, per_client=None)
        order = [first, "scoring" if first == "uploading" else "uploading"]
        tasks, slots = [], []
        for client in order:
            for _ in range(2):
                held = asyncio.get_running_loop().create_future()
                tasks.append(asyncio.ensure_future(hold(admission, client, client == "uploading", held)))
                slots.append(await held)
        try:
            admission.admit("newcomer")
            admitted = True
        except APIError:
            admitted = False
        taken = [slot.taken for slot in slots if slot.client == "uploading"]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return admitted, taken

    admitted, taken = asyncio.run(scenario())
    assert admitted and sorted(taken) == [False, True]


def test_refused_when_every_slot_is_being_scored_the_answer_says_so():
    async def scenario() -> str:
        admission = Admission(limit=2, per_client=None)
        for client in ("a", "b"):
            admission.admit(client).uploading = False
        with pytest.raises(APIError) as refused:
            admission.admit("c")
        return str(refused.value)

    assert "all 2 request slots are in use" in asyncio.run(scenario())


def http_scope(client: str) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/rerank",
        "raw_path": b"/rerank",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"x"),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(BODY)),
        ],
        "client": (client, 1234),
        "server": ("x", 80),
    }


async def answer_of(app, client: str, receive) -> tuple[int, bytes]:
    status, body = [0], [b""]

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]
        elif message["type"] == "http.response.body":
            body[0] += message.get("body", b"")

    await app(http_scope(client), receive, send)
    return status[0], body[0]


SLOT_TAKEN = b"its slot went to another client"


def slot_race(reranker, read_waits_for_newcomer: bool) -> tuple[tuple[int, bytes], ...]:
    """Two slots, both client A's: a stalled upload and one whose body's last chunk arrives as
    client B's request comes. Returns the answers of A's completing upload, of B, and of A's
    stalled upload ((0, b"") while it still holds its slot), and how many slots are held once B
    is answered. ``read_waits_for_newcomer``: the last read returns only after B was admitted,
    else at once, B admitted in the next turn of the event loop."""

    async def scenario() -> tuple[tuple[int, bytes], ...]:
        app = create_app(reranker, ServeSettings(model_name="t", max_concurrent_requests=2))
        lifespan_in, lifespan_out = asyncio.Queue(), asyncio.Queue()
        await lifespan_in.put({"type": "lifespan.startup"})
        lifespan_scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        lifespan = asyncio.ensure_future(app(lifespan_scope, lifespan_in.get, lifespan_out.put))
        assert (await lifespan_out.get())["type"] == "lifespan.startup.complete"
        state = app.state.turborank
        while not state.warmed:
            await asyncio.sleep(0.02)
        never = asyncio.Event()
        newcomer: list[asyncio.Future] = []

        async def stalled() -> dict:
            if not getattr(stalled, "sent", False):
                stalled.sent = True
                return {"type": "http.request", "body": BODY[:5], "more_body": True}
            await never.wait()

        reads = [0]

        async def completing() -> dict:
            reads[0] += 1
            if reads[0] == 1:
                return {"type": "http.request", "body": b"", "more_body": True}
            if reads[0] == 2:
                asyncio.get_running_loop().call_soon(
                    lambda: newcomer.append(asyncio.ensure_future(answer_of(app, "10.0.0.2", whole())))
                )
                while read_waits_for_newcomer and "10.0.0.2" not in state.admission.by_client:
                    await asyncio.sleep(0)
                return {"type": "http.request", "body": BODY, "more_body": False}
            await never.wait()

        def whole():
            sent = [False]

            async def receive() -> dict:
                if not sent[0]:
                    sent[0] = True
                    return {"type": "http.request", "body": BODY, "more_body": False}
                await never.wait()

            return receive

        held = asyncio.ensure_future(answer_of(app, "10.0.0.1", stalled))
        await asyncio.sleep(0.05)
        victim = await asyncio.wait_for(answer_of(app, "10.0.0.1", completing), 30)
        other = await asyncio.wait_for(newcomer[0], 30)
        in_flight = state.admission.active
        upload = held.result() if held.done() else (0, b"")
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)
        await lifespan_in.put({"type": "lifespan.shutdown"})
        await lifespan_out.get()
        await lifespan
        return victim, other, upload, in_flight

    return asyncio.run(scenario())


def test_a_request_whose_slot_was_given_away_as_its_body_completed_is_not_scored(reranker):
    """B takes the slot of A's upload that had sent least. Where B is admitted as the completing
    upload's last read returns, the cancel of its task lands as the read completes, which
    asyncio.wait_for drops on Python 3.10-3.11: it must still be answered 429, not scored on a slot
    it no longer holds (three requests in flight under a limit of two). Python 3.12's wait_for runs
    the read in the handler's own task, so the body is whole before B is admitted and B takes the
    stalled upload's slot instead: either way one of A's uploads is refused, never both served."""
    victim, other, upload, in_flight = slot_race(reranker, read_waits_for_newcomer=False)
    assert other[0] == 200
    if victim[0] == 429:
        assert SLOT_TAKEN in victim[1] and upload == (0, b"") and in_flight == 1, (victim, upload)
    else:
        assert victim[0] == 200 and upload[0] == 429 and SLOT_TAKEN in upload[1], (victim, upload)
        assert in_flight == 0


def test_an_upload_whose_slot_is_given_away_while_its_read_waits_is_refused(reranker):
    """The cancel lands while the last read is pending, on any Python: 429, the stalled upload
    keeps its slot."""
    victim, other, upload, in_flight = slot_race(reranker, read_waits_for_newcomer=True)
    assert victim[0] == 429 and SLOT_TAKEN in victim[1], victim
    assert other[0] == 200 and upload == (0, b"") and in_flight == 1
