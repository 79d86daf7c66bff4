"""How a layer's linear maps run: ``F.linear`` on the weights as loaded, or oneDNN on CPU with the
weights packed once and the GEGLU gate and the residual adds done in the GEMM epilogues.

The same torch build runs the same fp32 GEMM at very different fractions of the hardware from one
x86 CPU to the next: ``F.linear`` in fp32 goes to MKL, which takes narrower code paths on some CPUs
(AMD's among them), while oneDNN with a weight reordered once into its blocked layout skips the
per-call packing and fuses what follows the GEMM. Which is faster is measured, not assumed:
``choose_linear_engine`` times one layer's linear work both ways on the CPU at hand, at load.

Both engines give the same maps up to fp32 rounding order (and, in bf16, where the rounding to bf16
falls): ``qkv``, ``q`` and ``kv`` project; ``out(ctx, residual)`` and ``down(g, residual)`` return
``(h, r)`` such that ``add_layer_norm(h, r)`` normalises ``x W^T + b + residual`` (in fp32 oneDNN
adds the residual in the epilogue and returns ``r = None``); ``gated(x)`` (oneDNN) is
``act(x W_1^T) * (x W_2^T)``, where ``F.linear`` leaves ``up(x)`` to the ``gelu_glu`` op.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from turborank.option_names import LINEAR_ENGINES

if TYPE_CHECKING:
    from turborank.modeling import JinaBertReranker, _Layer

# The GEGLU gate as a oneDNN eltwise post-op: (attribute, algorithm). "none" is GELU's erf form,
# the one JinaBERT uses (the tanh form moves the logits by about 3e-3). ReGLU's gate runs after the
# GEMM instead: oneDNN's relu post-op makes a NaN 0, and a NaN must reach the score to be refused.
_GATE_POST_OPS = {"gelu": ("gelu", "none"), "relu": ("none", "")}
# The measurement at load: rows of one layer's linear work, and timed repetitions per engine
# (alternating, best of each: a load on the machine slows both alike).
_MEASURE_ROWS = 256
_MEASURE_REPEATS = 5
# oneDNN is chosen when it takes under this share of F.linear's time. Near a tie (Zen 3: within
# 0.1-4%) timing noise would flip the choice from one load to the next, and with it the scores'
# last bits; F.linear then, which also holds no cached primitives per shape.
_ONEDNN_AT_MOST = 0.95
# Choices made in this process, by (dtype, threads, hidden, intermediate, activation): loading a
# second model of the same shape does not measure again.
_MEASURED: dict[tuple[Any, ...], LinearChoice] = {}


@dataclasses.dataclass(frozen=True)
class LinearChoice:
    """The engine the linear layers run on and why: "requested", "only one runs here: ...", or
    the measurement (seconds per ``_MEASURE_ROWS``-row layer for each engine)."""

    engine: str
    reason: str
    seconds: dict[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class AtenLinears:
    """``F.linear`` on the layer's weights as loaded: cuBLAS on CUDA; on CPU MKL in fp32, oneDNN
    (unpacked, reordered per call) in bf16. The residual add is left to ``add_layer_norm`` and the
    gate to the ``gelu_glu`` op (or the fused Triton GEMM)."""

    fuses_gate = False

    def __init__(self, layer: _Layer, hidden: int) -> None:
        self.layer, self.hidden = layer, hidden

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.layer.qkv_weight, self.layer.qkv_bias)

    def q(self, x: torch.Tensor) -> torch.Tensor:
        H = self.hidden
        return F.linear(x, self.layer.qkv_weight[:H], self.layer.qkv_bias[:H])

    def kv(self, x: torch.Tensor) -> torch.Tensor:
        H = self.hidden
        return F.linear(x, self.layer.qkv_weight[H:], self.layer.qkv_bias[H:])

    def out(self, ctx: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.linear(ctx, self.layer.out_weight, self.layer.out_bias), residual

    def up(self, x: torch.Tensor) -> torch.Tensor:
        """[rows, 2I]: the gate's input and the multiplier, for the ``gelu_glu`` op."""
        return F.linear(x, self.layer.gated_weight)

    def down(self, g: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.linear(g, self.layer.wo_weight, self.layer.wo_bias), residual


class _Packed:
    """One weight reordered once into oneDNN's blocked layout, with its bias."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        # No batch-size hint: one layout serves every row count (measured: within noise of a
        # layout packed for the row count at hand, from 1 row to 5,120).
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)
        self.bias = None if bias is None else bias.detach().contiguous()

    def __call__(self, x: torch.Tensor, attr: str = "none", algorithm: str = "") -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, attr, [], algorithm)

    def binary(self, x: torch.Tensor, other: torch.Tensor, op: str) -> torch.Tensor:
        """(x W^T + b) ``op`` other, ``op`` "add" or "mul", in the GEMM's epilogue."""
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.weight, self.bias, op)


class OneDnnLinears:
    """The layer's linear maps on oneDNN (CPU, fp32 or bf16), weights packed at construction.

    ``gated`` runs the GEGLU as two GEMMs: the gate half with GELU (erf) as its eltwise post-op,
    then the multiplier half with "times the gate" as its binary post-op, so neither the [rows, 2I]
    up-projection nor a separate GELU pass over it exists; in bf16 the gate is rounded to bf16
    before the product, where ``F.linear`` rounds both halves. In fp32 ``out`` and ``down`` add the
    bias and the residual in the epilogue, leaving the LayerNorm one input. In bf16 they add only
    the bias and leave the residual to ``add_layer_norm``, which adds it in fp32: a sum rounded to
    bf16 before the LayerNorm (what the reference's eager bf16 forward does) put turborank's bf16
    logits about 1.4x further from fp64 (median over 30 batches, small and turbo shapes). fp32
    differs from ``F.linear`` only in the order of accumulation.
    """

    fuses_gate = True

    def __init__(self, layer: _Layer, hidden: int, intermediate: int, activation: str) -> None:
        self.layer, self.hidden, self.intermediate, self.activation = layer, hidden, intermediate, activation
        H, I = hidden, intermediate
        qkv_w, qkv_b, gated_w = layer.qkv_weight, layer.qkv_bias, layer.gated_weight
        self._qkv = _Packed(qkv_w, qkv_b)
        # The last layer queries token 0 only: its q and kv projections are packed apart.
        self._q = _Packed(qkv_w[:H], qkv_b[:H])
        self._kv = _Packed(qkv_w[H:], qkv_b[H:])
        self._out = _Packed(layer.out_weight, layer.out_bias)
        self._gate = _Packed(gated_w[:I], None)
        self._multiplier = _Packed(gated_w[I:], None)
        self._down = _Packed(layer.wo_weight, layer.wo_bias)
        self._gate_post_op = _GATE_POST_OPS[activation]
        self._residual_in_epilogue = layer.out_weight.dtype == torch.float32

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        # Packed oneDNN tensors have no storage to copy or pickle: a copy packs its layer again.
        return OneDnnLinears, (self.layer, self.hidden, self.intermediate, self.activation)

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        return self._qkv(x)

    def q(self, x: torch.Tensor) -> torch.Tensor:
        return self._q(x)

    def kv(self, x: torch.Tensor) -> torch.Tensor:
        return self._kv(x)

    def out(self, ctx: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._residual_in_epilogue:
            return self._out.binary(ctx, residual, "add"), None
        return self._out(ctx), residual

    def gated(self, x: torch.Tensor) -> torch.Tensor:
        """[rows, I]: act(x W_gate^T) * (x W_multiplier^T)."""
        gate = self._gate(x, *self._gate_post_op)
        if self.activation == "relu":
            gate = torch.relu_(gate)
        return self._multiplier.binary(x, gate, "mul")

    def down(self, g: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._residual_in_epilogue:
            return self._down.binary(g, residual, "add"), None
        return self._down(g), residual


def onednn_unavailable_reason(
    device: torch.device, dtype: torch.dtype, backends: dict[str, str]
) -> str | None:
    """Why oneDNN's packed linear cannot serve a model on ``device`` in ``dtype`` with these op
    ``backends``, or None when it can (checked by running one). Its epilogues take the place of
    the PyTorch ``gelu_glu`` and ``add_layer_norm`` engines, so those ops must be on PyTorch: with
    Triton ones (CUDA, or the interpreter in tests) the linear layers stay on ``F.linear`` and the
    Triton kernels run."""
    if device.type != "cpu":
        return f"oneDNN's packed linear runs on CPU, the model is on {device}"
    triton_ops = [op for op in ("gelu_glu", "add_layer_norm") if backends[op] != "torch"]
    if triton_ops:
        return f"its epilogues replace the PyTorch {' and '.join(triton_ops)}, which run on Triton here"
    if not torch.backends.mkldnn.is_available():
        return f"this torch build ({torch.__version__}) has no oneDNN"
    try:
        weight = torch.ones(8, 8, dtype=dtype)
        packed = _Packed(weight, torch.zeros(8, dtype=dtype))
        result = packed.binary(torch.ones(3, 8, dtype=dtype), torch.ones(3, 8, dtype=dtype), "add")
    except (RuntimeError, AttributeError, NotImplementedError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"oneDNN's packed linear fails in {dtype} here ({first_line[:160]})"
    if result.shape != (3, 8) or not bool((result == 9).all()):
        return f"oneDNN's packed linear gives wrong results in {dtype} here"
    return None


def build_linears(model: JinaBertReranker, engine: str) -> list[AtenLinears] | list[OneDnnLinears]:
    """The per-layer linear maps of ``model`` on ``engine`` ("aten" or "onednn")."""
    cfg = model.config
    if engine == "aten":
        return [AtenLinears(layer, cfg.hidden_size) for layer in model.layers]
    return [
        OneDnnLinears(layer, cfg.hidden_size, cfg.intermediate_size, cfg.glu_activation)
        for layer in model.layers
    ]


def choose_linear_engine(model: JinaBertReranker, requested: str = "auto") -> LinearChoice:
    """The engine for ``model`` on its device and dtype.

    Args:
        requested: "aten", "onednn" (CPU only; ValueError where it cannot run), or "auto": "aten"
            on CUDA; on CPU the faster of the two on one layer's linear work at this thread count,
            measured once per process and shape (about 0.1 s for the turbo model), oneDNN only
            when at least 5% faster.
    """
    if requested not in LINEAR_ENGINES:
        raise ValueError(f"linear engine {requested!r} is not one of {LINEAR_ENGINES}")
    if requested == "aten":
        return LinearChoice("aten", "requested")
    unavailable = onednn_unavailable_reason(model.device, model.dtype, model.ops.backends)
    if requested == "onednn":
        if unavailable:
            raise ValueError(f"linear='onednn': {unavailable}; use linear='aten' or 'auto'")
        return LinearChoice("onednn", "requested")
    if unavailable:
        return LinearChoice("aten", f"only aten runs here: {unavailable}")
    cfg = model.config
    key = (model.dtype, torch.get_num_threads(), cfg.hidden_size, cfg.intermediate_size, cfg.glu_activation)
    if key not in _MEASURED:
        _MEASURED[key] = _measure(model)
    return _MEASURED[key]


def pick_linear_engine(seconds: dict[str, float]) -> str:
    """The engine "auto" keeps, given each one's best time: oneDNN when clearly faster."""
    return "onednn" if seconds["onednn"] < _ONEDNN_AT_MOST * seconds["aten"] else "aten"


def _measure(model: JinaBertReranker) -> LinearChoice:
    """Time one layer's linear work (QKV, output projection + residual, GEGLU, down projection +
    residual) on both engines with the first layer's weights, alternating, best of each."""
    cfg = model.config
    layer = model.layers[0]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(_MEASURE_ROWS, cfg.hidden_size, generator=generator).to(model.dtype)
    engines = {
        "aten": AtenLinears(layer, cfg.hidden_size),
        "onednn": OneDnnLinears(layer, cfg.hidden_size, cfg.intermediate_size, cfg.glu_activation),
    }

    def layer_work(linears: AtenLinears | OneDnnLinears) -> None:
        linears.qkv(x)
        h, r = linears.out(x, x)
        if r is not None:
            h = h + r
        if isinstance(linears, OneDnnLinears):
            g = linears.gated(h)
        else:
            g = model.ops.gelu_glu(linears.up(h), cfg.glu_activation)
        h, r = linears.down(g, h)
        if r is not None:
            h = h + r

    best = dict.fromkeys(engines, float("inf"))
    with torch.inference_mode():
        for linears in engines.values():  # warm-up: first-call setup of each path
            layer_work(linears)
        for _ in range(_MEASURE_REPEATS):
            for name, linears in engines.items():
                start = time.perf_counter()
                layer_work(linears)
                best[name] = min(best[name], time.perf_counter() - start)
    winner = pick_linear_engine(best)
    detail = ", ".join(f"{name} {seconds * 1e3:.2f} ms" for name, seconds in best.items())
    return LinearChoice(
        winner,
        f"measured at load ({_MEASURE_ROWS} rows of one layer, {torch.get_num_threads()} threads: {detail})",
        best,
    )
