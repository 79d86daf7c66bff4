"""The engines the benchmarks compare, behind one small interface.

``TurborankEngine`` is this package. ``HFReferenceEngine`` is the checkpoint's own Hugging Face remote
code (``modeling_bert.py`` next to the weights, loaded with ``trust_remote_code``; needs a 4.4x
transformers release): the implementation users would otherwise run.
"""

from __future__ import annotations

import random
import warnings

import torch


class TurborankEngine:
    name = "turborank"

    def __init__(
        self, checkpoint: str, device: str = "cpu", dtype: str = "float32", backend: str = "auto"
    ) -> None:
        from turborank import Reranker

        self.reranker = Reranker.from_pretrained(checkpoint, device=device, dtype=dtype, backend=backend)

    def count_tokens(self, text: str) -> int:
        return len(self.reranker.tokenizer.encode_pairs([("q", text)]).input_ids[0])

    def pair_lengths(self, pairs: list[tuple[str, str]], max_length: int) -> list[int]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.reranker.tokenizer.encode_pairs(pairs, max_length=max_length).lengths

    def logits(self, pairs: list[tuple[str, str]], max_length: int, batch_size: int = 32) -> torch.Tensor:
        encoded = self.reranker.tokenizer.encode_pairs(pairs, max_length=max_length)
        return self.reranker.score_encoded(encoded, batch_size=batch_size)


class HFReferenceEngine:
    name = "hf-reference"

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
        out = []
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            inputs = self.tokenizer(
                [q for q, _ in chunk],
                [d for _, d in chunk],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(self.device)
            out.append(self.model(**inputs).logits[:, 0].float().cpu())
        return torch.cat(out)


# name -> (engine class, turborank backend). "turborank" dispatches per device (Triton on CUDA);
# "turborank-torch" forces the PyTorch path, for GPU comparisons.
ENGINES = {
    "turborank": (TurborankEngine, "auto"),
    "turborank-torch": (TurborankEngine, "torch"),
    "hf": (HFReferenceEngine, "auto"),
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
