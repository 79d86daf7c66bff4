"""The JinaBERT cross-encoder forward over packed (unpadded) sequences."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from turborank.alibi import alibi_slopes
from turborank.config import JinaBertConfig
from turborank.linear_engines import (
    AtenLinears,
    LinearChoice,
    OneDnnLinears,
    build_linears,
    onednn_unavailable_reason,
)
from turborank.ops import Ops

logger = logging.getLogger("turborank")

# The widest MLP temporary of one row block on CPU: the [rows, 2I] up-projection in fp32.
_CPU_MLP_STEP_BYTES = 3 << 20


def _buffer(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor, requires_grad=False)


class _Layer(nn.Module):
    def __init__(self, weights: dict[str, torch.Tensor], prefix: str) -> None:
        super().__init__()
        w = {name[len(prefix) :]: t for name, t in weights.items() if name.startswith(prefix)}
        # One [3H, H] projection instead of three: a single GEMM reads x once.
        self.qkv_weight = _buffer(
            torch.cat([w[f"attention.self.{n}.weight"] for n in ("query", "key", "value")])
        )
        self.qkv_bias = _buffer(torch.cat([w[f"attention.self.{n}.bias"] for n in ("query", "key", "value")]))
        self.out_weight = _buffer(w["attention.output.dense.weight"])
        self.out_bias = _buffer(w["attention.output.dense.bias"])
        self.ln1_weight = _buffer(w["attention.output.LayerNorm.weight"])
        self.ln1_bias = _buffer(w["attention.output.LayerNorm.bias"])
        self.gated_weight = _buffer(w["mlp.gated_layers.weight"])
        self.wo_weight = _buffer(w["mlp.wo.weight"])
        self.wo_bias = _buffer(w["mlp.wo.bias"])
        self.ln2_weight = _buffer(w["mlp.layernorm.weight"])
        self.ln2_bias = _buffer(w["mlp.layernorm.bias"])


class JinaBertReranker(nn.Module):
    """JinaBERT encoder + pooler + single-logit classifier.

    Inputs are packed: the tokens of all sequences concatenated, ``cu_seqlens`` [batch + 1] int32
    offsets. No padding token is ever computed. The last layer runs attention for the token-0 query
    rows only and its MLP on those rows only; that is exact for CLS pooling and removes about one
    layer's worth of work.
    """

    def __init__(self, config: JinaBertConfig, weights: dict[str, torch.Tensor], ops: Ops) -> None:
        super().__init__()
        self.config = config
        self.ops = ops
        self.word_embeddings = _buffer(weights["bert.embeddings.word_embeddings.weight"])
        self.token_type_embeddings = _buffer(weights["bert.embeddings.token_type_embeddings.weight"])
        self.emb_ln_weight = _buffer(weights["bert.embeddings.LayerNorm.weight"])
        self.emb_ln_bias = _buffer(weights["bert.embeddings.LayerNorm.bias"])
        self.layers = nn.ModuleList(
            _Layer(weights, f"bert.encoder.layer.{i}.") for i in range(config.num_hidden_layers)
        )
        # Pooler and classifier stay fp32 whatever the run dtype: the logit and its sigmoid are taken
        # in fp32 (a bf16 sigmoid of a large logit saturates to exactly 1.0).
        self.pooler_weight = _buffer(weights["bert.pooler.dense.weight"].float())
        self.pooler_bias = _buffer(weights["bert.pooler.dense.bias"].float())
        self.classifier_weight = _buffer(weights["classifier.weight"].float())
        self.classifier_bias = _buffer(weights["classifier.bias"].float())
        self.register_buffer(
            "slopes", alibi_slopes(config.num_attention_heads, config.alibi_scheme), persistent=False
        )
        # Exact for CLS pooling; switchable so benchmarks can measure what it saves.
        self.last_layer_token0_only = True
        self.fused_gelu_glu_gemm = False
        # On CPU the MLP runs over row blocks (see ``_layer``); None runs it whole, as on CUDA.
        self.cpu_mlp_rows_per_step: int | None = max(
            64, _CPU_MLP_STEP_BYTES // (2 * config.intermediate_size * 4)
        )
        # F.linear until the loader chooses (``use_linear_engine``).
        self.linear_choice = LinearChoice("aten", "default of a bare module")
        self.linears: list[AtenLinears] | list[OneDnnLinears] = build_linears(self, "aten")

    def use_linear_engine(self, choice: LinearChoice) -> None:
        """Run the linear layers on ``choice.engine`` ("aten" or "onednn"; see
        ``turborank.linear_engines.choose_linear_engine``), built from the weights as they are now:
        call it again after moving the module."""
        if choice.engine == "onednn" and self.fused_gelu_glu_gemm:
            raise ValueError("the fused Triton GEGLU GEMM runs with linear='aten'")
        self.linears = build_linears(self, choice.engine)
        self.linear_choice = choice

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> JinaBertReranker:
        """``to``, ``cuda``, ``half`` and the rest, then the linear engine follows the weights: the
        oneDNN engine packs them again where it still runs, and gives way to ``F.linear``, with a
        warning and the reason in ``linear_choice``, where it does not (``Reranker.to`` chooses
        again from the caller's ``linear`` instead)."""
        module = super()._apply(fn, recurse)
        choice = getattr(self, "linear_choice", None)
        if choice is not None and choice.engine == "onednn":
            unavailable = onednn_unavailable_reason(self.device, self.dtype, self.ops.backends)
            if unavailable is None:
                self.linears = build_linears(self, "onednn")
            else:
                logger.warning("linear layers back on F.linear: %s", unavailable)
                self.use_linear_engine(LinearChoice("aten", f"the module moved: {unavailable}"))
        return module

    def use_fused_gelu_glu_gemm(self, enabled: bool = True) -> None:
        """Run the MLP up-projection and its gate as one Triton GEMM (``gelu_glu_linear``) instead
        of the matmul followed by the ``gelu_glu`` op. Off by default: it is kept only where a GPU
        benchmark shows it faster (benchmarks.gpu.gpu_kernels). Needs the Triton ``gelu_glu`` op."""
        if enabled and self.ops.backends["gelu_glu"] != "triton":
            raise ValueError(
                "the fused GEGLU GEMM is a Triton kernel; the gelu_glu op here is "
                f"{self.ops.backends['gelu_glu']!r} (load with backend='triton' or on CUDA)"
            )
        if enabled and self.linear_choice.engine != "aten":
            raise ValueError(
                f"the fused GEGLU GEMM replaces F.linear; the linear engine is {self.linear_choice.engine!r}"
            )
        self.fused_gelu_glu_gemm = enabled

    def check_token_ids(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> None:
        """Refuse ids the embedding tables have no row for, on host tensors, before they are copied
        to the device: a check there would cost a sync per forward, and the Triton embedding
        kernel only flags such a row with NaN. Cheap (a min/max over a CPU tensor).

        Args:
            input_ids, token_type_ids: CPU int64 tensors (types may be None).
        """
        cfg = self.config
        for name, ids, rows in (
            ("input_ids", input_ids, cfg.vocab_size),
            ("token_type_ids", token_type_ids, cfg.type_vocab_size),
        ):
            if ids is None or not ids.numel():
                continue
            low, high = (int(v) for v in torch.aminmax(ids))
            if low < 0 or high >= rows:
                field = "vocab_size" if name == "input_ids" else "type_vocab_size"
                raise ValueError(
                    f"{name} must lie in [0, {rows}) ({field} of the model), got ids {low}..{high}"
                )

    @property
    def dtype(self) -> torch.dtype:
        return self.word_embeddings.dtype

    @property
    def device(self) -> torch.device:
        return self.word_embeddings.device

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw logits.

        Args:
            input_ids: [total_tokens] int64, sequences concatenated.
            cu_seqlens: [batch + 1] int32 offsets, cu_seqlens[0] == 0; every sequence non-empty.
            max_seqlen: the longest sequence (Python int: no device sync needed).
            token_type_ids: [total_tokens] or None for all zeros.
        Returns:
            [batch] fp32 logits.
        """
        device = self.device
        if device.type == "cuda" and device.index != torch.cuda.current_device():
            # Triton launches on the current device, not the tensors': a model on cuda:1 makes it
            # current (a fresh thread's is cuda:0) for the forward, once.
            with torch.cuda.device(device):
                return self.forward(input_ids, cu_seqlens, max_seqlen, token_type_ids)
        cfg, ops = self.config, self.ops
        x = ops.embedding_layer_norm(
            input_ids,
            token_type_ids,
            self.word_embeddings,
            self.token_type_embeddings,
            self.emb_ln_weight,
            self.emb_ln_bias,
            cfg.layer_norm_eps,
        )
        first_rows = cu_seqlens[:-1].long()
        batch = first_rows.shape[0]
        cls_cu_seqlens = torch.arange(batch + 1, device=cu_seqlens.device, dtype=torch.int32)
        for index, (layer, linears) in enumerate(zip(self.layers, self.linears, strict=True)):
            if index < len(self.layers) - 1 or not self.last_layer_token0_only:
                x = self._layer(layer, linears, x, cu_seqlens, max_seqlen, None, cu_seqlens, max_seqlen)
            else:
                x = self._layer(layer, linears, x, cu_seqlens, max_seqlen, first_rows, cls_cu_seqlens, 1)
        if not self.last_layer_token0_only:
            x = x[first_rows]
        pooled = torch.tanh(F.linear(x.float(), self.pooler_weight, self.pooler_bias))
        return F.linear(pooled, self.classifier_weight, self.classifier_bias)[:, 0]

    def _layer(
        self,
        layer: _Layer,
        linears: AtenLinears | OneDnnLinears,
        x: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        query_rows: torch.Tensor | None,
        cu_seqlens_q: torch.Tensor,
        max_seqlen_q: int,
    ) -> torch.Tensor:
        """One post-norm layer. With ``query_rows`` only those rows are queried and returned."""
        cfg, ops = self.config, self.ops
        H, heads, d = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
        if query_rows is None:
            q, k, v = linears.qkv(x).view(-1, 3, heads, d).unbind(1)
            residual = x
        else:
            residual = x[query_rows]
            q = linears.q(residual).view(-1, heads, d)
            k, v = linears.kv(x).view(-1, 2, heads, d).unbind(1)
        ctx = ops.alibi_attention(
            q, k, v, cu_seqlens_q, cu_seqlens, max_seqlen_q, max_seqlen, self.slopes
        ).reshape(-1, H)
        # (h, r): the projection and the residual, or their sum and None where the GEMM added it.
        x = ops.add_layer_norm(
            *linears.out(ctx, residual), layer.ln1_weight, layer.ln1_bias, cfg.layer_norm_eps
        )
        # PyTorch's CPU allocator caches nothing: a whole-input MLP temporary (the [rows, 2I]
        # up-projection is 63 MB in fp32 at 10 x 512 tokens) comes from fresh pages on every call,
        # and faulting them in cost more than the GELU itself (10 x 512, 2 threads: 116k page
        # faults and 0.77 s per bf16 forward, against 2k and 0.60 s in blocks). Blocks of a few
        # MiB are reused from the heap instead. MLP rows do not interact: the logits are those of
        # the whole-input MLP (bit for bit on the CPUs we measured). Small inputs keep one GEMM
        # per projection, where blocks would only add op overhead.
        step = self.cpu_mlp_rows_per_step
        if step is None or x.device.type != "cpu" or self.fused_gelu_glu_gemm or x.shape[0] <= 4 * step:
            return self._mlp(layer, linears, x)
        out = torch.empty_like(x)
        for start in range(0, x.shape[0], step):
            out[start : start + step] = self._mlp(layer, linears, x[start : start + step])
        return out

    def _mlp(self, layer: _Layer, linears: AtenLinears | OneDnnLinears, x: torch.Tensor) -> torch.Tensor:
        cfg, ops = self.config, self.ops
        if linears.fuses_gate:  # oneDNN: the gate is the up-projections' epilogue
            gated = linears.gated(x)
        elif self.fused_gelu_glu_gemm:
            gated = ops.gelu_glu_linear(x, layer.gated_weight, cfg.glu_activation)
        else:
            gated = ops.gelu_glu(linears.up(x), cfg.glu_activation)
        return ops.add_layer_norm(
            *linears.down(gated, x), layer.ln2_weight, layer.ln2_bias, cfg.layer_norm_eps
        )
