"""A stand-in device for measuring the host side of turborank as it will run on a GPU.

The model's forward is replaced by one that takes the time the GPU would
(``benchmarks.gpu.targets.projected_forward_seconds`` of the batch's lengths), in a sleep that
releases the GIL and burns no CPU, and returns logits of the right shape; everything else (HTTP,
parsing, tokenising, scheduling, packing, copies, results) is the product's own code. It is a seam
for benchmarks and tests, not an option of the product.

    python -m benchmarks.serve.stand_in serve --model CKPT --port 8080 ...   # `turborank serve` on it

``STAND_IN_STATS`` (an environment variable naming a file) makes the stand-in keep three counters
there, updated after every forward: forwards run, seconds spent in them and the seconds projected
for them (``read_stats``), so a benchmark can tell how busy the device was. The seconds spent are the
ones the sleep really took: it overshoots a short projection by tens of microseconds (a wake-up is
not instant), and by a millisecond or more when the host's threads keep every core busy and the
forward's thread waits for one; the projected seconds are what a GPU would take.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import struct
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import torch

from benchmarks.gpu.targets import projected_forward_seconds

STATS_ENV = "STAND_IN_STATS"
_STATS = struct.Struct("<ddd")  # forwards, busy seconds, projected seconds
_PR_SET_TIMERSLACK = 29


class StandInForward:
    """Call-compatible with ``JinaBertReranker.forward``; sleeps the projected GPU time."""

    def __init__(self, stats_path: str | None = None) -> None:
        self.forwards = 0
        self.busy_s = 0.0
        self.projected_s = 0.0
        self._lock = threading.Lock()
        self._stats: mmap.mmap | None = None
        if stats_path:
            with open(stats_path, "wb") as f:
                f.write(bytes(_STATS.size))
            with open(stats_path, "r+b") as f:
                self._stats = mmap.mmap(f.fileno(), _STATS.size)

    def __call__(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, *_: object) -> torch.Tensor:
        """The forward's time comes from the sequences' lengths alone (``max_seqlen`` and the
        token types, the forward's other arguments, change nothing here)."""
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
        _tight_timer_slack()
        projected = projected_forward_seconds(lengths)
        start = time.perf_counter()
        time.sleep(projected)
        # A sleep overshoots by tens of microseconds (a wake-up is not instant): the device time
        # counted is the time the forward really took, so the overshoot is not billed to the host.
        seconds = time.perf_counter() - start
        with self._lock:
            self.forwards += 1
            self.busy_s += seconds
            self.projected_s += projected
            if self._stats is not None:
                self._stats[:] = _STATS.pack(self.forwards, self.busy_s, self.projected_s)
        return torch.zeros(len(lengths), dtype=torch.float32)


_SLACK_SET = threading.local()


def _tight_timer_slack() -> None:
    """Linux lets a sleeping thread wake up to 50 us late (its timer slack); 1 ns on the thread
    running the forwards brings a stand-in sleep closer to a GPU synchronisation."""
    if getattr(_SLACK_SET, "done", False):
        return
    _SLACK_SET.done = True
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)


def install(reranker, stats_path: str | None = None) -> StandInForward:
    """Replace ``reranker``'s forward by the stand-in; returns it (its counters)."""
    forward = StandInForward(stats_path)
    reranker.module.forward = forward
    # A GPU's forward leaves the host's cores free, and so does the stand-in's sleep.
    reranker.overlap_tokenising = True
    return forward


class DeviceStats(NamedTuple):
    forwards: int
    busy_s: float  # the forwards' sleeps as they took
    projected_s: float  # the forwards' projected GPU time


def read_stats(path: str | Path) -> DeviceStats:
    """The counters the stand-in of another process wrote to ``path``."""
    forwards, busy, projected = _STATS.unpack(Path(path).read_bytes()[: _STATS.size])
    return DeviceStats(int(forwards), busy, projected)


def main(argv: list[str]) -> int:
    """`turborank` with every model it loads on the stand-in device."""
    from turborank import reranker as reranker_module
    from turborank.cli import main as turborank_main

    original = reranker_module.Reranker.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        loaded = original(cls, *args, **kwargs)
        install(loaded, os.environ.get(STATS_ENV))
        return loaded

    reranker_module.Reranker.from_pretrained = classmethod(from_pretrained)
    return turborank_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
