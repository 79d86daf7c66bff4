"""Helpers the tests import (conftest.py holds only fixtures and session setup).

Imported after conftest.py has run, so TRITON_INTERPRET is already set when turborank loads here.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import torch

from turborank.testing import random_text

ROOT = Path(__file__).resolve().parents[1]


def run_repo_module(module: str, *args: str, env: dict[str, str]) -> None:
    """``python -m module args`` from the repository root, in a fresh process; fails with the tail
    of its output."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def benchmark_rows(module: str, out: Path, *args: str) -> list[dict]:
    """Run benchmark ``module`` (``python -m``) with ``--out out`` and ``args``; its report's rows."""
    run_repo_module(module, "--out", str(out), *args, env=None)
    (report,) = out.glob(f"{module.rsplit('.', 1)[-1]}_*.json")
    return json.loads(report.read_text())["rows"]


def onednn_bf16_refusal() -> str | None:
    """Why the product refuses oneDNN's packed linear in bf16 on this CPU and torch build (the
    model's own check), or None where it runs."""
    from turborank.linear_engines import onednn_unavailable_reason
    from turborank.ops import resolve_ops

    cpu = torch.device("cpu")
    return onednn_unavailable_reason(cpu, torch.bfloat16, resolve_ops("torch", cpu).backends)


def read_config(directory) -> dict:
    return json.loads((directory / "config.json").read_text())


def random_ids(rng: random.Random, length: int, vocab: int = 1500) -> list[int]:
    """A sequence shaped like a real pair: id 0 (<s>) first, then ordinary token ids."""
    return [0] + [rng.randrange(5, vocab) for _ in range(length - 1)]


def sample_pairs(n: int, seed: int = 0, max_words: int = 60) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [
        (random_text(rng, rng.randint(2, 8)), random_text(rng, rng.randint(0, max_words))) for _ in range(n)
    ]


def dense_attention(q, k, v, lengths_q, lengths_k, slopes):
    """Per sequence, a materialised [heads, Lq, Lk] bias, fp64."""
    out, oq, ok = [], 0, 0
    d = q.shape[-1]
    for lq, lk in zip(lengths_q, lengths_k, strict=True):
        qs, ks, vs = (t.double().transpose(0, 1) for t in (q[oq : oq + lq], k[ok : ok + lk], v[ok : ok + lk]))
        i = torch.arange(lq, dtype=torch.float64)[:, None]
        j = torch.arange(lk, dtype=torch.float64)[None, :]
        bias = -slopes.double()[:, None, None] * (i - j).abs()
        probs = torch.softmax(qs @ ks.transpose(1, 2) / math.sqrt(d) + bias, dim=-1)
        out.append((probs @ vs).transpose(0, 1))
        oq, ok = oq + lq, ok + lk
    return torch.cat(out)
