import json
import logging

import pytest

from turborank.config import JinaBertConfig
from turborank.testing import make_config


def _write(tmp_path, raw) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw) if not isinstance(raw, str) else raw)
    return path


def test_turbo_config_parses():
    cfg = JinaBertConfig.from_dict(make_config("turbo"))
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim) == (384, 6, 12, 32)
    assert cfg.num_labels == 1  # absent from the file; the checkpoint's classifier has one output
    assert cfg.glu_activation == "gelu"


@pytest.mark.parametrize(
    "auto_map,scheme",
    [("local", "jina-reranker-v1"), ("public", "standard"), (None, "standard")],
)
def test_scheme_from_auto_map(auto_map, scheme):
    assert JinaBertConfig.from_dict(make_config("turbo", auto_map=auto_map)).alibi_scheme == scheme


@pytest.mark.parametrize(
    "repo,scheme",
    [
        ("jinaai/jina-reranker-v1-turbo-en", "jina-reranker-v1"),
        ("jinaai/jina-reranker-v1-tiny-en", "jina-reranker-v1"),
        ("someone/another-bert", "standard"),
    ],
)
def test_a_reranker_saved_again_keeps_the_reranker_repos_slopes(repo, scheme):
    """transformers saves a model loaded from the hub with its auto_map prefixed by the repo: a
    fine-tuned turbo copy read as unrecognised remote code and ran with the standard slopes."""
    auto_map = {
        "AutoConfig": f"{repo}--configuration_bert.JinaBertConfig",
        "AutoModelForSequenceClassification": f"{repo}--modeling_bert.JinaBertForSequenceClassification",
    }
    raw = {**make_config("turbo"), "auto_map": auto_map}
    assert JinaBertConfig.from_dict(raw).alibi_scheme == scheme


def test_scheme_override_wins():
    cfg = JinaBertConfig.from_dict(make_config("turbo", auto_map="local"), slopes="standard")
    assert cfg.alibi_scheme == "standard" and cfg.alibi_scheme_reason == "set by the caller"


def test_scheme_logged_for_twelve_heads(caplog):
    with caplog.at_level(logging.INFO, logger="turborank"):
        JinaBertConfig.from_dict(make_config("turbo", auto_map="local"))
    assert "'jina-reranker-v1' scheme for 12 heads" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="turborank"):
        JinaBertConfig.from_dict(make_config("turbo", num_attention_heads=8))
    assert "scheme" not in caplog.text  # power of two: both schemes agree, nothing to say


def test_unknown_auto_map_warns(caplog):
    raw = make_config("turbo", auto_map=None)
    with caplog.at_level(logging.WARNING, logger="turborank"):
        JinaBertConfig.from_dict(raw)
    assert "no auto_map" in caplog.text


@pytest.mark.parametrize(
    "change,message",
    [
        ({"position_embedding_type": "absolute"}, "'position_embedding_type' is 'absolute'"),
        ({"feed_forward_type": "original"}, "'feed_forward_type' is 'original'"),
        ({"feed_forward_type": ["geglu"]}, "'feed_forward_type' is \\['geglu'\\]"),  # not a TypeError
        ({"hidden_size": 380}, "'hidden_size' \\(380\\) is not divisible by 'num_attention_heads' \\(12\\)"),
        ({"num_hidden_layers": 0}, "'num_hidden_layers' must be a positive integer, got 0"),
        ({"vocab_size": "61056"}, "'vocab_size' must be a positive integer"),
        ({"num_labels": 2}, "'num_labels' \\(or the length of 'id2label'\\) is 2"),
        # A string was refused as "is 1", and true taken as one label.
        ({"num_labels": "1"}, "'num_labels' \\(or the length of 'id2label'\\) is '1'"),
        ({"num_labels": True}, "'num_labels' \\(or the length of 'id2label'\\) is True"),
        ({"id2label": {"0": "a", "1": "b"}}, "'num_labels' \\(or the length of 'id2label'\\) is 2"),
        ({"layer_norm_eps": -1}, "'layer_norm_eps' must be a float"),
    ],
)
def test_invalid_fields_name_field_and_file(tmp_path, change, message):
    path = _write(tmp_path, {**make_config("turbo"), **change})
    with pytest.raises(ValueError, match=message) as info:
        JinaBertConfig.from_file(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "field", ["hidden_size", "num_attention_heads", "position_embedding_type", "feed_forward_type"]
)
def test_missing_field(tmp_path, field):
    raw = make_config("turbo")
    del raw[field]
    with pytest.raises(ValueError, match=f"{field}") as info:
        JinaBertConfig.from_file(_write(tmp_path, raw))
    assert "config.json" in str(info.value)


def test_bad_json_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        JinaBertConfig.from_file(_write(tmp_path, "{not json"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        JinaBertConfig.from_file(tmp_path / "nope" / "config.json")


def test_bad_slopes_override():
    with pytest.raises(ValueError, match="slopes='alibi' is not one of"):
        JinaBertConfig.from_dict(make_config("turbo"), slopes="alibi")


@pytest.mark.parametrize(
    "field,value",
    [
        ("num_hidden_layers", 10**9),
        ("vocab_size", 10**12),
        ("hidden_size", 2**20),
        ("intermediate_size", 10**9),
        ("max_position_embeddings", 10**12),
        ("type_vocab_size", 10**6),
    ],
)
def test_absurd_sizes_refused_from_config_alone(tmp_path, field, value):
    raw = {**make_config("turbo"), field: value}
    if field == "hidden_size":
        raw["num_attention_heads"] = 8
    with pytest.raises(ValueError, match=f"'{field}' is {value:,}, over the limit of") as info:
        JinaBertConfig.from_file(_write(tmp_path, raw))
    assert "config.json" in str(info.value)


@pytest.mark.parametrize("pad", [61056, -1, "0", True])
def test_pad_token_id_must_be_an_id_of_the_vocabulary(pad):
    with pytest.raises(ValueError, match="'pad_token_id' must be an integer in \\[0, vocab_size=61056\\)"):
        JinaBertConfig.from_dict({**make_config("turbo"), "pad_token_id": pad})


def test_config_of_absurd_size_or_depth_is_refused(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(make_config("turbo")) + " " * (5 * 1024 * 1024))
    with pytest.raises(ValueError, match="over the 4,194,304 bytes such a file may have"):
        JinaBertConfig.from_file(path)
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        JinaBertConfig.from_file(path)
    path.write_text('{"vocab_size": ' + "9" * 5001 + "}")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        JinaBertConfig.from_file(path)
