import pytest

from turborank import Reranker
from turborank.hub import resolve_checkpoint


def test_local_directory_is_used_as_is(small_ckpt):
    assert resolve_checkpoint(str(small_ckpt)) == small_ckpt


def test_missing_path_that_is_not_a_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        resolve_checkpoint(str(tmp_path / "a" / "b" / "c"))


@pytest.mark.parametrize("name", ["runs/model..best", "models/ckpt--v2", "out/model.git", "org/-name"])
def test_a_missing_directory_named_like_no_hub_repository_is_reported_missing(name):
    """Of the org/name shape but not a name the hub accepts: the directory is what is missing, not
    a repository id huggingface_hub would refuse deep inside its validation."""
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        resolve_checkpoint(name)


def test_file_instead_of_directory(small_ckpt):
    with pytest.raises(NotADirectoryError, match="expected a checkpoint directory"):
        resolve_checkpoint(small_ckpt / "config.json")


def test_offline_hub_id_not_cached_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    unreachable = "not a local directory; as a hub id: the Hugging Face Hub is unreachable"
    with pytest.raises(OSError, match=f"jinaai/jina-reranker-v1-turbo-en: {unreachable}"):
        Reranker.from_pretrained("jinaai/jina-reranker-v1-turbo-en", device="cpu")
    # A mistyped relative path of two parts reads as a hub id: the error says no directory exists.
    with pytest.raises(OSError, match=f"^checkpoints/turbo: {unreachable}"):
        Reranker.from_pretrained("checkpoints/turbo", device="cpu")


def test_cached_hub_snapshot_loads_offline(small_ckpt, tmp_path, monkeypatch):
    """The real hub path: a snapshot in the huggingface_hub cache layout, resolved with no network."""
    import shutil

    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    repo = cache / "models--jinaai--jina-reranker-v1-turbo-en"
    commit = "0" * 40
    shutil.copytree(small_ckpt, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    path = resolve_checkpoint("jinaai/jina-reranker-v1-turbo-en")
    assert path == repo / "snapshots" / commit
    assert (
        Reranker.from_pretrained("jinaai/jina-reranker-v1-turbo-en", device="cpu").config.hidden_size == 192
    )
