"""Loading model.safetensors with every check done before a single weight is used."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from turborank.config import JinaBertConfig
from turborank.files import check_regular_file

_FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
_PICKLE_FILES = ("pytorch_model.bin", "model.bin", "pytorch_model.pt", "model.pt")


def expected_shapes(config: JinaBertConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a JinaBERT reranker checkpoint and its shape (DEVELOPERS.md, "Weights and keys")."""
    H, I, V, T = config.hidden_size, config.intermediate_size, config.vocab_size, config.type_vocab_size
    shapes: dict[str, tuple[int, ...]] = {
        "bert.embeddings.word_embeddings.weight": (V, H),
        "bert.embeddings.token_type_embeddings.weight": (T, H),
        "bert.embeddings.LayerNorm.weight": (H,),
        "bert.embeddings.LayerNorm.bias": (H,),
        "bert.pooler.dense.weight": (H, H),
        "bert.pooler.dense.bias": (H,),
        "classifier.weight": (config.num_labels, H),
        "classifier.bias": (config.num_labels,),
    }
    for layer in range(config.num_hidden_layers):
        p = f"bert.encoder.layer.{layer}."
        for name in ("query", "key", "value"):
            shapes[f"{p}attention.self.{name}.weight"] = (H, H)
            shapes[f"{p}attention.self.{name}.bias"] = (H,)
        shapes[f"{p}attention.output.dense.weight"] = (H, H)
        shapes[f"{p}attention.output.dense.bias"] = (H,)
        shapes[f"{p}attention.output.LayerNorm.weight"] = (H,)
        shapes[f"{p}attention.output.LayerNorm.bias"] = (H,)
        shapes[f"{p}mlp.gated_layers.weight"] = (2 * I, H)
        shapes[f"{p}mlp.wo.weight"] = (H, I)
        shapes[f"{p}mlp.wo.bias"] = (H,)
        shapes[f"{p}mlp.layernorm.weight"] = (H,)
        shapes[f"{p}mlp.layernorm.bias"] = (H,)
    return shapes


def find_weights_file(directory: Path) -> Path:
    path = directory / "model.safetensors"
    if path.exists():
        check_regular_file(path)
        return path
    if (directory / "model.safetensors.index.json").is_file():
        raise ValueError(
            f"{directory}: sharded safetensors checkpoints are not supported (the rerankers are a single "
            "model.safetensors of under 100 MB)"
        )
    pickles = [name for name in _PICKLE_FILES if (directory / name).is_file()]
    if pickles:
        raise ValueError(
            f"{directory / pickles[0]}: turborank loads safetensors only. A pickle checkpoint can run "
            "arbitrary code when unpickled; convert it with safetensors.torch.save_file, or download "
            "the model.safetensors the hub repo provides"
        )
    raise FileNotFoundError(f"{directory}: no model.safetensors in the checkpoint directory")


def load_weights(path: str | Path, config: JinaBertConfig, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Read and validate every tensor, then cast to ``dtype`` (on CPU; the caller moves them).

    Raises ValueError naming the file for: something other than a regular file, an
    unreadable/truncated file, missing or unexpected keys, a shape that disagrees with the config, a
    non-floating dtype, or a NaN/Inf value, in the file or after the cast to ``dtype`` (1e6 is finite
    in the file but infinite in float16; the model would then score NaN).
    """
    path = Path(path)
    expected = expected_shapes(config)
    try:
        check_regular_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except Exception as exc:  # safetensors raises its own error type for every corruption
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None

    with handle as f:
        keys = set(f.keys())
        missing = sorted(set(expected) - keys)
        unexpected = sorted(keys - set(expected))
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing keys {_abbreviate(missing)}")
            if unexpected:
                parts.append(f"unexpected keys {_abbreviate(unexpected)}")
            raise ValueError(f"{path}: does not match the config: " + "; ".join(parts))
        problems = []
        for key, shape in expected.items():
            sl = f.get_slice(key)
            got_shape, got_dtype = tuple(sl.get_shape()), sl.get_dtype()
            if got_shape != shape:
                problems.append(f"{key} has shape {list(got_shape)}, config implies {list(shape)}")
            if got_dtype not in _FLOAT_DTYPES:
                problems.append(f"{key} has dtype {got_dtype}, expected a floating type")
        if problems:
            raise ValueError(f"{path}: " + "; ".join(problems))

        weights = {}
        for key in expected:
            try:
                tensor = f.get_tensor(key)
            except Exception as exc:
                raise ValueError(f"{path}: cannot read tensor {key} ({exc})") from None
            if not torch.isfinite(tensor).all():
                raise ValueError(f"{path}: tensor {key} contains NaN or Inf values")
            cast = tensor.to(dtype)
            if not torch.isfinite(cast).all():
                largest = tensor.abs().max().item()
                wider = [
                    str(d).removeprefix("torch.")
                    for d in (torch.bfloat16, torch.float32)
                    if torch.finfo(d).max > largest and d != dtype
                ]
                raise ValueError(
                    f"{path}: tensor {key} has values up to {largest:.4g}, which overflow "
                    f"{str(dtype).removeprefix('torch.')} (largest finite {torch.finfo(dtype).max:.4g}); "
                    + (
                        f"load it as {' or '.join(wider)} (dtype / --dtype)"
                        if wider
                        else "no dtype turborank runs in can hold it: the checkpoint is broken"
                    )
                )
            weights[key] = cast
    return weights


def _abbreviate(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', ... ({len(keys) - limit} more)' if len(keys) > limit else ''}]"
