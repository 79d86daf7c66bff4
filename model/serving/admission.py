"""Request slots, shared fairly between clients.

A request holds one of ``max_concurrent_requests`` slots from admission to its answer. Slots are
first come, first served while some are free. When all are taken, a request from a client that
holds fewer slots than the busiest client takes one: of the clients holding more than the
newcomer's would after taking one, the busiest with a request still uploading its body gives up
the upload that has sent the fewest bytes, answered 429 (a request already being scored is never
cut short). So a client that opens many slow uploads (slowloris with bodies) holds only
what no one else wants, and a second client is served at once instead of after a body timeout;
a single client alone may still use every slot. ``max_requests_per_client`` adds a fixed cap.

A client is the connection's address, or the X-Forwarded-For address when the connection comes
from a trusted proxy (uvicorn's ``forwarded_allow_ips``).
"""

from __future__ import annotations

import asyncio
import dataclasses

from turborank.serving import errors
from turborank.serving.errors import APIError
from turborank.serving.request_body import CLOSE


@dataclasses.dataclass(eq=False)
class Slot:
    client: str
    task: asyncio.Task | None
    uploading: bool = True
    received: int = 0  # body bytes so far (read_body keeps it)
    expected: int | None = None  # Content-Length, when sent
    taken: bool = False  # given to another client: the handler answers 429


class Admission:
    def __init__(self, limit: int, per_client: int | None) -> None:
        self.limit, self.per_client = limit, per_client
        self.by_client: dict[str, list[Slot]] = {}
        self.active = 0

    def admit(self, client: str) -> Slot:
        """A slot for this client's request, or APIError 429. Call ``release`` when it is answered."""
        held = self.by_client.get(client, ())
        if self.per_client is not None and len(held) >= self.per_client:
            raise APIError(
                429,
                errors.OVERLOADED,
                f"this client ({client}) has {len(held)} requests in flight, the most one client may have",
                {"Retry-After": "1", **CLOSE},
            )
        if self.active >= self.limit and not self._take_from_busiest(len(held)):
            raise APIError(
                429,
                errors.OVERLOADED,
                f"all {self.limit} request slots are in use, none by an upload of a client holding more "
                "than this one",
                {"Retry-After": "1", **CLOSE},
            )
        slot = Slot(client, asyncio.current_task())
        self.by_client.setdefault(client, []).append(slot)
        self.active += 1
        return slot

    def release(self, slot: Slot) -> None:
        held = self.by_client.get(slot.client)
        if held is None or slot not in held:
            return
        held.remove(slot)
        if not held:
            del self.by_client[slot.client]
        self.active -= 1

    def _take_from_busiest(self, newcomer_holds: int) -> bool:
        # From a client that would still hold more than the newcomer's after giving one up (else no
        # fairer), the busiest with an upload in progress, whatever the order clients came in: its
        # upload that has sent the fewest bytes.
        uploading = [
            slot
            for held in self.by_client.values()
            if len(held) > newcomer_holds + 1
            for slot in held
            if slot.uploading and slot.task is not None
        ]
        if not uploading:
            return False
        victim = max(uploading, key=lambda slot: (len(self.by_client[slot.client]), -slot.received))
        self.release(victim)
        victim.taken = True
        victim.task.cancel()
        return True

    def taken_error(self, slot: Slot) -> APIError:
        """The answer of a request whose slot went to another client."""
        sent = f"{slot.received}" + (f" of {slot.expected}" if slot.expected is not None else "")
        return APIError(
            429,
            errors.OVERLOADED,
            f"every request slot was taken and this client ({slot.client}) held the most; this one was "
            f"still uploading its body ({sent} bytes), so its slot went to another client",
            {"Retry-After": "1", **CLOSE},
        )
