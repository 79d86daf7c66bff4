"""JinaBERT configuration: parsed from config.json, validated, with the ALiBi slope scheme resolved."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from turborank.alibi import slopes_differ
from turborank.files import read_regular_file
from turborank.option_names import SLOPE_SCHEMES

logger = logging.getLogger("turborank")

_REQUIRED_INT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
)
# Far above any BERT-family checkpoint (turbo: vocab 61,056, hidden 384, 6 layers, 8,192 positions;
# the largest vocabularies in use hold about 256k ids). A config past them is corrupt or hostile, and
# is refused before anything is sized from it: 10^9 layers would otherwise spend minutes and
# gigabytes listing the tensors it implies before the weights file could disagree.
SIZE_LIMITS = {
    "vocab_size": 2**22,
    "hidden_size": 2**15,
    "num_hidden_layers": 512,
    "num_attention_heads": 1024,
    "intermediate_size": 2**17,
    "max_position_embeddings": 2**20,
    "type_vocab_size": 2**10,
}
# Config files are a few kilobytes; anything past this is not a config.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
_FEED_FORWARD_ACTIVATIONS = {"geglu": "gelu", "reglu": "relu"}
# The public JinaBERT code lives in this hub repo; checkpoints that point at it use standard slopes.
_PUBLIC_IMPLEMENTATION = "jina-bert-implementation"
# The reranker repos (jinaai/jina-reranker-v1-turbo-en, -tiny-en, ...), which ship their own code.
_RERANKER_REPO = "jina-reranker-v1-"


@dataclasses.dataclass(frozen=True)
class JinaBertConfig:
    """The architecture facts turborank needs (DEVELOPERS.md, "Config fields"), validated.

    ``alibi_scheme`` is "standard" or "jina-reranker-v1" (DEVELOPERS.md, "ALiBi slopes");
    ``alibi_scheme_reason`` says how it was chosen, for logs and ``turborank verify``.
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    feed_forward_type: str = "geglu"
    num_labels: int = 1
    alibi_scheme: str = "standard"
    alibi_scheme_reason: str = "default"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def glu_activation(self) -> str:
        return _FEED_FORWARD_ACTIVATIONS[self.feed_forward_type]

    def __post_init__(self) -> None:
        for name in (*_REQUIRED_INT_FIELDS, "type_vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"config field {name!r} must be a positive integer, got {value!r}")
            if value > SIZE_LIMITS[name]:
                raise ValueError(
                    f"config field {name!r} is {value:,}, over the limit of {SIZE_LIMITS[name]:,} "
                    "(far above any JinaBERT checkpoint; the file is likely corrupt)"
                )
        pad = self.pad_token_id
        if isinstance(pad, bool) or not isinstance(pad, int) or not 0 <= pad < self.vocab_size:
            raise ValueError(
                f"config field 'pad_token_id' must be an integer in [0, vocab_size={self.vocab_size}), "
                f"got {pad!r}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"config field 'hidden_size' ({self.hidden_size}) is not divisible by "
                f"'num_attention_heads' ({self.num_attention_heads})"
            )
        kind = self.feed_forward_type
        if not isinstance(kind, str) or kind not in _FEED_FORWARD_ACTIVATIONS:
            raise ValueError(
                f"config field 'feed_forward_type' is {self.feed_forward_type!r}; turborank supports "
                f"{sorted(_FEED_FORWARD_ACTIVATIONS)} (the gated JinaBERT MLP)"
            )
        if self.alibi_scheme not in SLOPE_SCHEMES:
            raise ValueError(f"ALiBi slope scheme {self.alibi_scheme!r} is not one of {SLOPE_SCHEMES}")
        if type(self.num_labels) is not int or self.num_labels != 1:  # not "1", not True
            raise ValueError(
                f"'num_labels' (or the length of 'id2label') is {self.num_labels!r}; a reranker has a "
                "single-logit classifier"
            )
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ValueError(f"config field 'layer_norm_eps' must be a float in (0, 1), got {eps!r}")

    @classmethod
    def from_dict(
        cls, raw: dict[str, Any], source: str = "config.json", slopes: str | None = None
    ) -> JinaBertConfig:
        """Build from a config.json mapping. Errors name the field and ``source``."""
        try:
            return cls._from_dict(raw, slopes)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path, slopes: str | None = None) -> JinaBertConfig:
        return cls.from_dict(read_config_json(path), source=str(path), slopes=slopes)

    @classmethod
    def _from_dict(cls, raw: dict[str, Any], slopes: str | None) -> JinaBertConfig:
        missing = [name for name in (*_REQUIRED_INT_FIELDS, "position_embedding_type") if name not in raw]
        if missing:
            raise ValueError(f"missing required field(s) {missing}")
        position = raw["position_embedding_type"]
        if position != "alibi":
            raise ValueError(
                f"config field 'position_embedding_type' is {position!r}; turborank implements the ALiBi "
                "JinaBERT rerankers only ('absolute' is the original BERT family)"
            )
        if "feed_forward_type" not in raw:
            raise ValueError("missing required field 'feed_forward_type' (expected 'geglu' or 'reglu')")
        scheme, reason = _resolve_alibi_scheme(raw.get("auto_map"), slopes)
        values = {name: raw[name] for name in _REQUIRED_INT_FIELDS}
        for name in ("type_vocab_size", "layer_norm_eps", "pad_token_id", "feed_forward_type"):
            if name in raw:
                values[name] = raw[name]
        config = cls(**values, num_labels=_num_labels(raw), alibi_scheme=scheme, alibi_scheme_reason=reason)
        if slopes_differ(config.num_attention_heads):
            log = logger.warning if reason.startswith("default") else logger.info
            log(
                "ALiBi slopes: %r scheme for %d heads (%s)",
                config.alibi_scheme,
                config.num_attention_heads,
                reason,
            )
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_config_json(path: str | Path) -> dict[str, Any]:
    """A checkpoint's config.json as a mapping; errors name the file and what is wrong with it."""
    path = Path(path)
    try:
        data = read_regular_file(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no config.json in the checkpoint directory") from None
    try:
        raw = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, a 5,000-digit number, deep nesting
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def _num_labels(raw: dict[str, Any]) -> int:
    # The reranker configs carry neither field; HF would then assume 2, but the checkpoint holds 1.
    if "num_labels" in raw:
        return raw["num_labels"]
    if isinstance(raw.get("id2label"), dict):
        return len(raw["id2label"])
    return 1


def _resolve_alibi_scheme(auto_map: Any, override: str | None) -> tuple[str, str]:
    """Local remote code (the reranker repos) -> jina-reranker-v1; the public implementation repo ->
    standard; an explicit override always wins (DEVELOPERS.md, "ALiBi slopes")."""
    if override is not None:
        if override not in SLOPE_SCHEMES:
            raise ValueError(f"slopes={override!r} is not one of {SLOPE_SCHEMES}")
        return override, "set by the caller"
    if not isinstance(auto_map, dict) or not auto_map:
        return "standard", "default: config.json has no auto_map to tell the code lineage"
    targets = [str(v) for value in auto_map.values() for v in (value if isinstance(value, list) else [value])]
    if any(_PUBLIC_IMPLEMENTATION in target for target in targets):
        return "standard", "auto_map points at jinaai/jina-bert-implementation"
    if all("--" not in target for target in targets):
        return "jina-reranker-v1", "auto_map points at the checkpoint's own modeling_bert.py"
    # transformers saves a model it loaded from the hub with its auto_map prefixed by the repo
    # ("jinaai/jina-reranker-v1-turbo-en--modeling_bert...."): a reranker fine-tuned and saved
    # again still runs the reranker repo's own code.
    repos = sorted({target.split("--", 1)[0] for target in targets})
    if all(_RERANKER_REPO in repo.rpartition("/")[2] for repo in repos):
        return "jina-reranker-v1", f"auto_map points at the reranker repo's own code ({', '.join(repos)})"
    return "standard", f"default: auto_map points at unrecognised remote code {targets}"
