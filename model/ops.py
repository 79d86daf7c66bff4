"""Per-op dispatch between each op's two engines: its Triton kernel (``*_triton``) and its PyTorch
engine (``*_torch``, the CPU path).

"auto" picks Triton for CUDA tensors and PyTorch otherwise; "torch" and "triton" force one side for
every op, and a dict sets ops one by one. Nothing falls back silently: forcing an implementation that
cannot run raises. The choice is made once, when a model is built (``resolve_ops``), and the model
calls ``ops.<op>``: the function ``ENGINES[op][backend]`` names. This is the one module of the model
that imports ``turborank.kernels``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from turborank import kernels
from turborank.kernels._launch import MAX_HEAD_DIM
from turborank.option_names import BACKENDS

OP_NAMES = ("embedding_layer_norm", "alibi_attention", "gelu_glu", "add_layer_norm")
# Ops that fuse a GEMM into one of OP_NAMES take that op's backend instead of a name of their own:
# the fused GEGLU GEMM (``gelu_glu_linear``) is the gelu_glu op with its up-projection folded in,
# so backend dicts, and the backends a loaded model reports, keep the four names above.
FUSED_OPS = {"gelu_glu_linear": "gelu_glu"}


@dataclasses.dataclass(frozen=True)
class Ops:
    """The implementation chosen for each op of the forward, and which backend each came from."""

    embedding_layer_norm: Callable[..., torch.Tensor]
    alibi_attention: Callable[..., torch.Tensor]
    gelu_glu: Callable[..., torch.Tensor]
    add_layer_norm: Callable[..., torch.Tensor]
    gelu_glu_linear: Callable[..., torch.Tensor]
    backends: dict[str, str]


# Every op's engine for each backend: what ``ops.<op>(...)`` runs.
ENGINES: dict[str, dict[str, Callable[..., torch.Tensor]]] = {
    "embedding_layer_norm": {
        "triton": kernels.embedding_layer_norm_triton,
        "torch": kernels.embedding_layer_norm_torch,
    },
    "alibi_attention": {"triton": kernels.alibi_attention_triton, "torch": kernels.alibi_attention_torch},
    "gelu_glu": {"triton": kernels.gelu_glu_triton, "torch": kernels.gelu_glu_torch},
    "add_layer_norm": {"triton": kernels.add_layer_norm_triton, "torch": kernels.add_layer_norm_torch},
    "gelu_glu_linear": {"triton": kernels.gelu_glu_linear_triton, "torch": kernels.gelu_glu_linear_torch},
}


def triton_can_run(device: torch.device) -> bool:
    return device.type == "cuda" or kernels.interpreting()


def resolve_ops(backend: str | dict[str, str], device: torch.device, head_dim: int | None = None) -> Ops:
    """Choose each op's implementation for ``device``.

    Args:
        backend: "auto" | "torch" | "triton", or a dict {op name: backend} to set ops one by one
            (ops left out are "auto").
        head_dim: the model's, when known: above the Triton attention's limit, Triton for the
            attention is refused here rather than at the first forward.
    """
    per_op = backend if isinstance(backend, dict) else dict.fromkeys(OP_NAMES, backend)
    unknown = set(per_op) - set(OP_NAMES)
    if unknown:
        raise ValueError(f"unknown op name(s) {sorted(unknown)}; ops are {OP_NAMES}")
    choice = {}
    for op in OP_NAMES:
        name = per_op.get(op, "auto")
        if name not in BACKENDS:
            raise ValueError(f"backend {name!r} for op {op!r} is not one of {BACKENDS}")
        if name == "auto":
            name = "triton" if device.type == "cuda" else "torch"
        choice[op] = name
    if "triton" in choice.values():
        if not kernels.TRITON_AVAILABLE:
            raise ValueError("backend 'triton' needs the triton package (Linux only); use backend='torch'")
        if not triton_can_run(device):
            raise ValueError(
                "backend 'triton' needs a CUDA device (or TRITON_INTERPRET=1 for the CPU interpreter, set "
                f"before turborank is imported: Triton builds a kernel when it is defined); the model is on "
                f"{device}. Use backend='torch' on CPU."
            )
    if choice["alibi_attention"] == "triton" and head_dim is not None and head_dim > MAX_HEAD_DIM:
        raise ValueError(
            f"head_dim {head_dim} (hidden_size / num_attention_heads) is above the Triton attention's "
            f"{MAX_HEAD_DIM}; load with backend={{'alibi_attention': 'torch'}}"
        )
    impls = {op: ENGINES[op][name] for op, name in choice.items()}
    impls.update({fused: ENGINES[fused][choice[base]] for fused, base in FUSED_OPS.items()})
    return Ops(**impls, backends=choice)
