"""The FLOP count the CPU suite holds turborank's forward to, and the GEMM-ceiling script."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.cpu import gemm_rates
from benchmarks.cpu.gemm_rates import forward_flops, measure
from tests.helpers import dense_attention, random_ids
from turborank import Reranker
from turborank.packing import pack


def _dense_attention_op(q, k, v, cu_q, cu_k, max_q, max_k, slopes):
    """The attention as plain matmuls, which PyTorch's FLOP counter sees (it has no formula for the
    CPU flash kernel)."""
    lengths_q = (cu_q[1:] - cu_q[:-1]).tolist()
    lengths_k = (cu_k[1:] - cu_k[:-1]).tolist()
    return dense_attention(q, k, v, lengths_q, lengths_k, slopes).to(q.dtype)


def test_forward_flops_counts_what_the_forward_computes(small_ckpt):
    """Against PyTorch's own FLOP counter over the F.linear engine and a matmul attention; the
    counter also sees the pooler and the classifier, which the formula leaves out."""
    reranker = Reranker.from_pretrained(small_ckpt, device="cpu", dtype="float32", linear="aten")
    module, config = reranker.module, reranker.config
    lengths = [70, 1, 33, 129, 300]
    ids, cu, longest, _ = pack([random_ids(random.Random(n), n) for n in lengths])
    module.ops = dataclasses.replace(module.ops, alibi_attention=_dense_attention_op)
    with FlopCounterMode(display=False) as counter:
        module(ids, cu, longest)
    H, pairs = config.hidden_size, len(lengths)
    head = 2 * pairs * H * H + 2 * pairs * H  # pooler and classifier
    assert counter.get_total_flops() == forward_flops(config, lengths) + head


@pytest.mark.parametrize("with_ort", [True, False])
def test_gemm_rates_script_reports_each_engine_and_the_ceilings(monkeypatch, with_ort):
    if not with_ort:  # CI has no onnxruntime: the figures of the other engines stand
        monkeypatch.setattr(gemm_rates, "_ort_rates", lambda shapes, threads: None)
    threads = torch.get_num_threads()
    try:
        result = json.loads(json.dumps(measure("small", rows=64, threads=1, square_size=256)))
    finally:
        torch.set_num_threads(threads)
    assert result["cpu"] and result["threads"] == 1
    assert {"qkv", "out", "up", "down", "square", "layer"} <= set(result["torch_fp32"])
    fp32_layers = [v["layer"] for k, v in result.items() if k.endswith("_fp32") and isinstance(v, dict)]
    assert result["best_fp32"] == max(fp32_layers) > 0
    assert result["best_bf16"] > 0
    assert ("ort_fp32" in result) is (with_ort and result.get("onnxruntime") is not None)


def test_gemm_rates_leaves_out_onednn_where_the_product_would(monkeypatch):
    """On a CPU where oneDNN packs no bf16 weight (AVX2 only: Zen 3, say) the script reports the
    other engines instead of failing, by the same check the model's linear="auto" makes."""
    monkeypatch.setattr(gemm_rates, "_ort_rates", lambda shapes, threads: None)
    real = gemm_rates.onednn_unavailable_reason

    def bf16_refused(device, dtype, ops):
        return "no bf16 packing here" if dtype == torch.bfloat16 else real(device, dtype, ops)

    monkeypatch.setattr(gemm_rates, "onednn_unavailable_reason", bf16_refused)
    threads = torch.get_num_threads()
    try:
        result = measure("small", rows=64, threads=1, square_size=128)
    finally:
        torch.set_num_threads(threads)
    assert "onednn_bf16" not in result and result["best_bf16"] == result["torch_bf16"]["layer"] > 0
    fp32_packs = real(torch.device("cpu"), torch.float32, gemm_rates._TORCH_OPS) is None
    assert ("onednn_fp32" in result) is fp32_packs
