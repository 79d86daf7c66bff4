"""The loader opens regular files only: a FIFO or device named like a checkpoint file is refused at
once instead of blocking, and every refusal names the file."""

from __future__ import annotations

import os
import shutil
import threading

import pytest

from turborank import Reranker
from turborank.hub import resolve_checkpoint

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")


@pytest.fixture
def ckpt(small_ckpt, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(small_ckpt, target)
    return target


def load_in_thread(path) -> BaseException | None:
    """from_pretrained on a thread; if it is still blocked after a while, opening the FIFO for writing
    (and closing it) gives it end-of-file so the test fails instead of hanging."""
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            Reranker.from_pretrained(path, device="cpu")
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(timeout=60)
    if thread.is_alive():
        for name in os.listdir(path):
            if os.path.exists(path / name) and not os.path.isfile(path / name):
                os.close(os.open(path / name, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout=30)
        pytest.fail("the loader blocked on a FIFO")
    return outcome[0]


@pytest.mark.parametrize(
    "name", ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"]
)
def test_fifo_named_like_a_checkpoint_file_is_refused(ckpt, name):
    (ckpt / name).unlink()
    os.mkfifo(ckpt / name)
    error = load_in_thread(ckpt)
    assert isinstance(error, ValueError), error
    assert f"{ckpt / name}: is a FIFO, not a regular file" in str(error)


def test_directory_named_like_a_file_is_refused(ckpt):
    # A device such as /dev/zero is refused by the same check (read whole, it would never end).
    (ckpt / "tokenizer_config.json").unlink()
    (ckpt / "tokenizer_config.json").mkdir()
    with pytest.raises(ValueError, match="tokenizer_config.json: is a directory, not a regular file"):
        Reranker.from_pretrained(ckpt, device="cpu")


def test_symlinked_files_still_load(ckpt, tmp_path):
    """The hub cache links every snapshot file to a blob: a link to a regular file is fine."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (ckpt / name).rename(blobs / name)
        (ckpt / name).symlink_to(blobs / name)
    assert Reranker.from_pretrained(ckpt, device="cpu").config.hidden_size == 192


@pytest.mark.parametrize("path", ["", "  "])
def test_empty_model_path_is_refused(path, tmp_path, monkeypatch, small_ckpt):
    for name in os.listdir(small_ckpt):  # a loadable checkpoint in the working directory
        shutil.copy(small_ckpt / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="model path is empty"):
        resolve_checkpoint(path)
