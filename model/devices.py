"""Where and in what precision a model runs: the ``device`` and ``dtype`` arguments, checked."""

from __future__ import annotations

import os

import torch

from turborank.option_names import DTYPE_NAMES

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def one_torch_thread_in_a_forked_child() -> None:
    """PyTorch's OpenMP runtime (GNU libgomp) cannot start its threads again in a process forked
    after they ran: the child's first parallel op waits forever (multiprocessing's "fork" start
    method after a model was loaded, a server that forks its workers after loading). One thread
    runs no parallel region, so the child scores, on one core: a worker pool's usual share."""
    torch.set_num_threads(1)


os.register_at_fork(after_in_child=one_torch_thread_in_a_forked_child)


def resolve_device(device: str | int | torch.device | None) -> torch.device:
    """The torch device for ``device``: None/"auto" is CUDA when available, else CPU; an int is a
    CUDA index. ValueError for anything turborank does not run on, or CUDA without CUDA."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)) or device == -1:
        raise ValueError(f"device {device!r}: expected 'auto', 'cpu', 'cuda', 'cuda:N' or a CUDA index")
    if isinstance(device, int):  # a CUDA index, as torch and transformers read it
        device = f"cuda:{device}"
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"device {device!r} is not a device turborank runs on: expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available (torch {torch.__version__})")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device}: turborank runs on 'cpu' or 'cuda'")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The activation dtype for ``dtype`` on ``device``: None/"auto" is bf16 on CUDA, fp32 on CPU;
    a name or torch dtype must be one of ``DTYPES``."""
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
        return DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype {dtype} is not one of {sorted(DTYPES)}")
    return dtype
