"""Synthetic JinaBERT reranker checkpoints in the real file formats, for tests and benchmarks.

No hub is needed: config.json as the reranker repos ship it, bf16 model.safetensors with the real key
names and random weights, and a RoBERTa-style byte-level BPE tokenizer trained here with `tokenizers`.
The scores mean nothing; the files, shapes and code paths are the real ones.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from turborank.config import JinaBertConfig
from turborank.weights import expected_shapes

PRESETS: dict[str, dict[str, Any]] = {
    # The shapes of jinaai/jina-reranker-v1-turbo-en and -tiny-en (DEVELOPERS.md, "Config fields").
    "turbo": {
        "hidden_size": 384,
        "num_hidden_layers": 6,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
        "vocab_size": 61056,
    },
    "tiny-en": {
        "hidden_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
        "vocab_size": 61056,
    },
    # Small enough for fast tests, still head_dim 32 and a non-power-of-two head count.
    "small": {
        "hidden_size": 192,
        "num_hidden_layers": 2,
        "num_attention_heads": 6,
        "intermediate_size": 384,
        "vocab_size": 2048,
    },
}
AUTO_MAPS = {
    # The reranker repos ship their own modeling code.
    "local": {
        "AutoConfig": "configuration_bert.JinaBertConfig",
        "AutoModel": "modeling_bert.JinaBertModel",
        "AutoModelForMaskedLM": "modeling_bert.JinaBertForMaskedLM",
        "AutoModelForSequenceClassification": "modeling_bert.JinaBertForSequenceClassification",
    },
    # jina-embeddings-v2 style: the public implementation repo.
    "public": {
        "AutoConfig": "jinaai/jina-bert-implementation--configuration_bert.JinaBertConfig",
        "AutoModel": "jinaai/jina-bert-implementation--modeling_bert.JinaBertModel",
        "AutoModelForSequenceClassification": (
            "jinaai/jina-bert-implementation--modeling_bert.JinaBertForSequenceClassification"
        ),
    },
}
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
_SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ne",
    "ru",
    "sa",
    "ti",
    "vo",
    "ze",
    "bra",
    "que",
    "str",
    "ion",
    "ent",
    "the",
    "and",
    "ing",
    "pro",
    "con",
    "ter",
    "al",
    "ex",
    "um",
    "or",
    "is",
]


def make_config(preset: str = "small", auto_map: str | None = "local", **overrides: Any) -> dict[str, Any]:
    """A config.json mapping shaped like the reranker repos' (DEVELOPERS.md, "Config fields")."""
    shape = {**PRESETS[preset], **overrides}
    config: dict[str, Any] = {
        "_name_or_path": "jinaai/jina-reranker-v1-turbo-en",
        "architectures": ["JinaBertModel"],
        "attention_probs_dropout_prob": 0.0,
        "classifier_dropout": None,
        "emb_pooler": "mean",
        "feed_forward_type": "geglu",
        "gradient_checkpointing": False,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 8192,
        "model_type": "bert",
        "pad_token_id": 0,
        "position_embedding_type": "alibi",
        "torch_dtype": "float16",
        "transformers_version": "4.39.3",
        "type_vocab_size": 2,
        "use_cache": True,
    }
    config.update(shape)
    if auto_map is not None:
        config["auto_map"] = AUTO_MAPS[auto_map]
    return dict(sorted(config.items()))


def random_text(rng: random.Random, n_words: int) -> str:
    words = ("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(n_words))
    text = " ".join(words)
    return text[0].upper() + text[1:] + "." if text else text


def train_tokenizer(vocab_size: int = 1500, seed: int = 0) -> Tokenizer:
    """A RoBERTa-style byte-level BPE (lowercasing), pair template <s> q </s></s> d </s>."""
    rng = random.Random(seed)
    corpus = [random_text(rng, rng.randint(5, 40)) for _ in range(3000)]
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")),
        ("<s>", tok.token_to_id("<s>")),
        trim_offsets=True,
        add_prefix_space=False,
    )
    return tok


def random_weights(
    config: JinaBertConfig, seed: int = 0, dtype: torch.dtype = torch.bfloat16
) -> dict[str, torch.Tensor]:
    """Weights with BERT-like statistics for every key of the checkpoint."""
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for key, shape in expected_shapes(config).items():
        if "LayerNorm.weight" in key or "layernorm.weight" in key:
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif key.startswith("classifier."):
            # Larger than the other weights so logits spread over a few units, like a trained head.
            t = 0.5 * torch.randn(shape, generator=gen)
        elif key.endswith(".bias"):
            t = 0.02 * torch.randn(shape, generator=gen)
        else:
            t = 0.05 * torch.randn(shape, generator=gen)
        weights[key] = t.to(dtype).contiguous()
    return weights


def make_checkpoint(
    directory: str | Path,
    preset: str = "small",
    seed: int = 0,
    auto_map: str | None = "local",
    tokenizer_vocab_size: int = 1500,
    **overrides: Any,
) -> Path:
    """Write config.json, model.safetensors (bf16), tokenizer.json (+ vocab.json, merges.txt,
    tokenizer_config.json, special_tokens_map.json) into ``directory``; returns it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    raw = make_config(preset, auto_map=auto_map, **overrides)
    (directory / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    config = JinaBertConfig.from_dict(raw, source=str(directory / "config.json"))
    save_file(random_weights(config, seed), str(directory / "model.safetensors"), metadata={"format": "pt"})

    tok = train_tokenizer(min(tokenizer_vocab_size, config.vocab_size), seed)
    tok.save(str(directory / "tokenizer.json"))
    tok.model.save(str(directory))  # vocab.json + merges.txt, as the reranker repos ship them
    special = {
        "bos_token": "<s>",
        "cls_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
    }
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    tokenizer_config = {
        **special,
        "tokenizer_class": "RobertaTokenizer",
        "model_max_length": 8192,
        "add_prefix_space": False,
        "do_lower_case": True,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return directory


def cache_dir() -> Path:
    """Where turborank keeps what it builds for itself: $TURBORANK_CACHE, else
    $XDG_CACHE_HOME/turborank, else ~/.cache/turborank."""
    if os.environ.get("TURBORANK_CACHE"):
        return Path(os.environ["TURBORANK_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "turborank"


def cached_synthetic_checkpoint(preset: str = "turbo", seed: int = 0) -> Path:
    """A synthetic checkpoint (random weights) built once into ``cache_dir()`` and reused.

    Written into a temporary sibling and renamed into place, so an interrupted build never leaves a
    half-written checkpoint that a later call would take for a whole one."""
    target = cache_dir() / f"synthetic-{preset}-seed{seed}"
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as tmp:
        built = make_checkpoint(Path(tmp) / "checkpoint", preset, seed=seed)
        try:
            built.rename(target)
        except OSError:  # another process got there first: keep its copy
            if not (target / "model.safetensors").is_file():
                raise
    return target


def make_beir_dataset(
    directory: str | Path,
    n_queries: int = 12,
    n_documents: int = 120,
    long_documents: int = 4,
    seed: int = 0,
    split: str = "test",
) -> Path:
    """A BEIR-format dataset (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) with planted answers.

    Each query is a few topic words of its own; one to three documents per query repeat them among
    random filler and are judged relevant (so BM25 finds them). ``long_documents`` documents are
    3,000 to 20,000 words long; every other one of them is relevant to a query, its topic words
    planted at a random depth.
    """
    directory = Path(directory)
    (directory / "qrels").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    topics = [
        [f"{random_text(rng, 1).strip('.').lower()}{rng.randrange(1000)}x" for _ in range(rng.randint(2, 4))]
        for _ in range(n_queries)
    ]
    corpus, qrels = [], []

    def filler(words: int) -> list[str]:
        return random_text(rng, words).split(" ")

    for q, words in enumerate(topics):
        for _ in range(rng.randint(1, 3)):
            body = filler(rng.randint(20, 120))
            for word in words:
                body.insert(rng.randrange(len(body) + 1), word)
            corpus.append({"_id": f"d{len(corpus)}", "title": "", "text": " ".join(body)})
            qrels.append((f"q{q}", corpus[-1]["_id"]))
    for i in range(long_documents):
        body = filler(rng.randint(3000, 20000))
        if i % 2 == 0:
            q = rng.randrange(n_queries)
            at = rng.randrange(len(body))
            body[at:at] = topics[q]
            qrels.append((f"q{q}", f"d{len(corpus)}"))
        corpus.append({"_id": f"d{len(corpus)}", "title": "Long document", "text": " ".join(body)})
    while len(corpus) < n_documents:
        corpus.append({"_id": f"d{len(corpus)}", "title": "", "text": " ".join(filler(rng.randint(20, 150)))})
    rng.shuffle(corpus)
    with open(directory / "corpus.jsonl", "w") as f:
        f.writelines(json.dumps(doc) + "\n" for doc in corpus)
    with open(directory / "queries.jsonl", "w") as f:
        f.writelines(
            json.dumps({"_id": f"q{q}", "text": " ".join(words)}) + "\n" for q, words in enumerate(topics)
        )
    with open(directory / "qrels" / f"{split}.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{q}\t{d}\t1\n" for q, d in qrels)
    return directory


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(
        description="Write a synthetic JinaBERT reranker checkpoint (random weights), or a BEIR dataset."
    )
    parser.add_argument("directory")
    parser.add_argument("--beir", action="store_true", help="write a synthetic BEIR dataset there instead")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--auto-map", choices=[*sorted(AUTO_MAPS), "none"], default="local")
    args = parser.parse_args()
    if args.beir:
        print(make_beir_dataset(args.directory, seed=args.seed))
        return
    auto_map = None if args.auto_map == "none" else args.auto_map
    print(make_checkpoint(args.directory, args.preset, seed=args.seed, auto_map=auto_map))


if __name__ == "__main__":
    main()
