"""The HF reference code exported to ONNX (fp32, and dynamic int8), cached: the ONNX Runtime peer.

    python -m benchmarks.cpu.onnx_export CHECKPOINT [--cache DIR]   # prints the cache folder

CHECKPOINT holds the weights, the tokenizer and the reference ``modeling_bert.py`` (as the suite lays
it out). The model is loaded through transformers' remote code, exactly as the HF engine runs it, and
exported with the TorchScript exporter with dynamic batch and sequence axes; ``model_int8.onnx`` is
ONNX Runtime's dynamic quantisation of it (int8 weights, activations quantised per call: what
optimum's ``avx512_vnni`` dynamic configuration produces for the published ONNX rerankers). The cache
key hashes the checkpoint's files and the library versions, so a new checkpoint or reference code
exports again; nothing here is ever committed. Runs in its own process (it needs torch and a 4.4x
transformers, and several GiB while the reference's [1, heads, L, L] ALiBi constant is written out),
so the engines measured afterwards never carry its memory.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import torch

# The reference builds a dense [1, heads, 8192, 8192] fp32 ALiBi buffer at load; it becomes a 3 GiB
# initializer, over protobuf's 2 GiB limit, hence external data next to each model.
FP32_NAME = "model_fp32.onnx"
INT8_NAME = "model_int8.onnx"
OPSET = 17
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
    for version in (torch.__version__, transformers.__version__, onnxruntime.__version__, str(OPSET)):
        digest.update(version.encode())
    return digest.hexdigest()[:16]


def cached_models(checkpoint: Path, cache: Path | None = None) -> Path:
    """The folder holding ``model_fp32.onnx`` and ``model_int8.onnx`` for ``checkpoint``."""
    return (cache or default_cache()) / cache_key(checkpoint)


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

    class Logits(torch.nn.Module):
        """The reference's logits from three positional inputs, the graph's input names."""

        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).logits

    # Three distinct tensors: the exporter merges inputs that are one tensor object.
    ids = torch.full((2, 16), 5)
    mask = torch.ones(2, 16, dtype=torch.long)
    types = torch.zeros(2, 16, dtype=torch.long)
    batch = torch.export.Dim("batch", min=1, max=1024)
    sequence = torch.export.Dim("sequence", min=2, max=model.config.max_position_embeddings)
    axes = {0: batch, 1: sequence}
    fp32 = folder / FP32_NAME
    with torch.no_grad():
        program = torch.onnx.export(
            Logits(model),
            (ids, mask, types),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["logits"],
            dynamic_shapes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes},
            opset_version=OPSET,
            dynamo=True,
            external_data=True,
        )
        program.save(str(fp32), external_data=True)
    del model
    quantize_dynamic(fp32, folder / INT8_NAME, weight_type=QuantType.QInt8, use_external_data_format=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args()
    print(export(args.checkpoint, args.cache))


if __name__ == "__main__":
    main()
