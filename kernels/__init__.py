"""turborank.kernels: the ops of the JinaBERT forward. Each op's module holds its Triton kernel,
launcher and public function, then the PyTorch reference ``*_ref``."""

import importlib.util

from turborank.kernels._launch import interpreting
from turborank.kernels.add_layer_norm import (
    add_layer_norm,
    add_layer_norm_ref,
    embedding_layer_norm,
    embedding_layer_norm_ref,
)
from turborank.kernels.alibi_attention import alibi_attention
from turborank.kernels.alibi_attention_cpu import alibi_attention_ref
from turborank.kernels.alibi_attention_padded import alibi_attention_padded, alibi_attention_padded_ref
from turborank.kernels.gelu_glu import GLU_ACTIVATIONS, gelu_glu, gelu_glu_ref
from turborank.kernels.gelu_glu_linear import gelu_glu_linear, gelu_glu_linear_ref

# Triton ships wheels for Linux only; elsewhere the ``*_ref`` functions run and the Triton ones raise.
TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None

__all__ = [
    "GLU_ACTIVATIONS",
    "TRITON_AVAILABLE",
    "add_layer_norm",
    "add_layer_norm_ref",
    "alibi_attention",
    "alibi_attention_padded",
    "alibi_attention_padded_ref",
    "alibi_attention_ref",
    "embedding_layer_norm",
    "embedding_layer_norm_ref",
    "gelu_glu",
    "gelu_glu_linear",
    "gelu_glu_linear_ref",
    "gelu_glu_ref",
    "interpreting",
]
