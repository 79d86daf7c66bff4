"""turborank.CrossEncoder runs sentence-transformers user code unchanged except for the import."""

from __future__ import annotations

import os
import textwrap
import warnings

import numpy as np
import pytest
import torch

from turborank import CrossEncoder, Reranker

# A typical sentence-transformers script (the import line is the only change).
USER_SCRIPT = """
from sentence_transformers import CrossEncoder

model = CrossEncoder(MODEL, max_length=512)
query = "How many people live in Berlin?"
passages = [
    "Berlin had a population of 3,520,031 registered inhabitants in an area of 891.82 square kilometers.",
    "Berlin is well known for its museums.",
    "In 2014, the city state Berlin had 37,368 live births (+6.6%), a record number since 1991.",
]
scores = model.predict([(query, passage) for passage in passages])
best = passages[int(scores.argmax())]
ranks = model.rank(query, passages, return_documents=True, top_k=2)
one = model.predict((query, passages[0]))
logits = model.predict([[query, passages[1]]], activation_fn=torch.nn.Identity())
"""


# sentence-transformers' documented CrossEncoder calls (its usage pages, 2.x to 6.x): each one
# runs, with the import the only change.
DOCUMENTED_CALLS = """
import numpy as np
import torch
from sentence_transformers import CrossEncoder

model = CrossEncoder(MODEL, max_length=256, device="cpu", trust_remote_code=True)
query = "A man is eating pasta."
corpus = ["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse."]
ranks = model.rank(query, corpus)
lines = [f"{rank['score']:.2f}\t{corpus[rank['corpus_id']]}" for rank in ranks]
pairs = [[query, document] for document in corpus]
scores = model.predict(pairs)
scores_v6 = model.predict(inputs=pairs)
scores_v2 = model.predict(sentences=pairs, batch_size=2, show_progress_bar=False)
scores_array = model.predict(np.array(pairs))
tensors = model.predict(pairs, convert_to_numpy=False)
tensor = model.predict(pairs, convert_to_tensor=True)
logits = model.predict(pairs, activation_fn=torch.nn.Identity())
top = model.rank(query, corpus, top_k=1, return_documents=True, batch_size=8)
length = model.max_seq_length
model.max_seq_length = 128
length_after = model.get_max_seq_length()
model.eval()
module = isinstance(model, torch.nn.Module)
n_parameters = sum(p.numel() for p in model.parameters())
bf16 = CrossEncoder(MODEL, device="cpu", model_kwargs={"torch_dtype": torch.bfloat16})
bf16_scores = bf16.predict(pairs)
"""


def test_sentence_transformers_documented_calls_run_unchanged(small_ckpt):
    source = DOCUMENTED_CALLS.replace("from sentence_transformers import", "from turborank import")
    ns = {"MODEL": str(small_ckpt)}
    exec(compile(source, "documented_calls.py", "exec"), ns)
    scores = ns["scores"]
    # The same scores, up to batch composition (scores_v2 runs batches of 2): GEMMs of other row
    # counts may accumulate in another order (seen on an AVX2 CPU), as test_batch_invariance allows.
    for name in ("scores_v6", "scores_v2", "scores_array"):
        np.testing.assert_allclose(ns[name], scores, rtol=0, atol=1e-6)
    assert [r["corpus_id"] for r in ns["ranks"]] == list(np.argsort(-scores, kind="stable"))
    assert len(ns["lines"]) == 3 and ns["top"][0]["text"] == ns["corpus"][int(np.argmax(scores))]
    assert [float(t) for t in ns["tensors"]] == pytest.approx(scores.tolist(), abs=0)
    assert ns["tensor"].shape == (3,)
    np.testing.assert_allclose(1 / (1 + np.exp(-np.asarray(ns["logits"]))), scores, rtol=1e-5, atol=1e-6)
    assert ns["length"] == 256 and ns["length_after"] == 128
    assert ns["module"] and ns["n_parameters"] > 0
    assert ns["bf16"].reranker.dtype == torch.bfloat16
    np.testing.assert_allclose(ns["bf16_scores"], scores, atol=0.05)  # bf16 against fp32: close, not equal


def _run_user_script(model_path) -> dict:
    source = USER_SCRIPT.replace("from sentence_transformers import", "from turborank import")
    namespace = {"MODEL": str(model_path), "torch": torch}
    exec(compile(textwrap.dedent(source), "user_script.py", "exec"), namespace)
    return namespace


def test_sentence_transformers_script_runs_unchanged(small_ckpt):
    ns = _run_user_script(small_ckpt)
    scores, passages = ns["scores"], ns["passages"]
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float32 and scores.shape == (3,)
    assert ns["best"] == passages[int(np.argmax(scores))]
    reference = Reranker.from_pretrained(small_ckpt, device="cpu")
    want = reference.predict([(ns["query"], p) for p in passages], max_length=512)
    np.testing.assert_allclose(scores, want, rtol=1e-6, atol=1e-7)
    order = sorted(range(3), key=lambda i: -want[i])[:2]
    assert [r["corpus_id"] for r in ns["ranks"]] == order
    assert [r["text"] for r in ns["ranks"]] == [passages[i] for i in order]
    assert isinstance(ns["one"], np.float32) and np.isclose(ns["one"], scores[0], rtol=1e-6)
    logit = reference.predict([(ns["query"], passages[1])], activation=False, max_length=512)[0]
    assert np.isclose(ns["logits"][0], logit, rtol=1e-6)


@pytest.fixture(scope="module")
def encoder(small_ckpt):
    return CrossEncoder(str(small_ckpt), device="cpu")


def test_output_types(encoder):
    pairs = [("q", "a document"), ("q", "another one")]
    tensor = encoder.predict(pairs, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (2,)
    # Neither: a list of 0-d tensors, as sentence-transformers returns.
    plain = encoder.predict(pairs, convert_to_numpy=False)
    assert isinstance(plain, list) and all(isinstance(x, torch.Tensor) and x.dim() == 0 for x in plain)
    assert torch.equal(torch.stack(plain), tensor)
    np.testing.assert_allclose(encoder.predict(pairs), tensor.numpy(), rtol=0, atol=0)
    assert encoder.predict([]).shape == (0,)
    assert encoder.predict(pairs, apply_softmax=True).shape == (2,)  # one label: unchanged, as ST


def test_rank_top_k_zero_and_bad_top_k(encoder):
    assert encoder.rank("q", ["a", "b"], top_k=0) == []
    assert [r["corpus_id"] for r in encoder.rank("q", ["a", "b"], top_k=5)] in ([0, 1], [1, 0])
    for bad in (-1, True, 1.0):
        with pytest.raises(ValueError, match="top_k must be a non-negative integer or None"):
            encoder.rank("q", ["a"], top_k=bad)
    with pytest.raises(ValueError, match="documents must be a list of strings"):
        encoder.rank("q", "one string")


def test_numpy_and_torch_integers_are_integers(small_ckpt, encoder):
    """sentence-transformers takes them (a top_k from an array, a length from a config)."""
    assert len(encoder.rank("q", ["a", "b", "c"], top_k=np.int64(2))) == 2
    assert len(encoder.predict([("q", "a"), ("q", "b")], batch_size=np.int32(1))) == 2
    short = CrossEncoder(str(small_ckpt), device="cpu", max_length=np.int64(16))
    assert short.max_seq_length == 16 and type(short.max_seq_length) is int
    assert (
        len(
            encoder.reranker.encode([("q", "word " * 40)], max_length=torch.tensor(16), warn=False)[
                0
            ].input_ids[0]
        )
        == 16
    )
    for bad in (np.bool_(True), np.float64(2.0), torch.tensor(True)):
        with pytest.raises(ValueError, match="top_k must be"):
            encoder.rank("q", ["a"], top_k=bad)


def test_older_names_of_the_activation_are_the_activation(small_ckpt, encoder):
    """sentence-transformers 2.x/3.x: default_activation_function (constructor) and activation_fct
    (predict, rank) are what activation_fn is now."""
    logits = encoder.predict([("q", "a"), ("q", "b")], activation_fn=torch.nn.Identity())
    old = CrossEncoder(str(small_ckpt), device="cpu", default_activation_function=torch.nn.Identity())
    assert np.allclose(old.predict([("q", "a"), ("q", "b")]), logits)
    assert np.allclose(encoder.predict([("q", "a"), ("q", "b")], activation_fct=torch.nn.Identity()), logits)
    ranked = encoder.rank("q", ["a", "b"], activation_fct=torch.nn.Identity())
    assert sorted(r["score"] for r in ranked) == pytest.approx(sorted(logits.tolist()), abs=1e-6)


def test_the_activation_sees_each_pairs_logit_on_its_own(encoder):
    """Applied to [n, 1] logits as sentence-transformers does: a softmax over the last dimension
    gives 1 for every pair, not a distribution over the pairs of the call."""
    scores = encoder.predict([("q", "a"), ("q", "b c")], activation_fn=torch.nn.Softmax(dim=-1))
    assert scores.tolist() == [1.0, 1.0]
    assert encoder.predict([("q", "a")], activation_fn=torch.nn.Softmax(dim=1)).tolist() == [1.0]


def test_a_list_of_two_character_strings_is_not_read_as_pairs(encoder):
    with pytest.raises(ValueError, match="pair 0 is not a \\(query, document\\) pair"):
        encoder.predict(["ab", "cd", "ef"])


def test_a_dict_or_set_item_is_not_read_as_a_pair(encoder):
    """tuple() of a dataset row {"query": ..., "document": ...} is its keys: every row scored as
    ("query", "document"); a set's items come in hash order, query and document swapped in some
    processes. sentence-transformers refuses both; lists, tuples and NumPy rows are pairs."""
    row = {"query": "what is alibi", "document": "a linear bias"}
    for item in (row, {"what is alibi", "a linear bias"}, row.keys()):
        with pytest.raises(ValueError, match="pair 0 is not a \\(query, document\\) pair"):
            encoder.predict([item])
    pairs = [("what is alibi", "a linear bias"), ("dog food", "pasta")]
    want = encoder.predict(pairs)
    np.testing.assert_array_equal(encoder.predict([list(p) for p in pairs]), want)
    np.testing.assert_array_equal(encoder.predict([np.array(p) for p in pairs]), want)
    np.testing.assert_array_equal(encoder.predict(np.array(pairs)), want)


def test_sentence_transformers_only_keywords_warn_misspelt_ones_raise(small_ckpt, encoder):
    with pytest.warns(UserWarning, match="ignoring config_kwargs, model_card_data"):
        CrossEncoder(str(small_ckpt), device="cpu", config_kwargs={}, model_card_data=None)
    with pytest.warns(UserWarning, match="ignoring num_workers"):
        encoder.predict([("q", "d")], num_workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.predict([("q", "d")])  # nothing to warn about
        # Jina's model card passes it; turborank runs no checkpoint code, so nothing is ignored.
        CrossEncoder(str(small_ckpt), device="cpu", trust_remote_code=True)
    # A misspelling is a TypeError naming it, as for any Python function (it only warned).
    with pytest.raises(TypeError, match="'max_lenght' \\(did you mean 'max_length'\\?\\)"):
        CrossEncoder(str(small_ckpt), device="cpu", max_lenght=128)
    with pytest.raises(TypeError, match="'batchsize' \\(did you mean 'batch_size'\\?\\)"):
        encoder.predict([("q", "d")], batchsize=8)
    with pytest.raises(TypeError, match="'topk'"):
        encoder.rank("q", ["d"], topk=1)
    with pytest.raises(NotImplementedError, match="prompts are not supported"):
        encoder.predict([("q", "d")], prompt="Represent this: ")
    # sentence-transformers 3.x's and today's constructor keywords: no effect, or a refused feature.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CrossEncoder(str(small_ckpt), device="cpu", prompts={}, default_prompt_name=None)  # ask nothing
        # Hub and tokenizer options are used (a local directory needs no cache, {} sets nothing).
        CrossEncoder(str(small_ckpt), device="cpu", cache_dir="/nowhere", processor_kwargs={}, token=None)
    with pytest.raises(NotImplementedError, match="prompts are not supported"):
        CrossEncoder(str(small_ckpt), device="cpu", prompts={"query": "query: "})
    with pytest.raises(ValueError, match="num_labels=2"):
        CrossEncoder(str(small_ckpt), device="cpu", num_labels=2)
    with pytest.raises(ValueError, match="backend='onnx'"):
        CrossEncoder(str(small_ckpt), device="cpu", backend="onnx")


def test_to_moves_the_model_and_chooses_ops_again(small_ckpt):
    encoder = CrossEncoder(str(small_ckpt), device="cpu")
    assert encoder.to("cpu") is encoder and encoder.device.type == "cpu"
    assert encoder.reranker.describe()["backends"]["alibi_attention"] == "torch"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            encoder.to("cuda")


@pytest.mark.skipif(
    not os.environ.get("TURBORANK_REFERENCE_MODEL"),
    reason="needs sentence-transformers with transformers 4.4x and a snapshot holding its modeling_bert.py "
    "(TURBORANK_REFERENCE_MODEL)",
)
def test_same_scores_as_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    path = os.environ["TURBORANK_REFERENCE_MODEL"]
    pairs = [
        ("organic skincare", "natural organic skincare for sensitive skin"),
        ("organic skincare", "tech"),
    ]
    theirs = st.CrossEncoder(path, trust_remote_code=True, num_labels=1, device="cpu").predict(pairs)
    ours = CrossEncoder(path, device="cpu", dtype="float32").predict(pairs)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-5)


def test_inputs_by_either_name_or_as_an_array(encoder):
    pairs = [("q", "a document"), ("q", "another one")]
    want = encoder.predict(pairs)
    np.testing.assert_array_equal(encoder.predict(inputs=pairs), want)
    np.testing.assert_array_equal(encoder.predict(sentences=pairs), want)
    np.testing.assert_array_equal(encoder.predict(np.array(pairs)), want)
    with pytest.raises(TypeError, match="takes its pairs once"):
        encoder.predict(pairs, sentences=pairs)


def test_max_seq_length_reads_and_sets_the_length_predict_uses(small_ckpt):
    encoder = CrossEncoder(str(small_ckpt), device="cpu")
    assert encoder.max_seq_length == encoder.get_max_seq_length() == encoder.reranker.max_length
    long_pair = ("q", "word " * 400)
    full = encoder.predict(long_pair)
    encoder.max_seq_length = 16
    assert encoder.max_seq_length == 16 and encoder.get_max_seq_length() == 16
    with pytest.warns(UserWarning, match="truncated"):
        cut = encoder.predict(long_pair)
    assert cut != full  # the setting took effect (it used to be silently ignored)
    with pytest.raises(ValueError, match="max_length"):
        encoder.max_seq_length = 2


def test_a_dtype_asked_through_model_kwargs_is_the_dtype_it_runs_in(small_ckpt):
    encoder = CrossEncoder(str(small_ckpt), device="cpu", model_kwargs={"torch_dtype": torch.bfloat16})
    assert encoder.reranker.dtype == torch.bfloat16  # it ran in float32, silently
    with pytest.warns(UserWarning, match="ignoring model_kwargs"):
        CrossEncoder(str(small_ckpt), device="cpu", model_kwargs={"attn_implementation": "eager"})
    with pytest.raises(ValueError, match="disagree"):
        CrossEncoder(str(small_ckpt), device="cpu", dtype="float32", model_kwargs={"torch_dtype": "bfloat16"})
    # The same dtype by name and as a torch dtype agrees; transformers' newer key is read too.
    same = CrossEncoder(
        str(small_ckpt), device="cpu", dtype="bfloat16", model_kwargs={"torch_dtype": torch.bfloat16}
    )
    assert same.reranker.dtype == torch.bfloat16
    assert (
        CrossEncoder(str(small_ckpt), device="cpu", model_kwargs={"dtype": "bfloat16"}).reranker.dtype
        == torch.bfloat16
    )
    with pytest.raises(ValueError, match="model_kwargs dtype=torch.float16 disagree"):
        CrossEncoder(
            str(small_ckpt),
            device="cpu",
            model_kwargs={"torch_dtype": torch.bfloat16, "dtype": torch.float16},
        )


def test_it_is_a_torch_module_whose_parameters_are_the_models(encoder):
    assert isinstance(encoder, torch.nn.Module)
    assert encoder.eval() is encoder and not encoder.training
    names = [name for name, _ in encoder.named_parameters()]
    assert names and all(name.startswith("encoder.") for name in names)
    assert sum(p.numel() for p in encoder.parameters()) == sum(
        p.numel() for p in encoder.reranker.module.parameters()
    )
    assert encoder.cpu() is encoder and encoder.to("cpu", non_blocking=True) is encoder
    with pytest.raises(NotImplementedError, match="predict"):
        encoder([("q", "d")])
    for cast in ("float", "bfloat16", "double"):
        with pytest.raises(NotImplementedError, match="dtype|run in"):
            getattr(encoder, cast)()


def test_what_it_lacks_is_a_clear_error_naming_the_feature(encoder):
    assert encoder.eval() is encoder
    with pytest.raises(
        NotImplementedError, match=r"CrossEncoder.half\(\) is a sentence-transformers feature"
    ):
        encoder.half()
    with pytest.raises(NotImplementedError, match="dtype is chosen at load"):
        encoder.to(torch.float16)
    for name, hint in (("tokenizer", "tokenizer.json"), ("model", ".reranker.module"), ("fit", "training")):
        with pytest.raises(AttributeError, match=hint):
            getattr(encoder, name)
    with pytest.raises(AttributeError, match="no attribute 'frobnicate'"):
        encoder.frobnicate  # noqa: B018


def test_hub_options_reach_the_download(small_ckpt, monkeypatch):
    """cache_folder, local_files_only and token were dropped with a "no effect" warning: a model in
    the user's own cache was not found, and a private fine-tune could not be fetched."""
    import huggingface_hub

    asked = {}

    def snapshot_download(repo_id, **options):
        asked.update(options, repo_id=repo_id)
        return str(small_ckpt)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    CrossEncoder("acme/private-ft", device="cpu", cache_folder="/models", local_files_only=True, token="hf_x")
    assert asked["repo_id"] == "acme/private-ft"
    assert (asked["cache_dir"], asked["local_files_only"], asked["token"]) == ("/models", True, "hf_x")
    asked.clear()
    CrossEncoder("acme/private-ft", device="cpu", cache_dir="/c", use_auth_token=True)
    assert (asked["cache_dir"], asked["token"]) == ("/c", True) and "local_files_only" not in asked


def test_tokenizer_options_set_the_length_or_are_refused(small_ckpt):
    """sentence-transformers cuts pairs at tokenizer_kwargs' model_max_length (processor_kwargs in
    5.x); it was dropped with a "no effect" warning, and long documents scored differently."""
    assert (
        CrossEncoder(str(small_ckpt), device="cpu", tokenizer_kwargs={"model_max_length": 32}).max_length
        == 32
    )
    assert (
        CrossEncoder(str(small_ckpt), device="cpu", processor_kwargs={"model_max_length": 40}).max_length
        == 40
    )
    both = CrossEncoder(
        str(small_ckpt), device="cpu", max_length=64, tokenizer_kwargs={"model_max_length": 32}
    )
    assert both.max_length == 64  # max_length wins, as in sentence-transformers
    with pytest.raises(NotImplementedError, match="truncation_side"):
        CrossEncoder(str(small_ckpt), device="cpu", tokenizer_kwargs={"truncation_side": "left"})
    with pytest.raises(ValueError, match="tokenizer_kwargs \\['do_lower_case'\\]"):
        CrossEncoder(str(small_ckpt), device="cpu", tokenizer_args={"do_lower_case": False, "use_fast": True})
    decode_only = {"clean_up_tokenization_spaces": False, "max_length": 128}  # no token changes
    assert CrossEncoder(str(small_ckpt), device="cpu", tokenizer_kwargs=decode_only).max_length == 8192


@pytest.mark.parametrize(
    "saved",
    [
        {"sentence_transformers": {"activation_fn": "torch.nn.modules.linear.Identity"}},
        {"sbert_ce_default_activation_function": "torch.nn.modules.linear.Identity"},
    ],
)
def test_the_activation_saved_in_config_json_is_the_default(small_ckpt, tmp_path, saved):
    """A reranker saved with activation_fn=Identity predicts logits in sentence-transformers; here
    it was always Sigmoid."""
    import json
    import shutil

    target = shutil.copytree(small_ckpt, tmp_path / "c")
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, **saved}))
    pairs = [("what is alibi", "a linear bias"), ("q", "d")]
    logits = Reranker.from_pretrained(target, device="cpu").predict(pairs, activation=False)
    assert CrossEncoder(str(target), device="cpu").predict(pairs).tolist() == pytest.approx(logits, abs=1e-6)
    (target / "config.json").write_text(
        json.dumps({**config, "sbert_ce_default_activation_function": "evil.Fn"})
    )
    with pytest.warns(UserWarning, match="activation 'evil.Fn' is not torch's; applying Sigmoid"):
        assert isinstance(CrossEncoder(str(target), device="cpu").activation_fn, torch.nn.Sigmoid)


def test_older_names_of_the_model_and_its_options(small_ckpt):
    """model_name (2.x/3.x) was refused; a dtype asked through automodel_args (model_kwargs before
    4.x) was dropped and the model ran in float32."""
    encoder = CrossEncoder(
        model_name=str(small_ckpt), device="cpu", automodel_args={"torch_dtype": torch.bfloat16}
    )
    assert encoder.reranker.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="model_name \\(its older name\\) given both"):
        CrossEncoder(str(small_ckpt), model_name=str(small_ckpt), device="cpu")
    assert (
        CrossEncoder(str(small_ckpt), device="cpu", slopes="standard").reranker.config.alibi_scheme
        == "standard"
    )


def test_rank_scores_are_typed_as_sentence_transformers_gives_them(encoder):
    """Python floats came back, so r["score"].item() (Jina's model card) failed; a NumPy array of
    documents was refused."""
    documents = np.array(["a linear bias", "a recipe", "alibi slopes"])
    ranked = encoder.rank("what is alibi", documents, top_k=2)
    assert [type(r["score"]) for r in ranked] == [np.float32, np.float32]
    tensors = encoder.rank("what is alibi", list(documents), convert_to_tensor=True)
    assert all(isinstance(r["score"], torch.Tensor) and r["score"].dim() == 0 for r in tensors)
    assert [r["corpus_id"] for r in tensors][:2] == [r["corpus_id"] for r in ranked]
    assert [r["score"].item() for r in ranked] == [r["score"].item() for r in tensors][:2]
