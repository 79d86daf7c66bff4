"""An eager JinaBERT reranker written straight from the architecture, independent of turborank.

Padded batch, HF-style additive mask (finfo.min on padded keys), a materialised ALiBi bias, plain
softmax. It shares no code with the package: it reads the safetensors keys itself and computes its
own slopes, so a bug in turborank cannot hide behind the same bug here. The bias is materialised one
head at a time so an 8,192-token check fits in CI memory.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def reference_slopes(n_heads: int, scheme: str) -> list[float]:
    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_two(n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    extra = reference_slopes(2 * closest, "standard")[0::2]
    tail = extra[: n_heads - closest] if scheme == "standard" else extra[1 : n_heads - closest + 1]
    return power_of_two(closest) + tail


class EagerJinaBert:
    def __init__(self, checkpoint_dir, config: dict, scheme: str, dtype=torch.float32) -> None:
        self.w = {k: v.to(dtype) for k, v in load_file(f"{checkpoint_dir}/model.safetensors").items()}
        self.cfg = config
        self.dtype = dtype
        self.slopes = torch.tensor(
            reference_slopes(config["num_attention_heads"], scheme), dtype=torch.float32
        )

    def _ln(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.layer_norm(
            x,
            (x.shape[-1],),
            self.w[prefix + ".weight"],
            self.w[prefix + ".bias"],
            self.cfg["layer_norm_eps"],
        )

    def _lin(self, x: torch.Tensor, prefix: str, bias: bool = True) -> torch.Tensor:
        return F.linear(x, self.w[prefix + ".weight"], self.w[prefix + ".bias"] if bias else None)

    @torch.no_grad()
    def logits(self, sequences: list[list[int]]) -> torch.Tensor:
        """Raw logits [batch] for a list of token-id sequences (padded here, on the right)."""
        cfg, w = self.cfg, self.w
        B, L = len(sequences), max(len(s) for s in sequences)
        ids = torch.zeros(B, L, dtype=torch.long)
        mask = torch.zeros(B, L, dtype=self.dtype)
        for b, s in enumerate(sequences):
            ids[b, : len(s)] = torch.tensor(s)
            mask[b, : len(s)] = 1
        heads = cfg["num_attention_heads"]
        d = cfg["hidden_size"] // heads
        I = cfg["intermediate_size"]
        ext_mask = ((1.0 - mask) * torch.finfo(self.dtype).min)[:, None, :]  # [B, 1, L]
        pos = torch.arange(L)
        distance = (pos[None, :] - pos[:, None]).abs().float()

        x = (
            w["bert.embeddings.word_embeddings.weight"][ids]
            + w["bert.embeddings.token_type_embeddings.weight"][0]
        )
        x = self._ln(x, "bert.embeddings.LayerNorm")
        for layer in range(cfg["num_hidden_layers"]):
            p = f"bert.encoder.layer.{layer}."
            q = self._lin(x, p + "attention.self.query").view(B, L, heads, d)
            k = self._lin(x, p + "attention.self.key").view(B, L, heads, d)
            v = self._lin(x, p + "attention.self.value").view(B, L, heads, d)
            ctx = torch.empty_like(q)
            for h in range(heads):
                bias = (-self.slopes[h] * distance).to(self.dtype)  # materialised [L, L]
                scores = q[:, :, h] @ k[:, :, h].transpose(1, 2) / math.sqrt(d) + ext_mask + bias
                ctx[:, :, h] = torch.softmax(scores, dim=-1) @ v[:, :, h]
            x = self._ln(
                self._lin(ctx.reshape(B, L, -1), p + "attention.output.dense") + x,
                p + "attention.output.LayerNorm",
            )
            u = self._lin(x, p + "mlp.gated_layers", bias=False)
            act = F.gelu if cfg["feed_forward_type"] == "geglu" else F.relu
            g = act(u[..., :I]) * u[..., I:]
            x = self._ln(self._lin(g, p + "mlp.wo") + x, p + "mlp.layernorm")
        pooled = torch.tanh(self._lin(x[:, 0], "bert.pooler.dense"))
        return self._lin(pooled, "classifier")[:, 0].float()
