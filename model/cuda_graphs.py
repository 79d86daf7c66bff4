"""CUDA graphs for small batches: one captured forward per (pairs, tokens) bucket.

A small request (the model card's 10 short documents) costs far less GPU time than the ~60 kernel
launches of the forward cost on the host; replaying a captured graph is one launch. Shapes must be
static inside a graph, so a batch is laid out into its bucket (``turborank.packing.bucket_layout``).

Real sequences get the same logits as without the bucket (row-wise ops, per-sequence attention);
tests check this on CPU with ``capture=False``, which runs the same layout eagerly.
"""

from __future__ import annotations

import contextlib
import threading

import torch

from turborank.modeling import JinaBertReranker
from turborank.packing import PAD_TOKEN_ID, PAIR_BUCKETS, TOKEN_BUCKETS, bucket_layout, choose_bucket


class CudaGraphForward:
    """Runs ``model`` on small batches through captured CUDA graphs, one per bucket, captured on
    first use (or by ``capture_buckets``) and sharing one memory pool.

    Replays are serialised by a lock; outputs are copied out of the graph's static buffer before
    the lock is released, so a later replay cannot overwrite them.
    """

    def __init__(
        self,
        model: JinaBertReranker,
        max_pairs: int = PAIR_BUCKETS[-1],
        max_tokens: int = TOKEN_BUCKETS[-1],
        capture: bool = True,
    ) -> None:
        if capture:
            if model.device.type != "cuda":
                raise ValueError(f"CUDA graphs need the model on a CUDA device, it is on {model.device}")
            not_triton = [op for op, name in model.ops.backends.items() if name != "triton"]
            if not_triton:
                raise ValueError(
                    f"CUDA graphs need the Triton ops (the PyTorch attention path syncs with the host); "
                    f"these ops are not Triton: {not_triton}"
                )
        self.model = model
        self.max_pairs, self.max_tokens = max_pairs, max_tokens
        self.capture = capture
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._pool = None
        if capture:
            with torch.cuda.device(model.device):
                self._pool = torch.cuda.graph_pool_handle()
        self._lock = threading.Lock()
        self.batches = 0  # batches run through a bucket (replayed, or eagerly with capture=False)

    def bucket(self, lengths: list[int]) -> tuple[int, int] | None:
        return choose_bucket(lengths, self.max_pairs, self.max_tokens)

    @property
    def captured(self) -> list[tuple[int, int]]:
        return sorted(self._graphs)

    def _forward(self, flat: torch.Tensor, bucket: tuple[int, int]) -> torch.Tensor:
        _, tokens = bucket
        cu_seqlens = flat[2 * tokens :].to(torch.int32)
        return self.model(flat[:tokens], cu_seqlens, tokens, flat[tokens : 2 * tokens])

    def _capture(self, bucket: tuple[int, int]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        static = bucket_layout([[PAD_TOKEN_ID]], None, bucket).to(self.model.device)
        # Warm up on a side stream first: Triton compiles and cuBLAS picks its kernels outside the
        # capture (neither may happen while capturing).
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._forward(static, bucket)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self._forward(static, bucket)
        return graph, static, logits

    def _on_device(self):
        """The model's GPU as the current device: streams, pools and graphs are per device."""
        return torch.cuda.device(self.model.device) if self.capture else contextlib.nullcontext()

    def capture_buckets(self, buckets: list[tuple[int, int]]) -> None:
        """Capture these buckets now (a server does it at start-up, not on a user's request)."""
        for pairs, tokens in buckets:
            if pairs not in PAIR_BUCKETS or tokens not in TOKEN_BUCKETS or tokens <= pairs:
                raise ValueError(
                    f"bucket ({pairs}, {tokens}): pairs must be one of {PAIR_BUCKETS}, tokens one of "
                    f"{TOKEN_BUCKETS}, and tokens > pairs"
                )
        if not self.capture:  # the eager layout (tests on CPU) has nothing to capture
            return
        with self._lock, self._on_device():
            for bucket in buckets:
                if bucket not in self._graphs:
                    self._graphs[bucket] = self._capture(bucket)

    def __call__(
        self, input_ids: list[list[int]], token_type_ids: list[list[int]] | None
    ) -> torch.Tensor | None:
        """fp32 logits [n] on the model's device, or None when no bucket holds the batch."""
        bucket = self.bucket([len(ids) for ids in input_ids])
        if bucket is None:
            return None
        flat = bucket_layout(input_ids, token_type_ids, bucket)
        _, tokens = bucket
        self.model.check_token_ids(flat[:tokens], flat[tokens : 2 * tokens])
        n = len(input_ids)
        if not self.capture:
            with self._lock:  # callers may share this object across threads: no count lost
                self.batches += 1
            return self._forward(flat.to(self.model.device), bucket)[:n]
        # Pinned memory from PyTorch's caching host allocator: the copy is asynchronous and the
        # block is not reused before the copy has run.
        flat = flat.pin_memory()
        with self._lock, self._on_device():
            self.batches += 1
            if bucket not in self._graphs:
                self._graphs[bucket] = self._capture(bucket)
            graph, static, logits = self._graphs[bucket]
            static.copy_(flat, non_blocking=True)
            graph.replay()
            return logits[:n].clone()
