"""The HF reference code exported to ONNX (fp32, and dynamic int8), cached: the ONNX Runtime peer.

    python -m benchmarks.cpu.onnx_export CHECKPOINT [--cache DIR]   # prints the cache folder

CHECKPOINT holds the weights, the tokenizer and the reference ``modeling_bert.py`` (as the suite lays
it out). The model is loaded through transformers' remote code, exactly as the HF engine runs it, and
exported with the dynamo exporter with dynamic batch and sequence axes; ``model_int8.onnx`` is ONNX
Runtime's dynamic quantisation of it (int8 weights, activations quantised per call: what optimum's
``avx512_vnni`` dynamic configuration produces for the published ONNX rerankers).

The ALiBi bias is built in the graph from the input's length. Exported as it stands, the reference's
dense ``[1, heads, 8192, 8192]`` fp32 buffer would become a 3 GiB initializer that ONNX Runtime holds
(and copies) whatever the input; the peer would then be killed past 20 GiB at 8,192 tokens. Here the
buffer is swapped, before the export, for an object that answers the encoder's slice
``alibi[:, :, :L, :L]`` by computing ``-slope * |i - j|`` for that L, so everything else is the
reference's own code. The export is checked against the reference's own logits before it is kept.

The cache key hashes the checkpoint's files, the library versions and ``EXPORT_VERSION``, so a new
checkpoint, reference code or export method exports again; nothing here is ever committed. Runs in
its own process (it needs torch and a 4.4x transformers, and the reference builds its dense buffer
at load), so the engines measured afterwards never carry its memory.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import torch

FP32_NAME = "model_fp32.onnx"
INT8_NAME = "model_int8.onnx"
OPSET = 17
# Bumped when the export method changes, so that cached exports of the old method are not reused.
EXPORT_VERSION = "alibi-in-graph-1"
# The export must give the reference's logits: fp32, a different operator order.
EXPORT_TOLERANCE = 1e-3
_KEY_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "modeling_bert.py",
    "configuration_bert.py",
)


def default_cache() -> Path:
    """$TURBORANK_ONNX_CACHE, else turborank/onnx-peer under the user's cache folder."""
    if os.environ.get("TURBORANK_ONNX_CACHE"):
        return Path(os.environ["TURBORANK_ONNX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "turborank" / "onnx-peer"


def cache_key(checkpoint: Path) -> str:
    """sha256 over the checkpoint's files and the versions that shape the export."""
    import onnxruntime
    import transformers

    digest = hashlib.sha256()
    for name in _KEY_FILES:
        path = checkpoint / name
        digest.update(name.encode())
        digest.update(path.read_bytes() if path.exists() else b"<missing>")
    versions = (
        torch.__version__,
        transformers.__version__,
        onnxruntime.__version__,
        str(OPSET),
        EXPORT_VERSION,
    )
    for version in versions:
        digest.update(version.encode())
    return digest.hexdigest()[:16]


def cached_models(checkpoint: Path, cache: Path | None = None) -> Path:
    """The folder holding ``model_fp32.onnx`` and ``model_int8.onnx`` for ``checkpoint``."""
    return (cache or default_cache()) / cache_key(checkpoint)


class _AlibiFromLength:
    """Stands in for the reference encoder's dense ``alibi`` buffer: the encoder slices it
    ``[:, :, :L, :L]``, and this answers with ``-slope * |i - j|`` built for that L, so the traced
    graph computes the bias from the input's length instead of holding a [heads, 8192, 8192] constant."""

    def __init__(self, neg_slopes: torch.Tensor) -> None:
        self.neg_slopes = neg_slopes.reshape(1, -1, 1, 1)
        self.device = neg_slopes.device
        self.dtype = neg_slopes.dtype

    def __getitem__(self, index: tuple[slice, ...]) -> torch.Tensor:
        rows, cols = index[2].stop, index[3].stop
        distance = (torch.arange(cols)[None, :] - torch.arange(rows)[:, None]).abs()
        return self.neg_slopes * distance.to(self.dtype)


def _swap_in_alibi_from_length(model: torch.nn.Module) -> None:
    """Replace the encoder's dense ALiBi buffer by ``_AlibiFromLength`` (the slopes read off the
    buffer itself: alibi[0, h, 0, 1] = -slope_h)."""
    encoder = model.bert.encoder
    neg_slopes = encoder.alibi[0, :, 0, 1].clone()
    del encoder._buffers["alibi"]
    encoder.alibi = _AlibiFromLength(neg_slopes)
    # Past this size the reference would rebuild its dense buffer; the stand-in serves any length.
    encoder._current_alibi_size = 1 << 30


class _Logits(torch.nn.Module):
    """The reference's logits from three positional inputs, the graph's input names."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).logits


def _check_export(path: Path, model: torch.nn.Module) -> None:
    """The exported graph against the reference it came from, on two padded lengths; raises if they
    disagree (a wrong bias would move logits by far more than the tolerance)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    for length in (7, 300):
        ids = torch.randint(5, min(1000, model.config.vocab_size), (3, length), generator=generator)
        mask = torch.ones(3, length, dtype=torch.long)
        mask[1, length // 2 :] = 0  # one padded row: the key mask must reach the graph too
        types = torch.zeros_like(ids)
        with torch.no_grad():
            expected = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.numpy()
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()}
        got = session.run(["logits"], feed)[0]
        error = float(abs(got - expected).max())
        if not error <= EXPORT_TOLERANCE:
            raise RuntimeError(
                f"{path}: the export differs from the reference by {error:.3g} at length {length}"
            )


def export(checkpoint: Path, cache: Path | None = None) -> Path:
    """Export (if not cached) and return the folder of the two models."""
    folder = cached_models(checkpoint, cache)
    if (folder / FP32_NAME).exists() and (folder / INT8_NAME).exists():
        return folder
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModelForSequenceClassification

    folder.mkdir(parents=True, exist_ok=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        checkpoint, trust_remote_code=True, num_labels=1, torch_dtype=torch.float32
    ).eval()
    _swap_in_alibi_from_length(model)

    # Three distinct tensors: the exporter merges inputs that are one tensor object.
    ids = torch.full((2, 16), 5)
    mask = torch.ones(2, 16, dtype=torch.long)
    types = torch.zeros(2, 16, dtype=torch.long)
    batch = torch.export.Dim("batch", min=1, max=1024)
    sequence = torch.export.Dim("sequence", min=2, max=model.config.max_position_embeddings)
    axes = {0: batch, 1: sequence}
    # Written under a temporary name and renamed once checked: a failed export leaves no model that
    # a later run would take from the cache.
    fp32, partial = folder / FP32_NAME, folder / f"partial-{FP32_NAME}"
    with torch.no_grad():
        program = torch.onnx.export(
            _Logits(model),
            (ids, mask, types),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["logits"],
            dynamic_shapes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes},
            opset_version=OPSET,
            dynamo=True,
        )
        program.save(str(partial))
    _check_export(partial, model)
    partial.replace(fp32)
    del model
    int8 = folder / f"partial-{INT8_NAME}"
    quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
    int8.replace(folder / INT8_NAME)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args()
    print(export(args.checkpoint, args.cache))


if __name__ == "__main__":
    main()
