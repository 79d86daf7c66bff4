"""The user-facing API: ``Reranker.from_pretrained(...).rank(query, documents)``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import turborank
from turborank import tokenise_ahead
from turborank.config import JinaBertConfig
from turborank.cuda_graphs import CudaGraphForward
from turborank.devices import resolve_device, resolve_dtype
from turborank.hub import DEFAULT_MODEL, resolve_checkpoint
from turborank.linear_engines import choose_linear_engine, onednn_unavailable_reason
from turborank.modeling import JinaBertReranker
from turborank.ops import resolve_ops
from turborank.packing import (
    PAIR_BUCKETS,
    TOKEN_BUCKETS,
    in_input_order,
    pack,
    plan_batches,
    to_device,
)
from turborank.ranking import check_rank_arguments, ranked_results
from turborank.scoring_options import (
    as_pairs,
    check_logits_options,
    check_long_doc_options,
    check_options,
    check_pair_options,
    check_query,
    close_bar,
    pair_logits,
    progress_bar,
)
from turborank.tokenization import EncodedPairs, PairTokenizer, warn_truncated
from turborank.weights import find_weights_file, load_weights

logger = logging.getLogger("turborank")


class Reranker:
    """A JinaBERT cross-encoder: scores (query, document) pairs.

    Scores follow the reference conventions: ``compute_score`` and ``rank`` return sigmoid(logit);
    ``predict(..., activation=False)`` returns raw logits.

    Below those, one low-level pair for callers that tokenise apart from scoring (the server, the
    eval driver): ``encode(pairs) -> (EncodedPairs, owners)`` and ``logits(encoded, owners)``.
    The model, the tokenizer and the CUDA-graph runner are private; what callers need of them is
    here: ``num_special_tokens``, ``check_max_length``, ``describe()`` and, to time the raw
    forward, ``module``.
    """

    def __init__(
        self,
        model: JinaBertReranker,
        tokenizer: PairTokenizer,
        name: str = "",
        backend: str | dict[str, str] = "auto",
        linear: str = "auto",
    ) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self.name = name
        self.backend = backend
        self.linear = linear
        self._cuda_graphs: CudaGraphForward | None = None
        # predict over more than one chunk of pairs tokenises the next chunk while the device
        # scores this one, or the chunks in turn (turborank.tokenise_ahead). None: ahead where the
        # model is not on the CPU (there both compete for the same cores); True or False: always.
        self.overlap_tokenising: bool | None = None
        # The checkpoint directory ``from_pretrained`` loaded (a hub id's snapshot in the cache).
        self.checkpoint_directory: Path | None = None

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path = DEFAULT_MODEL,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        slopes: str | None = None,
        backend: str | dict[str, str] = "auto",
        revision: str | None = None,
        cuda_graphs: bool = False,
        linear: str = "auto",
        hub_options: dict[str, Any] | None = None,
    ) -> Reranker:
        """Load a checkpoint directory or hub id (``hub_options``: ``cache_dir``, ``token``,
        ``local_files_only`` for huggingface_hub's download).

        Args:
            device: "cpu", "cuda", "cuda:N"; None/"auto" = CUDA when available.
            dtype: "float32" | "bfloat16" | "float16" or a torch dtype; None = bf16 on CUDA, fp32 on CPU.
            slopes: override the ALiBi slope scheme ("standard" | "jina-reranker-v1"); None = chosen
                from config.json's auto_map (DEVELOPERS.md, "ALiBi slopes").
            backend: "auto" | "torch" | "triton", or {op: backend} per op.
            linear: how the linear layers run (``turborank.linear_engines``): "aten" (``F.linear``),
                "onednn" (CPU: weights packed for oneDNN at load, the GEGLU gate and the residual
                adds in the GEMM epilogues), or "auto": on CPU the faster of the two, measured at
                load on this CPU (``describe()["linear"]`` says which and why), "aten" on CUDA.
            cuda_graphs: replay captured CUDA graphs for small batches (see ``enable_cuda_graphs``).
        """
        directory = resolve_checkpoint(path_or_hub_id, revision, **(hub_options or {}))
        config = JinaBertConfig.from_file(directory / "config.json", slopes=slopes)
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        ops = resolve_ops(backend, device, config.head_dim)
        tokenizer = PairTokenizer.from_directory(directory, config.max_position_embeddings)
        tokenizer.check_fits(config.vocab_size, config.type_vocab_size, str(directory / "config.json"))
        weights = load_weights(find_weights_file(directory), config, dtype)
        model = JinaBertReranker(config, weights, ops).to(device).eval()
        model.use_linear_engine(choose_linear_engine(model, linear))
        logger.info(
            "loaded %s on %s as %s, ops %s, linear %s (%s), ALiBi %s",
            directory,
            device,
            dtype,
            ops.backends,
            model.linear_choice.engine,
            model.linear_choice.reason,
            config.alibi_scheme,
        )
        reranker = cls(model, tokenizer, name=str(path_or_hub_id), backend=backend, linear=linear)
        reranker.checkpoint_directory = directory
        if cuda_graphs:
            reranker.enable_cuda_graphs()
        return reranker

    def enable_cuda_graphs(
        self, max_pairs: int = PAIR_BUCKETS[-1], max_tokens: int = TOKEN_BUCKETS[-1], capture: bool = True
    ) -> CudaGraphForward:
        """Run batches of up to ``max_pairs - 1`` pairs and ``max_tokens`` tokens by replaying a
        CUDA graph captured per (pairs, tokens) bucket: one launch instead of ~60, which is most of
        the latency of a small request on a fast GPU. Larger batches run as before. Needs CUDA and
        the Triton ops. ``capture=False`` runs the bucketed layout eagerly (for tests on CPU)."""
        self._cuda_graphs = CudaGraphForward(self._model, max_pairs, max_tokens, capture)
        return self._cuda_graphs

    def to(self, device: str | torch.device) -> Reranker:
        """Move the model to ``device``, its ops and linear engine chosen again for it (``backend``
        and ``linear`` as loaded: "auto" is Triton and F.linear on CUDA, PyTorch and the measured
        engine on CPU). The dtype stays; CUDA graphs, bound to a device, are dropped
        (``enable_cuda_graphs`` again on the new one)."""
        device = resolve_device(device)
        ops = resolve_ops(self.backend, device, self.config.head_dim)
        if self._model.fused_gelu_glu_gemm and ops.backends["gelu_glu"] != "triton":
            raise ValueError(
                f"the fused GEGLU GEMM is a Triton kernel; the gelu_glu op on {device} is PyTorch"
            )
        if self.linear == "onednn":  # checked before anything moves
            unavailable = onednn_unavailable_reason(device, self.dtype, ops.backends)
            if unavailable:
                raise ValueError(f"linear='onednn': {unavailable}")
        model = self._model.to(device)
        model.ops = ops
        model.use_linear_engine(choose_linear_engine(model, self.linear))
        self._model = model
        self._cuda_graphs = None
        return self

    @property
    def config(self) -> JinaBertConfig:
        return self._model.config

    @property
    def device(self) -> torch.device:
        return self._model.device

    @property
    def dtype(self) -> torch.dtype:
        return self._model.dtype

    @property
    def max_length(self) -> int:
        """Tokens per pair the model takes (special tokens included): the default ``max_length``."""
        return self._tokenizer.model_max_length

    @property
    def num_special_tokens(self) -> int:
        """Special tokens the pair template adds (``<s> q </s></s> d </s>``: 4); a ``max_length``
        must leave room for them and one more token."""
        return self._tokenizer.num_special_tokens

    @staticmethod
    def pair_length_range(
        path_or_hub_id: str | Path = DEFAULT_MODEL, slopes: str | None = None, revision: str | None = None
    ) -> tuple[int, int]:
        """(fewest, most) tokens a pair of this checkpoint may be cut to, read from its config and
        tokenizer without loading the weights: ``num_special_tokens + 1`` and ``max_length`` of the
        Reranker it would load (a server that only routes to replicas checks its limits so)."""
        directory = resolve_checkpoint(path_or_hub_id, revision)
        config = JinaBertConfig.from_file(directory / "config.json", slopes=slopes)
        tokenizer = PairTokenizer.from_directory(directory, config.max_position_embeddings)
        return tokenizer.num_special_tokens + 1, tokenizer.model_max_length

    def check_max_length(self, max_length: int | None) -> int:
        """``max_length`` when it is an integer in ``num_special_tokens + 1 .. max_length``, the
        model maximum for None; else ValueError naming the range."""
        return self._tokenizer.check_max_length(max_length)

    @property
    def module(self) -> JinaBertReranker:
        """The torch module behind the scores, for benchmarks that time the raw forward:
        ``module(input_ids [tokens], cu_seqlens [pairs + 1], max_seqlen[, token_type_ids [tokens]])
        -> fp32 logits [pairs]`` (``packing.pack`` builds its inputs). Scoring text never needs it."""
        return self._model

    def describe(self) -> dict[str, Any]:
        """What runs the scores, for ``/info`` and the server's startup line: device and dtype (as
        text), the backend of each op, the linear engine, the ALiBi slope scheme (each with why it
        was chosen), the CPU threads and OpenMP spin count, and the CUDA
        graphs (None when off, else their caps, the buckets captured and the batches replayed)."""
        graphs = self._cuda_graphs
        return {
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "backends": dict(self._model.ops.backends),
            "linear": self._model.linear_choice.as_dict(),
            # On CPU: the OpenMP threads and how long an idle one spins (turborank.OPENMP_SPIN_COUNT;
            # None: libgomp's own default, or the user's OMP_WAIT_POLICY).
            "cpu_threads": torch.get_num_threads(),
            "openmp_spin_count": turborank.OPENMP_SPIN_COUNT_READ,
            "alibi_scheme": self.config.alibi_scheme,
            "alibi_scheme_reason": self.config.alibi_scheme_reason,
            "cuda_graphs": None
            if graphs is None
            else {
                "max_pairs": graphs.max_pairs,
                "max_tokens": graphs.max_tokens,
                "captured_buckets": graphs.captured,
                "graphed_batches": graphs.batches,
            },
        }

    def compute_score(
        self, pairs: Sequence[Sequence[str]] | Sequence[str], **options: Any
    ) -> float | list[float]:
        """sigmoid(logit) per pair, like the reference ``compute_score``: a float when there is one
        pair (given as (query, document) or as a one-element list), else a list in input order.
        ``options`` are those of ``predict``."""
        scores = self.predict(as_pairs(pairs), **options)
        return scores[0] if len(scores) == 1 else scores

    def predict(
        self,
        pairs: Sequence[Sequence[str]],
        activation: bool = True,
        batch_size: int = 32,
        max_length: int | None = None,
        truncation: str = "longest_first",
        max_batch_tokens: int = 16384,
        long_doc: str = "truncate",
        chunk_overlap: int = 128,
        chunk_aggregate: str = "max",
        show_progress_bar: bool | None = None,
    ) -> list[float]:
        """One score per pair in input order: sigmoid(logit), or the raw logit with activation=False.

        Args:
            batch_size, max_batch_tokens: at most this many pairs / padded tokens per forward.
            max_length: tokens per pair (default: the model maximum).
            truncation: "longest_first" (the reference default) or "only_second" (query kept whole).
            long_doc: "truncate" cuts pairs longer than ``max_length`` (counted in a
                TruncationWarning); "chunk" scores such a document as overlapping windows of
                ``max_length`` tokens, each with the whole query, sharing ``chunk_overlap`` tokens,
                and aggregates the window logits with ``chunk_aggregate`` ("max" or "mean").
            show_progress_bar: a tqdm bar over the pairs scored; None shows one for long jobs
                (``scoring_options.PROGRESS_MIN_PAIRS`` sequences or more) when stderr is a terminal.
        """
        pairs = as_pairs(pairs)
        check_long_doc_options(long_doc, chunk_aggregate)
        check_options(activation=activation, batch_size=batch_size, max_batch_tokens=max_batch_tokens)
        check_pair_options(truncation, chunk_overlap, show_progress_bar)
        self.check_max_length(max_length)
        if not pairs:
            return []
        ahead = self.overlap_tokenising
        if ahead is None:
            ahead = self.device.type != "cpu"
        chunk = tokenise_ahead.chunk_pairs(batch_size, ahead)
        if len(pairs) > chunk:
            logits = self._predict_in_chunks(
                pairs,
                chunk,
                ahead,
                max_length,
                truncation,
                long_doc,
                chunk_overlap,
                chunk_aggregate,
                batch_size,
                max_batch_tokens,
                show_progress_bar,
            )
        else:
            encoded, owners = self.encode(pairs, max_length, truncation, long_doc, chunk_overlap)
            logits = self.logits(
                encoded,
                owners,
                n_pairs=len(pairs),
                chunk_aggregate=chunk_aggregate,
                batch_size=batch_size,
                max_batch_tokens=max_batch_tokens,
                show_progress_bar=show_progress_bar,
            )
        scores = torch.sigmoid(logits) if activation else logits
        return scores.tolist()

    def encode(
        self,
        pairs: list[tuple[str, str]],
        max_length: int | None = None,
        truncation: str = "longest_first",
        long_doc: str = "truncate",
        chunk_overlap: int = 128,
        warn: bool = True,
        *,
        direction: str = "right",
        bounded: bool = False,
        max_document_tokens: int | None = None,
    ) -> tuple[EncodedPairs, list[int] | None]:
        """Token ids to score, for ``logits``: one sequence per pair ("truncate"; owners None), or
        the windows of every pair with, per window, the index of its pair ("chunk").

        Args:
            pairs: (query, document) strings (one bare pair is a list of one).
            max_length, truncation, long_doc, chunk_overlap: as in ``predict``.
            warn: a TruncationWarning counting the pairs cut (``EncodedPairs.was_truncated`` says
                which either way).
            direction: "right" cuts the end of a truncated text, "left" its start.
            bounded: raise UncuttableTextError for an over-long text with no word boundary to clip
                it at, instead of tokenising it whole (the server's bound on tokenising time).
            max_document_tokens: first cut each document to this many tokens, then the pair to
                ``max_length``.
            ``direction``, ``bounded`` and ``max_document_tokens`` are for long_doc="truncate".
        Returns:
            (EncodedPairs of [n] sequences, None) for "truncate"; (EncodedPairs of [windows]
            sequences, owners [windows]) for "chunk".
        """
        check_long_doc_options(long_doc, "max")
        check_pair_options(truncation, chunk_overlap, None)
        pairs = as_pairs(pairs)
        if long_doc == "truncate":
            encoded = self._tokenizer.encode_pairs(
                pairs,
                max_length,
                truncation,
                direction,
                warn=warn,
                bounded=bounded,
                max_document_tokens=max_document_tokens,
            )
            return encoded, None
        if direction != "right" or bounded or max_document_tokens is not None:
            raise ValueError('direction, bounded and max_document_tokens apply to long_doc="truncate"')
        return self._tokenizer.encode_chunked(pairs, max_length, chunk_overlap)

    def logits(
        self,
        encoded: EncodedPairs,
        owners: list[int] | None = None,
        *,
        n_pairs: int | None = None,
        chunk_aggregate: str = "max",
        batch_size: int = 32,
        max_batch_tokens: int = 16384,
        show_progress_bar: bool | None = False,
    ) -> torch.Tensor:
        """fp32 logits on CPU for what ``encode`` returned, in pair order: [n] for n sequences
        (owners None), or [n_pairs] with each pair's window logits aggregated by
        ``chunk_aggregate`` ("max" or "mean"). ``n_pairs`` defaults to one past the largest owner
        (every pair has at least one window). Batches of at most ``batch_size`` pairs and
        ``max_batch_tokens`` tokens are length-sorted; the order of ``encoded`` is kept.

        A non-finite logit (NaN or inf: a checkpoint with bad weights, or an overflow in fp16) is a
        ``NonFiniteScoreError`` naming the pairs, never a score: a ranking over NaN is no ranking."""
        check_logits_options(chunk_aggregate, n_pairs, show_progress_bar, batch_size, max_batch_tokens)
        logits = self._score_encoded(
            encoded,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            show_progress_bar=show_progress_bar,
            unit="pair" if owners is None else "window",
        )
        return pair_logits(logits, owners, n_pairs, chunk_aggregate)

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        return_documents: bool = False,
        **options: Any,
    ) -> list[dict[str, Any]]:
        """Documents sorted best first: [{"corpus_id": index in ``documents``, "score": sigmoid
        score[, "text": document]}], cut to ``top_k``. Ties keep input order. ``options`` are
        those of ``predict`` (except ``activation``)."""
        check_rank_arguments(documents, top_k, smallest_top_k=1)
        check_options(return_documents=return_documents)
        check_query(query)
        if "activation" in options:
            raise TypeError("rank() gives sigmoid scores; activation is an option of predict()")
        scores = self.predict([(query, doc) for doc in documents], **options)
        return ranked_results(scores, documents, top_k, return_documents)

    def _predict_in_chunks(
        self,
        pairs: list[tuple[str, str]],
        chunk: int,
        ahead: bool,
        max_length: int | None,
        truncation: str,
        long_doc: str,
        chunk_overlap: int,
        chunk_aggregate: str,
        batch_size: int,
        max_batch_tokens: int,
        show_progress_bar: bool | None,
    ) -> torch.Tensor:
        """predict's logits [n], ``chunk`` pairs at a time (the next one tokenised while this one is
        scored if ``ahead``): the scores, errors and one TruncationWarning of the pairs at once."""
        limit = self.check_max_length(max_length)
        self._tokenizer.check_pairs(pairs, limit, truncation, long_doc, chunk_overlap)  # before any forward
        progress = progress_bar(len(pairs), show_progress_bar)
        pairs_left = len(pairs)

        def score(encoded: EncodedPairs) -> torch.Tensor:
            # The bar counts pairs a chunk at a time (a chunk of long documents holds more windows).
            nonlocal pairs_left
            logits = self._score_encoded(encoded, batch_size, max_batch_tokens)
            if progress is not None:
                progress.update(min(chunk, pairs_left))
            pairs_left -= chunk
            return logits

        try:
            logits, owners, truncated = tokenise_ahead.score_in_chunks(
                pairs,
                lambda part: self.encode(part, max_length, truncation, long_doc, chunk_overlap, warn=False),
                score,
                chunk,
                ahead,
            )
        finally:  # an interrupt too: a bar left open pushes every later one down a line
            close_bar(progress)
        if truncated:
            warn_truncated(truncated, len(pairs), limit, truncation, stacklevel=3)  # at predict, as encode's
        return pair_logits(logits, owners, len(pairs), chunk_aggregate)

    def _score_encoded(
        self,
        encoded: EncodedPairs,
        batch_size: int = 32,
        max_batch_tokens: int = 16384,
        show_progress_bar: bool | None = False,
        unit: str = "pair",
    ) -> torch.Tensor:
        """fp32 logits [n] (on CPU) for tokenised pairs (or windows: the bar's ``unit``), in their
        order; batches are length-sorted."""
        if batch_size < 1 or max_batch_tokens < 1:
            raise ValueError(
                f"batch_size ({batch_size}) and max_batch_tokens ({max_batch_tokens}) must be >= 1"
            )
        lengths = encoded.lengths
        device = self.device
        outputs, order = [], []
        progress = progress_bar(len(lengths), show_progress_bar, unit)
        # No host sync between batches: the next batch is packed while the device runs this one;
        # the logits come back in one copy at the end (the progress bar counts batches packed).
        types = encoded.token_type_ids
        try:
            for batch in plan_batches(lengths, batch_size, max_batch_tokens):
                order += batch
                if progress is not None:
                    progress.update(len(batch))
                ids = [encoded.input_ids[i] for i in batch]
                batch_types = None if types is None else [types[i] for i in batch]
                graphed = None if self._cuda_graphs is None else self._cuda_graphs(ids, batch_types)
                if graphed is not None:
                    outputs.append(graphed)
                    continue
                input_ids, cu_seqlens, max_seqlen, type_ids = pack(ids, batch_types)
                self._model.check_token_ids(input_ids, type_ids)
                outputs.append(
                    self._model(
                        to_device(input_ids, device),
                        to_device(cu_seqlens, device),
                        max_seqlen,
                        None if type_ids is None else to_device(type_ids, device),
                    )
                )
        finally:
            close_bar(progress)
        return in_input_order(outputs, order, len(lengths))
