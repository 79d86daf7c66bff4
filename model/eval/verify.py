"""Compare turborank with the checkpoint's own Hugging Face remote code (``trust_remote_code``).

Needs ``transformers`` (a 4.4x release for the JinaBERT code of the reranker repos) and a snapshot
directory that holds ``modeling_bert.py`` / ``configuration_bert.py`` next to the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from turborank.examples import MODEL_CARD_DOCUMENTS, MODEL_CARD_QUERY
from turborank.jsonl import iter_jsonl
from turborank.reranker import Reranker
from turborank.unicode_text import describe_lone_surrogate


def sample_pairs() -> list[tuple[str, str]]:
    """The model-card example plus a long document, so ALiBi distances in the thousands are exercised."""
    pairs = [(MODEL_CARD_QUERY, doc) for doc in MODEL_CARD_DOCUMENTS]
    long_doc = " ".join(
        f"Paragraph {i}: organic skincare, sensitive skin and recycled packaging." for i in range(120)
    )
    pairs.append(("How long can a reranked document be?", long_doc))
    pairs.append(
        ("What is ALiBi?", "Attention with linear biases adds -slope * |i - j| to every attention score.")
    )
    return pairs


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """JSONL of [query, document] arrays."""
    pairs = []
    for number, item in iter_jsonl(path):
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            raise ValueError(f"{path}:{number}: expected a JSON array [query, document]")
        for side, text in zip(("query", "document"), item, strict=True):
            problem = describe_lone_surrogate(text)
            if problem is not None:  # the reference's tokenizer would fail on it with a TypeError
                raise ValueError(f"{path}:{number}: the {side} contains {problem}")
        pairs.append((item[0], item[1]))
    if not pairs:
        raise ValueError(f"{path}: no pairs")
    return pairs


def _load_reference(directory: Path, device: torch.device):
    try:
        import transformers
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
    except ImportError:
        raise ImportError(
            "turborank verify needs transformers: pip install 'transformers>=4.46,<4.50' (the versions "
            "the reranker's own modeling code was checked on)"
        ) from None
    if not (directory / "modeling_bert.py").is_file():
        raise FileNotFoundError(
            f"{directory}: no modeling_bert.py; verify runs the checkpoint's own remote code, so pass the "
            "snapshot directory of the reranker repo"
        )
    # The reranker configs declare no labels; HF would build a 2-logit head and drop the real one.
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(directory), trust_remote_code=True, num_labels=1, torch_dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except Exception as exc:  # the snapshot's own code: anything it raises, a SyntaxError included
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"{directory}: the checkpoint's own modeling code does not load with transformers "
            f"{transformers.__version__} ({type(exc).__name__}: {first_line})"
        ) from None
    return transformers.__version__, tokenizer, model.to(device).eval()


def verify_against_reference(
    model_dir: str | Path,
    pairs: list[tuple[str, str]] | None = None,
    device: str | None = "cpu",
    max_length: int = 1024,
    slopes: str | None = None,
    backend: str = "auto",
    linear: str = "auto",
) -> dict[str, Any]:
    """Score ``pairs`` with both implementations in fp32; report the largest differences."""
    directory = Path(model_dir)
    pairs = pairs or sample_pairs()
    ours = Reranker.from_pretrained(
        directory, device=device, dtype="float32", slopes=slopes, backend=backend, linear=linear
    )
    device = ours.device
    max_length = ours.check_max_length(max_length)
    # The directory loaded from: a hub id's snapshot in the cache, a "~" path expanded.
    directory = ours.checkpoint_directory or directory
    hf_version, hf_tokenizer, hf_model = _load_reference(directory, device)

    queries, documents = [q for q, _ in pairs], [d for _, d in pairs]
    hf_encoded = hf_tokenizer(queries, documents, truncation=True, max_length=max_length)
    hf_ids = hf_encoded["input_ids"]
    encoded, _ = ours.encode(pairs, max_length=max_length)
    with torch.inference_mode():
        hf_logits = []
        # One pair at a time (no padding in the reference's batch either), on the ids compared
        # above: the tokenizer called on one pair drops an empty document's segment, on a batch
        # it keeps it, as turborank does.
        for index in range(len(pairs)):
            inputs = {
                name: torch.tensor([values[index]], device=device) for name, values in hf_encoded.items()
            }
            hf_logits.append(hf_model(**inputs).logits[0, 0].float().cpu())
    hf_logits = torch.stack(hf_logits)
    our_logits = ours.logits(encoded)
    return {
        "model": str(directory),
        "pairs": len(pairs),
        "transformers": hf_version,
        "alibi_scheme": ours.config.alibi_scheme,
        "token_ids_equal": hf_ids == encoded.input_ids,
        "max_abs_logit_diff": (hf_logits - our_logits).abs().max().item(),
        "max_abs_score_diff": (torch.sigmoid(hf_logits) - torch.sigmoid(our_logits)).abs().max().item(),
    }
