import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from turborank import Reranker
from turborank.config import JinaBertConfig
from turborank.testing import make_checkpoint, make_config
from turborank.weights import expected_shapes, find_weights_file, load_weights


@pytest.fixture
def ckpt(small_ckpt, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(small_ckpt, target)
    return target


def _config(path):
    return JinaBertConfig.from_file(path / "config.json")


def _rewrite(path, change):
    tensors = load_file(str(path / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def test_turbo_parameter_count_matches_spec():
    cfg = JinaBertConfig.from_dict(make_config("turbo"))
    count = sum(torch.Size(s).numel() for s in expected_shapes(cfg).values())
    assert count == 37_771_777
    tiny = JinaBertConfig.from_dict(make_config("tiny-en"))
    assert sum(torch.Size(s).numel() for s in expected_shapes(tiny).values()) == 33_046_273


def test_checkpoint_is_bf16_with_real_keys(small_ckpt):
    tensors = load_file(str(small_ckpt / "model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert "bert.encoder.layer.1.mlp.gated_layers.weight" in tensors
    assert not any("position" in key for key in tensors)


def test_bf16_checkpoint_loads_in_fp32_exactly(small_ckpt):
    cfg = _config(small_ckpt)
    weights = load_weights(small_ckpt / "model.safetensors", cfg, torch.float32)
    raw = load_file(str(small_ckpt / "model.safetensors"))
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert weights[key].dtype == torch.float32
    assert torch.equal(weights[key], raw[key].float())


def test_missing_and_unexpected_keys_are_listed(ckpt):
    def change(t):
        del t["bert.pooler.dense.bias"]
        t["bert.embeddings.position_embeddings.weight"] = torch.zeros(4, 4, dtype=torch.bfloat16)

    _rewrite(ckpt, change)
    with pytest.raises(ValueError) as info:
        load_weights(ckpt / "model.safetensors", _config(ckpt), torch.float32)
    message = str(info.value)
    assert "missing keys [bert.pooler.dense.bias]" in message
    assert "unexpected keys [bert.embeddings.position_embeddings.weight]" in message
    assert "model.safetensors" in message


def test_shape_mismatch_names_key(ckpt):
    _rewrite(ckpt, lambda t: t.update({"classifier.weight": torch.zeros(2, 192, dtype=torch.bfloat16)}))
    with pytest.raises(
        ValueError, match=r"classifier.weight has shape \[2, 192\], config implies \[1, 192\]"
    ):
        load_weights(ckpt / "model.safetensors", _config(ckpt), torch.float32)


def test_integer_dtype_rejected(ckpt):
    _rewrite(ckpt, lambda t: t.update({"classifier.bias": torch.zeros(1, dtype=torch.int32)}))
    with pytest.raises(ValueError, match="classifier.bias has dtype I32, expected a floating type"):
        load_weights(ckpt / "model.safetensors", _config(ckpt), torch.float32)


def test_nan_rejected(ckpt):
    def change(t):
        t["bert.encoder.layer.0.mlp.wo.weight"][3, 5] = float("nan")

    _rewrite(ckpt, change)
    with pytest.raises(ValueError, match="tensor bert.encoder.layer.0.mlp.wo.weight contains NaN or Inf"):
        load_weights(ckpt / "model.safetensors", _config(ckpt), torch.float32)


def test_truncated_file(ckpt):
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        load_weights(path, _config(ckpt), torch.float32)


def test_garbage_file(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        Reranker.from_pretrained(ckpt, device="cpu")


def test_pickle_checkpoint_refused_with_reason(ckpt):
    (ckpt / "model.safetensors").rename(ckpt / "pytorch_model.bin")
    with pytest.raises(
        ValueError, match="pytorch_model.bin: turborank loads safetensors only.*arbitrary code"
    ):
        find_weights_file(ckpt)


def test_no_weights(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        Reranker.from_pretrained(ckpt, device="cpu")


def test_checkpoint_other_dtypes_load(tmp_path):
    ckpt = make_checkpoint(tmp_path, "small", seed=9)
    _rewrite(ckpt, lambda t: t.update({k: v.half() for k, v in t.items()}))
    weights = load_weights(ckpt / "model.safetensors", _config(ckpt), torch.bfloat16)
    assert {w.dtype for w in weights.values()} == {torch.bfloat16}


@pytest.mark.parametrize(
    "file_dtype,value,run_dtype",
    [
        (torch.float64, 1e300, torch.float32),
        (torch.float32, 1e6, torch.float16),
        (torch.bfloat16, 1e38, torch.float16),
    ],
)
def test_values_that_overflow_the_run_dtype_are_refused(ckpt, file_dtype, value, run_dtype):
    key = "bert.encoder.layer.1.attention.output.dense.weight"

    def change(t):
        t[key] = t[key].to(file_dtype)
        t[key][0, 0] = value

    _rewrite(ckpt, change)
    name = str(run_dtype).removeprefix("torch.")
    with pytest.raises(ValueError, match=f"tensor {key} has values up to .* which overflow {name}") as info:
        load_weights(ckpt / "model.safetensors", _config(ckpt), run_dtype)
    assert "model.safetensors" in str(info.value)
    # The advice names only dtypes turborank runs in that hold the value (float64 is not one).
    advice = str(info.value).rsplit("; ", 1)[1]
    expected = {1e300: "the checkpoint is broken", 1e6: "bfloat16 or float32", 1e38: "bfloat16 or float32"}
    assert expected[value] in advice and "float64" not in advice
    if value < 1e38:  # the same file loads where the value fits
        assert load_weights(ckpt / "model.safetensors", _config(ckpt), torch.float32)[key].isfinite().all()
