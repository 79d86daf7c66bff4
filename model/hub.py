"""Resolve a local checkpoint directory or a Hugging Face hub id to a directory on disk."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "jinaai/jina-reranker-v1-turbo-en"
# What scoring and `turborank verify` need; the weights of other formats are never downloaded.
CHECKPOINT_FILES = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "*.py",
]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(text: str) -> bool:
    """Of the hub's form (org/name), not a path (absolute, relative with "." or home with "~"), and
    a name the hub would accept ("--" and ".." nowhere, no ".git" or "." / "-" at either end of a
    part): a missing directory such as ``runs/model..best`` is reported as missing, not as an
    invalid repository id."""
    if not _HUB_ID.match(text) or text.startswith((".", "/", "~")):
        return False
    if "--" in text or ".." in text or text.endswith(".git"):
        return False
    return not any(part[:1] in ".-" or part[-1:] in ".-" for part in text.split("/"))


# huggingface_hub's download options a caller may set: where the cache is, a token for private or
# gated repos, and whether to stay off the network.
HUB_OPTIONS = ("cache_dir", "token", "local_files_only")


def resolve_checkpoint(path_or_hub_id: str | Path, revision: str | None = None, **hub_options: Any) -> Path:
    """A local directory as is; otherwise a hub id through huggingface_hub (cache first), with
    ``hub_options`` (``HUB_OPTIONS``) for its download.

    Raises FileNotFoundError for a path that does not exist and is not a hub id, and OSError with
    the reason when the hub cannot be reached and the snapshot is not cached.
    """
    text = str(path_or_hub_id)
    if not text.strip():
        # Path("") is the working directory: an unset variable must not load whatever is there.
        raise ValueError(f"model path is empty ({path_or_hub_id!r}); give a checkpoint directory or a hub id")
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(
                f"{path}: expected a checkpoint directory (config.json, model.safetensors, ...)"
            )
        return path
    if not is_hub_id(text):
        raise FileNotFoundError(
            f"{text}: no such checkpoint directory (and not a hub id of the form org/name)"
        )
    unknown = sorted(set(hub_options) - set(HUB_OPTIONS))
    if unknown:
        raise TypeError(f"unknown hub option(s) {unknown}; they are {list(HUB_OPTIONS)}")
    try:
        return _download(text, revision, hub_options)
    except OSError as exc:
        # A mistyped relative path reads as a hub id: say that no such directory exists either.
        raise OSError(f"{text}: not a local directory; as a hub id: {exc}") from None


def _download(repo_id: str, revision: str | None, hub_options: dict[str, Any]) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise OSError("huggingface_hub is not installed to fetch it from the hub") from None
    try:
        options = {key: value for key, value in hub_options.items() if value is not None}
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=CHECKPOINT_FILES, **options))
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise OSError(f"no accessible repository of that name on the Hugging Face Hub ({exc})") from None
    except RevisionNotFoundError as exc:
        raise OSError(f"revision {revision!r} not found on the Hugging Face Hub ({exc})") from None
    except LocalEntryNotFoundError:
        raise OSError(
            "the Hugging Face Hub is unreachable (offline, HF_HUB_OFFLINE=1, or no network) and "
            "the model is not in the local cache; download it where the hub is reachable, or pass a local "
            "checkpoint directory"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise OSError(f"could not download from the Hugging Face Hub ({exc})") from None
