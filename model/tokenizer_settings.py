"""What tokenizer_config.json adds to tokenizer.json: the length limit, the <s>/[CLS] token the
classifier pools, and whether the model is given token_type_ids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from turborank.config import MAX_CONFIG_BYTES
from turborank.files import read_regular_file


def read_tokenizer_config(path: Path) -> dict[str, Any]:
    try:
        data = read_regular_file(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        return {}
    try:
        raw = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return raw


def _token_text(value: Any) -> str | None:
    # tokenizer_config stores special tokens as strings or as AddedToken dicts {"content": ...}.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def check_special_tokens(tokenizer: Tokenizer, settings: dict[str, Any], path: Path) -> Tokenizer:
    """The first token of an encoded pair is what the pooler reads: make sure it is the declared
    <s>/[CLS] token when tokenizer_config.json names one."""
    cls_text = _token_text(settings.get("cls_token")) or _token_text(settings.get("bos_token"))
    if cls_text is None:
        return tokenizer
    cls_id = tokenizer.token_to_id(cls_text)
    if cls_id is None:
        raise ValueError(
            f"{path}: tokenizer_config.json names cls/bos token {cls_text!r}, absent from the vocab"
        )
    first = tokenizer.encode("a", "b").ids[:1]
    if first != [cls_id]:
        raise ValueError(
            f"{path}: an encoded pair starts with id {first}, not the {cls_text!r} token ({cls_id}) the "
            "classifier pools; the post-processor does not match tokenizer_config.json"
        )
    return tokenizer


def emits_token_type_ids(settings: dict[str, Any]) -> bool:
    """Whether HF's tokenizer would hand token_type_ids to the model (else the model uses zeros)."""
    names = settings.get("model_input_names")
    if isinstance(names, list):
        return "token_type_ids" in names
    return str(settings.get("tokenizer_class", "")).startswith("Bert")
