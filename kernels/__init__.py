"""turborank.kernels: the ops of the JinaBERT forward, each with two engines. Each op's module holds
its Triton kernel, launcher and public function ``<op>_triton``, then its PyTorch engine
``<op>_torch`` (the CPU path; the attention's lives in ``alibi_attention_cpu``). Modules are named
for the op, functions for the op and the engine, so ``turborank.kernels.alibi_attention`` is the
module and ``turborank.kernels.alibi_attention_triton`` its function."""

import importlib.util

from turborank.kernels._launch import interpreting
from turborank.kernels.add_layer_norm import (
    add_layer_norm_torch,
    add_layer_norm_triton,
    embedding_layer_norm_torch,
    embedding_layer_norm_triton,
)
from turborank.kernels.alibi_attention import alibi_attention_triton
from turborank.kernels.alibi_attention_cpu import alibi_attention_torch
from turborank.kernels.alibi_attention_padded import (
    alibi_attention_padded_torch,
    alibi_attention_padded_triton,
)
from turborank.kernels.gelu_glu import GLU_ACTIVATIONS, gelu_glu_torch, gelu_glu_triton
from turborank.kernels.gelu_glu_linear import gelu_glu_linear_torch, gelu_glu_linear_triton

# Triton ships wheels for Linux only; elsewhere the ``*_torch`` engines run and the Triton ones raise.
TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None

__all__ = [
    "GLU_ACTIVATIONS",
    "TRITON_AVAILABLE",
    "add_layer_norm_torch",
    "add_layer_norm_triton",
    "alibi_attention_padded_torch",
    "alibi_attention_padded_triton",
    "alibi_attention_torch",
    "alibi_attention_triton",
    "embedding_layer_norm_torch",
    "embedding_layer_norm_triton",
    "gelu_glu_linear_torch",
    "gelu_glu_linear_triton",
    "gelu_glu_torch",
    "gelu_glu_triton",
    "interpreting",
]
