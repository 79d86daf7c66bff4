"""``turborank.ops``: which implementation each op of the forward gets, and what is refused."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from turborank import kernels
from turborank.ops import ENGINES, FUSED_OPS, OP_NAMES, resolve_ops, triton_can_run

CPU = torch.device("cpu")


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_cpu_gets_the_pytorch_reference_of_every_op(backend):
    ops = resolve_ops(backend, CPU)
    assert ops.backends == dict.fromkeys(OP_NAMES, "torch")
    for op in (*OP_NAMES, *FUSED_OPS):
        assert getattr(ops, op) is ENGINES[op]["torch"] is getattr(kernels, f"{op}_torch"), op


def test_backends_name_the_four_ops_and_not_the_fused_gemm():
    """The fused GEGLU GEMM reports no backend of its own: a backend dict keeps four names."""
    backends = resolve_ops("auto", CPU).backends
    assert list(backends) == list(OP_NAMES)
    assert not set(FUSED_OPS) & set(backends)


def test_fused_gemm_op_takes_the_gelu_glu_backend():
    """The fused GEGLU GEMM is dispatched like the others, through gelu_glu's entry (no key of its
    own in the backends a model reports)."""
    cpu = torch.device("cpu")
    assert resolve_ops("auto", cpu).gelu_glu_linear is kernels.gelu_glu_linear_torch
    assert resolve_ops("torch", cpu).gelu_glu_linear is kernels.gelu_glu_linear_torch
    if kernels.TRITON_AVAILABLE:  # tests run Triton in its interpreter on CPU
        ops = resolve_ops({"gelu_glu": "triton"}, cpu)
        assert (
            ops.gelu_glu_linear is kernels.gelu_glu_linear_triton and ops.gelu_glu is kernels.gelu_glu_triton
        )
        assert ops.alibi_attention is kernels.alibi_attention_torch
        assert set(ops.backends) == set(OP_NAMES)
    with pytest.raises(ValueError, match="unknown op"):
        resolve_ops({"gelu_glu_linear": "torch"}, cpu)


def test_a_dict_sets_ops_one_by_one_and_leaves_the_rest_auto():
    ops = resolve_ops({"alibi_attention": "torch"}, CPU)
    assert ops.backends == dict.fromkeys(OP_NAMES, "torch")
    assert ops.alibi_attention is kernels.alibi_attention_torch
    assert resolve_ops({}, CPU).backends == resolve_ops("auto", CPU).backends


@pytest.mark.skipif(not kernels.TRITON_AVAILABLE, reason="needs the triton package")
def test_forcing_one_op_to_triton_in_the_interpreter_binds_only_that_op(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    ops = resolve_ops({"add_layer_norm": "triton"}, CPU)
    assert ops.backends == {**dict.fromkeys(OP_NAMES, "torch"), "add_layer_norm": "triton"}
    assert ops.add_layer_norm is kernels.add_layer_norm_triton
    assert ops.embedding_layer_norm is kernels.embedding_layer_norm_torch


def test_an_unknown_op_name_is_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown op name\(s\) \['attention'\]; ops are"):
        resolve_ops({"attention": "torch", "gelu_glu": "torch"}, CPU)


@pytest.mark.parametrize(
    "backend,message",
    [
        ("cuda", "backend 'cuda' for op 'embedding_layer_norm' is not one of"),
        ({"gelu_glu": "onnx"}, "backend 'onnx' for op 'gelu_glu' is not one of"),
        ({"gelu_glu": None}, "backend None for op 'gelu_glu' is not one of"),
    ],
)
def test_an_unknown_backend_is_refused_naming_the_op(backend, message):
    with pytest.raises(ValueError, match=message):
        resolve_ops(backend, CPU)


@pytest.mark.parametrize("backend", ["triton", {"alibi_attention": "triton"}])
def test_forcing_triton_on_cpu_without_the_interpreter_raises(monkeypatch, backend):
    """Nothing falls back silently: a forced Triton op that cannot run is an error, not PyTorch."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(kernels, "TRITON_AVAILABLE", True)
    assert not triton_can_run(CPU)
    with pytest.raises(ValueError, match="backend 'triton' needs a CUDA device .* the model is on cpu"):
        resolve_ops(backend, CPU)


def test_forcing_triton_without_the_triton_package_raises(monkeypatch):
    monkeypatch.setattr(kernels, "TRITON_AVAILABLE", False)
    with pytest.raises(ValueError, match="backend 'triton' needs the triton package"):
        resolve_ops({"gelu_glu": "triton"}, CPU)
    assert resolve_ops("torch", CPU).backends == dict.fromkeys(OP_NAMES, "torch")  # torch needs none


def test_triton_can_run_on_cuda_or_in_the_interpreter(monkeypatch):
    assert triton_can_run(torch.device("cuda"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_can_run(CPU)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not triton_can_run(CPU)


@pytest.mark.skipif(not kernels.TRITON_AVAILABLE, reason="needs the triton package")
def test_the_interpreter_switched_on_after_the_import_is_refused_by_name():
    """Triton builds kernels for the interpreter or a GPU when they are defined: set after the
    import, TRITON_INTERPRET=1 was accepted and the first call failed in Triton's driver lookup
    ("0 active drivers")."""
    script = (
        "import os, torch\n"
        "from turborank.ops import resolve_ops\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "try:\n"
        "    resolve_ops({'gelu_glu': 'triton'}, torch.device('cpu'))\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert "TRITON_INTERPRET=1 for the CPU interpreter, set before turborank is imported" in done.stdout, (
        done.stderr
    )


@pytest.mark.skipif(not kernels.TRITON_AVAILABLE, reason="needs the triton package")
def test_a_head_dim_past_the_triton_attention_is_refused_at_load(tmp_path):
    """A config may declare 512-wide heads; the Triton attention stops at 256. Such a model loaded
    with Triton (as "auto" picks on CUDA) and failed at its first forward."""
    from turborank import Reranker
    from turborank.testing import make_checkpoint

    assert resolve_ops("triton", CPU, head_dim=256).backends["alibi_attention"] == "triton"
    wide = make_checkpoint(
        tmp_path / "wide",
        "small",
        hidden_size=512,
        num_attention_heads=1,
        num_hidden_layers=1,
        intermediate_size=64,
    )
    with pytest.raises(
        ValueError, match="head_dim 512 .* above the Triton attention's 256; load with backend="
    ):
        Reranker.from_pretrained(wide, device="cpu", backend="triton")
    loaded = Reranker.from_pretrained(
        wide, device="cpu", backend={"alibi_attention": "torch", "gelu_glu": "triton"}
    )
    assert loaded.describe()["backends"]["gelu_glu"] == "triton"
