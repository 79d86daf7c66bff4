"""The linear engines: oneDNN with packed weights and fused epilogues against F.linear, and how
the engine is chosen (requested, measured, or the only one that runs)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import onednn_bf16_refusal, random_ids
from turborank import Reranker
from turborank import linear_engines as engines
from turborank.config import JinaBertConfig
from turborank.linear_engines import (
    AtenLinears,
    LinearChoice,
    OneDnnLinears,
    choose_linear_engine,
    pick_linear_engine,
)
from turborank.modeling import JinaBertReranker
from turborank.ops import resolve_ops
from turborank.packing import pack
from turborank.testing import make_checkpoint
from turborank.weights import find_weights_file, load_weights

needs_onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN"
)
# oneDNN packs no bf16 weight on a CPU without AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT (Zen 3, say);
# the product refuses it there (test_auto_on_a_cpu_where_onednn_refuses_bf16_says_why, every CPU).
needs_onednn_bf16 = pytest.mark.skipif(
    onednn_bf16_refusal() is not None, reason=f"oneDNN in bf16 on this CPU: {onednn_bf16_refusal()}"
)


def _model(ckpt, dtype=torch.float32, backend="torch") -> JinaBertReranker:
    config = JinaBertConfig.from_file(ckpt / "config.json")
    weights = load_weights(find_weights_file(ckpt), config, dtype)
    return JinaBertReranker(config, weights, resolve_ops(backend, torch.device("cpu"))).eval()


@needs_onednn
@pytest.mark.parametrize("activation", ["geglu", "reglu"])
@pytest.mark.parametrize("rows", [1, 7, 64, 333])
def test_onednn_maps_equal_f_linear_in_fp32(tmp_path, activation, rows):
    """Same maps up to the order of accumulation: the epilogues (gate, bias, residual) are exact."""
    ckpt = make_checkpoint(tmp_path, "small", seed=3, feed_forward_type=activation)
    model = _model(ckpt)
    cfg = model.config
    layer = model.layers[1]
    aten = AtenLinears(layer, cfg.hidden_size)
    onednn = OneDnnLinears(layer, cfg.hidden_size, cfg.intermediate_size, cfg.glu_activation)
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, cfg.hidden_size, generator=gen)
    g = torch.randn(rows, cfg.intermediate_size, generator=gen)
    residual = torch.randn(rows, cfg.hidden_size, generator=gen)
    with torch.inference_mode():
        for name in ("qkv", "q", "kv"):
            torch.testing.assert_close(getattr(onednn, name)(x), getattr(aten, name)(x), rtol=1e-5, atol=1e-5)
        for name, arg in (("out", x), ("down", g)):
            h, r = getattr(onednn, name)(arg, residual)
            assert r is None  # fp32: the residual is added in the epilogue
            want = sum(getattr(aten, name)(arg, residual))
            torch.testing.assert_close(h, want, rtol=1e-5, atol=1e-5)
        want = model.ops.gelu_glu(aten.up(x), cfg.glu_activation)
        torch.testing.assert_close(onednn.gated(x), want, rtol=1e-5, atol=1e-5)
        # The gate is the first half, through the activation: swapping the halves must fail.
        u = aten.up(x)
        swapped = torch.cat(u.chunk(2, dim=-1)[::-1], dim=-1)
        assert (onednn.gated(x) - model.ops.gelu_glu(swapped, cfg.glu_activation)).abs().max() > 1e-3
        # A NaN weight of the gate half gives a NaN column (oneDNN's relu post-op made it 0: a
        # finite score where F.linear's path refuses the pair).
        layer.gated_weight.data[3, 0] = float("nan")
        broken = OneDnnLinears(layer, cfg.hidden_size, cfg.intermediate_size, cfg.glu_activation)
        assert broken.gated(x)[:, 3].isnan().all() and not broken.gated(x)[:, 4:].isnan().any()


@needs_onednn_bf16
def test_onednn_leaves_the_residual_to_the_layer_norm_in_bf16(small_ckpt):
    """In bf16 the residual is added in fp32 by add_layer_norm, not rounded to bf16 first."""
    model = _model(small_ckpt, torch.bfloat16)
    cfg = model.config
    onednn = OneDnnLinears(model.layers[0], cfg.hidden_size, cfg.intermediate_size, cfg.glu_activation)
    x = torch.randn(5, cfg.hidden_size).bfloat16()
    with torch.inference_mode():
        h, r = onednn.out(x, x)
    assert r is x
    want = F.linear(x.float(), model.layers[0].out_weight.float(), model.layers[0].out_bias.float())
    torch.testing.assert_close(h.float(), want, rtol=2e-2, atol=2e-2)


def test_requested_engines_and_bad_names(small_ckpt):
    model = _model(small_ckpt)
    assert choose_linear_engine(model, "aten") == LinearChoice("aten", "requested")
    if torch.backends.mkldnn.is_available():
        assert choose_linear_engine(model, "onednn").engine == "onednn"
    with pytest.raises(ValueError, match=r"linear engine 'mkl' is not one of \('auto', 'aten', 'onednn'\)"):
        choose_linear_engine(model, "mkl")


def test_onednn_refused_where_its_epilogues_would_replace_triton_ops(small_ckpt):
    """With Triton gelu_glu / add_layer_norm (the interpreter here), forcing oneDNN would skip
    the kernels under test: refused by name; "auto" keeps F.linear and says why."""
    model = _model(small_ckpt, backend={"gelu_glu": "triton"})
    with pytest.raises(ValueError, match="replace the PyTorch gelu_glu, which run on Triton here"):
        choose_linear_engine(model, "onednn")
    choice = choose_linear_engine(model, "auto")
    assert choice.engine == "aten" and "gelu_glu" in choice.reason


def test_auto_on_a_cpu_where_onednn_refuses_bf16_says_why(small_ckpt, monkeypatch):
    """As on an AVX2-only CPU: packing a bf16 weight fails. 'auto' keeps F.linear and says why,
    'onednn' is refused naming the failure, fp32 is untouched."""
    real = torch.ops.mkldnn._reorder_linear_weight

    def reorder(weight, *args):
        if weight.dtype == torch.bfloat16:
            raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx512bw")
        return real(weight, *args)

    monkeypatch.setattr(engines, "_MEASURED", {})
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", reorder)
    model = _model(small_ckpt, torch.bfloat16)
    choice = choose_linear_engine(model, "auto")
    assert choice.engine == "aten" and "fails in torch.bfloat16 here (mkldnn_reorder" in choice.reason
    with pytest.raises(ValueError, match="linear='onednn': oneDNN's packed linear fails in torch.bfloat16"):
        choose_linear_engine(model, "onednn")
    reranker = Reranker.from_pretrained(small_ckpt, device="cpu", dtype="bfloat16")
    assert reranker.describe()["linear"]["engine"] == "aten" and reranker.predict([("q", "a d")])[0] > 0
    if torch.backends.mkldnn.is_available():
        assert choose_linear_engine(_model(small_ckpt), "onednn").engine == "onednn"


def test_auto_without_onednn_says_why(small_ckpt, monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    model = _model(small_ckpt)
    choice = choose_linear_engine(model, "auto")
    assert choice == LinearChoice(
        "aten", f"only aten runs here: this torch build ({torch.__version__}) has no oneDNN"
    )
    with pytest.raises(ValueError, match="has no oneDNN; use linear='aten' or 'auto'"):
        choose_linear_engine(model, "onednn")


@needs_onednn
def test_auto_measures_once_per_shape_and_takes_the_faster(small_ckpt, monkeypatch):
    monkeypatch.setattr(engines, "_MEASURED", {})
    timings = {"aten": 2.0, "onednn": 1.0}
    calls = []

    def fake_measure(model):
        calls.append(model)
        winner = min(timings, key=timings.__getitem__)
        return LinearChoice(winner, "measured (test)", dict(timings))

    monkeypatch.setattr(engines, "_measure", fake_measure)
    model = _model(small_ckpt)
    assert choose_linear_engine(model, "auto").engine == "onednn"
    assert choose_linear_engine(_model(small_ckpt), "auto").engine == "onednn"
    assert len(calls) == 1  # the second model of the same shape reuses the measurement
    monkeypatch.setattr(engines, "_MEASURED", {})
    timings.update(aten=0.5)
    assert choose_linear_engine(model, "auto").engine == "aten"


@pytest.mark.parametrize(
    "onednn_s,engine", [(0.5, "onednn"), (0.94, "onednn"), (0.97, "aten"), (1.0, "aten"), (1.3, "aten")]
)
def test_auto_keeps_f_linear_near_a_tie(onednn_s, engine):
    """Within 5% the load-time timing is noise (a Zen 3 measured both engines within 0.1-4%
    and flipped between loads): F.linear, so that every load of a model gives the same scores."""
    assert pick_linear_engine({"aten": 1.0, "onednn": onednn_s}) == engine


@needs_onednn
def test_the_real_measurement_times_both_engines(small_ckpt, monkeypatch):
    monkeypatch.setattr(engines, "_MEASURED", {})
    choice = choose_linear_engine(_model(small_ckpt), "auto")
    assert set(choice.seconds) == {"aten", "onednn"} and all(s > 0 for s in choice.seconds.values())
    assert choice.engine == pick_linear_engine(choice.seconds)  # the faster, oneDNN by 5%
    assert "measured at load" in choice.reason and "aten" in choice.reason and "onednn" in choice.reason


@needs_onednn
@pytest.mark.parametrize("dtype", ["float32", pytest.param("bfloat16", marks=needs_onednn_bf16)])
def test_engines_give_the_same_logits(small_ckpt, dtype):
    """End to end, packed batch of odd lengths: the engines agree within the dtype's rounding."""
    rng = random.Random(5)
    seqs = [random_ids(rng, n) for n in (70, 1, 33, 129, 300)]
    ids, cu, longest, _ = pack(seqs)
    logits = {}
    for engine in ("aten", "onednn"):
        reranker = Reranker.from_pretrained(small_ckpt, device="cpu", dtype=dtype, linear=engine)
        assert reranker.describe()["linear"]["engine"] == engine
        logits[engine] = reranker.module(ids, cu, longest)
    tolerance = 1e-5 if dtype == "float32" else 0.1
    torch.testing.assert_close(logits["onednn"], logits["aten"], rtol=0, atol=tolerance)


def test_describe_and_to_keep_the_choice(small_ckpt):
    reranker = Reranker.from_pretrained(small_ckpt, device="cpu", linear="aten")
    assert reranker.describe()["linear"] == {"engine": "aten", "reason": "requested", "seconds": None}
    reranker.to("cpu")
    assert reranker.describe()["linear"]["engine"] == "aten"


@needs_onednn
def test_a_copied_or_pickled_module_packs_its_weights_again(small_ckpt):
    """Packed oneDNN tensors have no storage to copy: a copy of the module packs its own."""
    import copy
    import pickle

    reranker = Reranker.from_pretrained(small_ckpt, device="cpu", linear="onednn")
    ids, cu, longest, _ = pack([random_ids(random.Random(2), n) for n in (40, 7)])
    want = reranker.module(ids, cu, longest)
    for clone in (copy.deepcopy(reranker.module), pickle.loads(pickle.dumps(reranker.module))):
        assert clone.linear_choice.engine == "onednn"
        assert clone.linears[0]._qkv.weight is not reranker.module.linears[0]._qkv.weight
        torch.testing.assert_close(clone(ids, cu, longest), want, rtol=0, atol=0)


@needs_onednn
def test_a_module_moved_where_onednn_cannot_run_says_so(small_ckpt, monkeypatch, caplog):
    """Moving the bare module (not through Reranker.to, which chooses again) keeps the linear
    engine when it still runs, and otherwise falls back to F.linear with a warning and the reason."""
    reranker = Reranker.from_pretrained(small_ckpt, device="cpu", linear="onednn")
    module = reranker.module.to("cpu")
    assert module.linear_choice.engine == "onednn"
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    with caplog.at_level("WARNING", logger="turborank"):
        module.to("cpu")
    assert module.linear_choice.engine == "aten" and "no oneDNN" in module.linear_choice.reason
    assert isinstance(module.linears[0], AtenLinears)
    assert "linear layers back on F.linear" in caplog.text


_MANY_SHAPES = """
import ctypes, gc, json, random, sys
import turborank
from turborank import Reranker
from turborank.testing import random_text

def rss():
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status") as status:
        return int(next(l for l in status if l.startswith("VmRSS")).split()[1]) / 1024

reranker = Reranker.from_pretrained(sys.argv[1], linear="onednn")
rng = random.Random(0)
sizes = []
def batches(n):
    for _ in range(n):
        documents = [random_text(rng, rng.randint(5, 300)) for _ in range(rng.randint(1, 12))]
        reranker.predict([(random_text(rng, 3), document) for document in documents])
batches(40)
warm = rss()
batches(120)
print(json.dumps({"warm": warm, "after": rss()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RSS from /proc, trims glibc's heap")
def test_onednn_memory_stays_bounded_over_many_input_shapes(small_ckpt):
    """Each new row count makes oneDNN create primitives, which it caches: with its default of
    1,024 entries the process grew ~2.5 MiB per shape (about 250 MiB over these batches); with
    turborank's 32 it levels off once the cache is full."""
    backends = {"alibi_attention": "torch", "gelu_glu": "torch", "add_layer_norm": "torch"}
    if engines.onednn_unavailable_reason(torch.device("cpu"), torch.float32, backends) is not None:
        pytest.skip("oneDNN cannot run here")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
    }
    out = subprocess.run(
        [sys.executable, "-c", _MANY_SHAPES, str(small_ckpt)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    memory = json.loads(out.stdout.strip().splitlines()[-1])
    assert memory["after"] - memory["warm"] < 60, memory


def test_turborank_bounds_onednn_caches_unless_the_user_did():
    code = "import os, turborank; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'], os.environ['LRU_CACHE_CAPACITY'])"  # noqa: E501
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
    }
    ours = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert ours.stdout.split() == ["32", "32"]
    env["LRU_CACHE_CAPACITY"] = "7"
    theirs = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert theirs.stdout.split() == ["32", "7"]
