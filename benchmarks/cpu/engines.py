"""The engines the benchmarks compare, behind one small interface.

``TurborankEngine`` is this package. ``HFReferenceEngine`` is the checkpoint's own Hugging Face remote
code (``modeling_bert.py`` next to the weights, loaded with ``trust_remote_code``; needs a 4.4x
transformers release): the implementation users would otherwise run, fed batches in input order
("hf") or length-sorted ("hf-sorted", what a careful user does). ``OnnxRuntimeEngine`` runs that same
code exported to ONNX (``benchmarks.cpu.onnx_export``, fp32 or dynamic int8) in ONNX Runtime with
length-sorted batches: what fastembed runs on CPU.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import torch

from turborank.ranking import best_first


class TurborankEngine:
    name = "turborank"

    def __init__(
        self,
        checkpoint: str,
        device: str = "cpu",
        dtype: str = "float32",
        backend: str = "auto",
        slopes: str | None = None,
    ) -> None:
        from turborank import Reranker

        self.reranker = Reranker.from_pretrained(
            checkpoint, device=device, dtype=dtype, backend=backend, slopes=slopes
        )

    def count_tokens(self, text: str) -> int:
        return len(self.reranker.encode([("q", text)])[0].input_ids[0])

    def pair_lengths(self, pairs: list[tuple[str, str]], max_length: int) -> list[int]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.reranker.encode(pairs, max_length=max_length)[0].lengths

    def logits(self, pairs: list[tuple[str, str]], max_length: int, batch_size: int = 32) -> torch.Tensor:
        encoded, _ = self.reranker.encode(pairs, max_length=max_length)
        return self.reranker.logits(encoded, batch_size=batch_size)


def padded_batches(
    tokenizer,
    pairs: list[tuple[str, str]],
    max_length: int,
    batch_size: int,
    by_length: bool,
    tensors: str = "pt",
):
    """(pair indices, tokenizer output padded to the batch's longest, as ``tensors``) per batch of
    ``batch_size``; with ``by_length`` the pairs are grouped longest first, so little padding is
    computed (fastembed and sentence-transformers sort likewise)."""
    order = list(range(len(pairs)))
    if by_length:
        lengths = tokenizer(
            [q for q, _ in pairs], [d for _, d in pairs], truncation=True, max_length=max_length
        )["input_ids"]
        order = best_first([len(ids) for ids in lengths])
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        inputs = tokenizer(
            [pairs[i][0] for i in chunk],
            [pairs[i][1] for i in chunk],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors=tensors,
        )
        yield chunk, inputs


def _in_input_order(chunks: list[list[int]], logits: list[torch.Tensor]) -> torch.Tensor:
    out = torch.empty(sum(len(c) for c in chunks), dtype=torch.float32)
    out[torch.tensor([i for c in chunks for i in c])] = torch.cat(logits).float()
    return out


class HFReferenceEngine:
    name = "hf-reference"
    sort_by_length = False

    def __init__(
        self, checkpoint: str, device: str = "cpu", dtype: str = "float32", backend: str = "auto"
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(
                checkpoint, trust_remote_code=True, num_labels=1, torch_dtype=getattr(torch, dtype)
            )
            .to(self.device)
            .eval()
        )

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer("q", text)["input_ids"])

    def pair_lengths(self, pairs: list[tuple[str, str]], max_length: int) -> list[int]:
        encoded = self.tokenizer(
            [q for q, _ in pairs], [d for _, d in pairs], truncation=True, max_length=max_length
        )
        return [len(ids) for ids in encoded["input_ids"]]

    @torch.inference_mode()
    def logits(self, pairs: list[tuple[str, str]], max_length: int, batch_size: int = 32) -> torch.Tensor:
        chunks, out = [], []
        for chunk, inputs in padded_batches(
            self.tokenizer, pairs, max_length, batch_size, self.sort_by_length
        ):
            chunks.append(chunk)
            out.append(self.model(**inputs.to(self.device)).logits[:, 0].float().cpu())
        return _in_input_order(chunks, out)


class HFSortedEngine(HFReferenceEngine):
    name = "hf-reference, length-sorted batches"
    sort_by_length = True


class OnnxRuntimeEngine:
    """The HF reference exported to ONNX, run by ONNX Runtime on CPU with length-sorted batches,
    each padded to its longest pair. ``backend`` is the model: "fp32" or "int8" (dynamic
    quantisation). The export must exist (``python -m benchmarks.cpu.onnx_export CHECKPOINT``, which
    the suite runs first in its own process): exporting here would put the export's memory in this
    engine's peak RSS."""

    name = "onnxruntime"

    def __init__(
        self, checkpoint: str, device: str = "cpu", dtype: str = "float32", backend: str = "fp32"
    ) -> None:
        import onnxruntime
        from transformers import AutoTokenizer

        from benchmarks.cpu.onnx_export import FP32_NAME, INT8_NAME, cached_models

        if device != "cpu" or dtype != "float32":
            raise ValueError(f"the ONNX Runtime peer runs on CPU from an fp32 export, got {device} {dtype}")
        path = cached_models(Path(checkpoint)) / (FP32_NAME if backend == "fp32" else INT8_NAME)
        if not path.exists():
            raise FileNotFoundError(f"{path}: run `python -m benchmarks.cpu.onnx_export {checkpoint}` first")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.versions = {"onnxruntime": onnxruntime.__version__}

    count_tokens = HFReferenceEngine.count_tokens
    pair_lengths = HFReferenceEngine.pair_lengths

    def logits(self, pairs: list[tuple[str, str]], max_length: int, batch_size: int = 32) -> torch.Tensor:
        chunks, out = [], []
        for chunk, inputs in padded_batches(self.tokenizer, pairs, max_length, batch_size, True, "np"):
            chunks.append(chunk)
            ids = inputs["input_ids"].astype("int64")
            # Absent when the tokenizer does not make them: the reference then uses zeros.
            types = inputs.get("token_type_ids")
            feed = {
                "input_ids": ids,
                "attention_mask": inputs["attention_mask"].astype("int64"),
                "token_type_ids": ids * 0 if types is None else types.astype("int64"),
            }
            out.append(torch.from_numpy(self.session.run(["logits"], feed)[0][:, 0]))
        return _in_input_order(chunks, out)


# name -> (engine class, turborank backend). "turborank" dispatches per device (Triton on CUDA);
# "turborank-torch" forces the PyTorch path, for GPU comparisons.
ENGINES = {
    "turborank": (TurborankEngine, "auto"),
    "turborank-torch": (TurborankEngine, "torch"),
    # The same engine; the suite runs it with dtype bfloat16 on CPU (opt-in there).
    "turborank-bf16": (TurborankEngine, "auto"),
    "hf": (HFReferenceEngine, "auto"),
    "hf-sorted": (HFSortedEngine, "auto"),
    "ort-fp32": (OnnxRuntimeEngine, "fp32"),
    "ort-int8": (OnnxRuntimeEngine, "int8"),
}


def pairs_of_length(engine, n: int, tokens: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` pairs that each fill ``tokens`` tokens once truncated (documents are long enough)."""
    from turborank.testing import random_text

    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        doc = random_text(rng, tokens)
        assert engine.count_tokens(doc) >= tokens
        pairs.append((random_text(rng, 6), doc))
    return pairs


def document_of_length(engine, rng: random.Random, tokens: int) -> str:
    """A document whose pair with the query "q" is ``tokens`` tokens long (bisection on word count)."""
    from turborank.testing import random_text

    words = random_text(rng, tokens).split(" ")
    lo, hi = 1, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if engine.count_tokens(" ".join(words[:mid])) <= tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def make_workload(engine, spec: str, seed: int = 0) -> tuple[list[tuple[str, str]], int]:
    """(pairs, max_length) for a workload spec.

    "card": the model-card example, 1 query and 10 short documents. "NxL": N pairs of L tokens.
    "mixed:N:LO-HI": N documents of LO..HI tokens (uniform, seeded), one query.
    """
    from turborank.examples import MODEL_CARD_DOCUMENTS, MODEL_CARD_QUERY

    if spec == "card":
        return [(MODEL_CARD_QUERY, d) for d in MODEL_CARD_DOCUMENTS], 8192
    if spec.startswith("mixed:"):
        _, n, span = spec.split(":")
        lo, hi = (int(x) for x in span.split("-"))
        rng = random.Random(seed)
        docs = [document_of_length(engine, rng, rng.randint(lo, hi)) for _ in range(int(n))]
        return [("what does this document say about the query", d) for d in docs], 8192
    n, tokens = (int(x) for x in spec.split("x"))
    return pairs_of_length(engine, n, tokens, seed), tokens
