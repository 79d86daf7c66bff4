import concurrent.futures
import contextlib
import itertools
import json
import random
import shutil
import threading
import warnings

import pytest
from tokenizers import Tokenizer

from tests.helpers import sample_pairs
from turborank.testing import random_text
from turborank.text_clipping import CLIP_CHARS_PER_TOKEN, CLIP_MAX_CHARS_PER_TOKEN, UncuttableTextError
from turborank.tokenization import PairTokenizer, TruncationWarning


@pytest.fixture(scope="module")
def tok(small_ckpt):
    return PairTokenizer.from_directory(small_ckpt, 8192)


def test_pair_template_from_post_processor(tok, small_ckpt):
    enc = tok.encode_pairs([("a query", "a document")])
    ids = enc.input_ids[0]
    vocab = json.loads((small_ckpt / "tokenizer.json").read_text())["model"]["vocab"]
    s, e = vocab["<s>"], vocab["</s>"]
    assert ids[0] == s and ids[-1] == e and ids.count(e) == 3
    assert enc.token_type_ids is None  # RoBERTa-style: the model uses zeros, like the reference
    assert tok.num_special_tokens == 4


def test_matches_transformers_tokenizer(small_ckpt, tok):
    """HF's pair encoding and truncation on the same tokenizer.json. (PreTrainedTokenizerFast, not
    AutoTokenizer: transformers 5 rebuilds a RobertaTokenizer from vocab/merges and drops the
    normalizer of tokenizer.json; the 4.4x releases the remote code needs load the file as is.)"""
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(small_ckpt / "tokenizer.json"))
    pairs = sample_pairs(20, seed=3, max_words=300)
    for max_length in (8192, 64):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TruncationWarning)
            ours = tok.encode_pairs(pairs, max_length=max_length).input_ids
        theirs = hf([q for q, _ in pairs], [d for _, d in pairs], truncation=True, max_length=max_length)
        assert ours == theirs["input_ids"]


def test_truncation_warns_with_count(tok):
    pairs = [("q", "word " * 200), ("q", "short"), ("q", "word " * 300)]
    with pytest.warns(TruncationWarning, match="2 of 3 pairs were longer than max_length=64"):
        enc = tok.encode_pairs(pairs, max_length=64)
    assert enc.truncated == 2
    assert max(enc.lengths) == 64


def test_no_warning_when_nothing_is_cut(tok):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tok.encode_pairs([("q", "short doc")], max_length=64).truncated == 0


def test_only_second_keeps_the_query_whole(tok):
    query = "alpha beta gamma delta"  # about 20 tokens: the pair budget is 40
    with pytest.warns(TruncationWarning):
        longest = tok.encode_pairs([(query, "word " * 500)], max_length=40, truncation="longest_first")
    with pytest.warns(TruncationWarning):
        only_second = tok.encode_pairs([(query, "word " * 500)], max_length=40, truncation="only_second")
    full_query = tok.encode_pairs([(query, "")]).input_ids[0][:-2]  # <s> query </s>
    assert only_second.input_ids[0][: len(full_query)] == full_query
    assert longest.input_ids[0][: len(full_query)] != full_query
    assert len(only_second.input_ids[0]) == len(longest.input_ids[0]) == 40


def test_only_second_query_too_long_is_explained(tok):
    with pytest.raises(
        ValueError, match="query of \\d+ tokens does not fit max_length=16 with truncation='only_second'"
    ):
        tok.encode_pairs([("long query " * 20, "doc")], max_length=16, truncation="only_second")
    # Chunked, the query is whole in every window whatever the truncation: the advice differs.
    with pytest.raises(
        ValueError, match="leaves no room for the document in windows of max_length=16"
    ) as info:
        tok.encode_chunked([("long query " * 20, "doc")], max_length=16)
    assert "truncation" not in str(info.value)


def test_a_chunked_query_longer_than_the_model_is_counted_whole(small_ckpt):
    """The count came from a tokenizer truncating at the model's maximum: a 200-token query was
    reported as 64 tokens, with advice to raise a max_length already at its limit."""

    short = PairTokenizer.from_directory(small_ckpt, 64)
    query = "long query " * 100
    plain = Tokenizer.from_file(str(small_ckpt / "tokenizer.json"))
    tokens = len(plain.encode(query, add_special_tokens=False))
    assert tokens > 64
    with pytest.raises(ValueError, match=f"query of {tokens} tokens .* shorten the query$"):
        short.encode_chunked([(query, "doc")])
    with pytest.raises(ValueError, match="shorten the query$"):
        short.encode_chunked([(query, "doc")], max_length=16)
    with pytest.raises(ValueError, match="shorten the query or raise max_length \\(at most 64\\)"):
        short.encode_chunked([("long query " * 3, "doc")], max_length=16)


def _whole(tok: PairTokenizer, max_length: int, truncation: str, direction: str):
    """A copy of ``tok``'s tokenizer of the test's own, truncating so: the reference."""
    tokenizer = tok._copies.copy()
    tokenizer.enable_truncation(max_length, strategy=truncation, direction=direction)
    return tokenizer


def test_settings_cycling_builds_no_copies(small_ckpt, monkeypatch):
    """A copy per setting, kept for the settings used last, was rebuilt (the tokenizer.json parsed
    again: ~0.1 s holding the GIL for a 60k-token BPE) whenever a setting came back after it was
    dropped: a server client varying vLLM's truncate_prompt_tokens over more values than were kept
    made every request pay that. Copies are lent now: setting one's truncation is a microsecond."""
    from turborank import tokenizer_copies

    tok = PairTokenizer.from_directory(small_ckpt, 8192)
    pair = [("a query", random_text(random.Random(2), 200))]
    want = {n: tok.encode_pairs(pair, max_length=n, warn=False).input_ids for n in (16, 17)}
    built = []
    parse = Tokenizer.from_str
    monkeypatch.setattr(Tokenizer, "from_str", staticmethod(lambda text: built.append(1) or parse(text)))
    for _ in range(3):
        for max_length in range(20, 120):
            ids = tok.encode_pairs(pair, max_length=max_length, warn=False).input_ids[0]
            assert len(ids) == max_length
    assert built == []
    assert tok._copies.idle() <= tokenizer_copies.IDLE_COPIES_KEPT
    for n, ids in want.items():  # set again when asked again: the same ids
        assert tok.encode_pairs(pair, max_length=n, warn=False).input_ids == ids


def test_threads_with_different_settings_each_get_their_own(small_ckpt):
    """Threads tokenising at once with different limits: each pair cut to its own call's limit."""
    tok = PairTokenizer.from_directory(small_ckpt, 8192)
    rng = random.Random(3)
    pairs = [[("a query", random_text(rng, 300))] * 8 for _ in range(4)]
    want = {
        (i, n): tok.encode_pairs(pairs[i], max_length=n, warn=False).input_ids
        for i in range(4)
        for n in (24, 31, 50, 77)
    }
    barrier = threading.Barrier(4)

    def work(i: int) -> list[bool]:
        barrier.wait()
        return [
            tok.encode_pairs(pairs[i], max_length=n, warn=False).input_ids == want[i, n]
            for _ in range(30)
            for n in (24, 31, 50, 77)
        ]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(4)))
    assert all(all(ok) for ok in results)
    assert tok._copies.idle() <= 4


def test_failing_calls_build_no_copies_and_give_theirs_back(small_ckpt, monkeypatch):
    """A query too long for only_second is a client mistake a server meets per request: naming it
    parsed the tokenizer.json again on every such request. Now the failed call gives its copy back
    and the query is counted on the shared plain copy."""
    tok = PairTokenizer.from_directory(small_ckpt, 8192)
    too_long = [("long query " * 50, "doc")]
    with pytest.raises(ValueError, match="shorten the query"):
        tok.encode_pairs(too_long, max_length=16, truncation="only_second")
    built = []
    parse = Tokenizer.from_str
    monkeypatch.setattr(Tokenizer, "from_str", staticmethod(lambda text: built.append(1) or parse(text)))
    for _ in range(20):
        with pytest.raises(ValueError, match="shorten the query"):
            tok.encode_pairs(too_long, max_length=16, truncation="only_second")
    assert built == []
    assert tok._copies.idle() <= 2


@pytest.mark.parametrize(
    "max_length,message",
    [(9000, "outside the model's range \\(5..8192\\)"), (4, "outside"), ("64", "must be an integer")],
)
def test_bad_max_length(tok, max_length, message):
    with pytest.raises(ValueError, match=message):
        tok.encode_pairs([("q", "d")], max_length=max_length)


def test_bad_truncation(tok):
    with pytest.raises(ValueError, match="truncation='left'"):
        tok.encode_pairs([("q", "d")], truncation="left")


def test_model_max_length_from_tokenizer_config(small_ckpt, tmp_path):
    target = shutil.copytree(small_ckpt, tmp_path / "c")
    cfg = json.loads((target / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = 1024
    (target / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert PairTokenizer.from_directory(target, 8192).model_max_length == 1024
    cfg["model_max_length"] = int(1e30)  # HF's "no limit" sentinel
    (target / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert PairTokenizer.from_directory(target, 8192).model_max_length == 8192


def test_tokenizer_errors(small_ckpt, tmp_path):
    target = shutil.copytree(small_ckpt, tmp_path / "c")
    (target / "tokenizer_config.json").write_text("{oops")
    with pytest.raises(ValueError, match="tokenizer_config.json: not valid JSON"):
        PairTokenizer.from_directory(target, 8192)
    (target / "tokenizer_config.json").unlink()
    (target / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="tokenizer.json: not a valid tokenizers file"):
        PairTokenizer.from_directory(target, 8192)
    (target / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        PairTokenizer.from_directory(target, 8192)


def _edit_tokenizer(small_ckpt, tmp_path, edit):
    target = shutil.copytree(small_ckpt, tmp_path / "c")
    raw = json.loads((target / "tokenizer.json").read_text())
    edit(raw)
    (target / "tokenizer.json").write_text(json.dumps(raw))
    return target


def test_a_pair_template_naming_a_token_it_does_not_define_is_refused_at_load(small_ckpt, tmp_path):
    """tokenizers loads such a file and panics on the first pair (a BaseException, past every
    ``except Exception``): refused at load, naming the file."""

    def undefined_separator(raw):
        special = {"SpecialToken": {"id": "<s>", "type_id": 0}}
        raw["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [special, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                special,
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "</s>", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 0}},
            ],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}},
        }

    target = _edit_tokenizer(small_ckpt, tmp_path, undefined_separator)
    with pytest.raises(ValueError, match="tokenizer.json: the tokenizer cannot encode a pair"):
        PairTokenizer.from_directory(target, 8192)


def test_a_pair_template_id_past_the_embedding_table_is_refused_at_load(small_ckpt, tmp_path):
    from turborank import Reranker

    def far_separator(raw):
        raw["post_processor"]["sep"] = ["</s>", 5000]

    target = _edit_tokenizer(small_ckpt, tmp_path, far_separator)
    with pytest.raises(ValueError, match="token ids reach 5000, but .*config.json has vocab_size"):
        Reranker.from_pretrained(target, device="cpu")


def test_missing_post_processor_rejected(small_ckpt, tmp_path):
    target = shutil.copytree(small_ckpt, tmp_path / "c")
    raw = json.loads((target / "tokenizer.json").read_text())
    raw["post_processor"] = None
    (target / "tokenizer.json").write_text(json.dumps(raw))
    (target / "tokenizer_config.json").unlink()
    with pytest.raises(ValueError, match="no post-processor adding special tokens"):
        PairTokenizer.from_directory(target, 8192)


def test_cls_token_mismatch_rejected(small_ckpt, tmp_path):
    target = shutil.copytree(small_ckpt, tmp_path / "c")
    cfg = json.loads((target / "tokenizer_config.json").read_text())
    cfg["cls_token"] = "<mask>"
    (target / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="starts with id \\[0\\], not the '<mask>' token"):
        PairTokenizer.from_directory(target, 8192)


def test_chunked_windows_cover_the_document_with_overlap(tok):
    query, doc = "a query here", " ".join(f"w{i}" for i in range(80))
    windows, owners = tok.encode_chunked([(query, doc), ("q2", "short")], max_length=40, overlap=8)
    assert owners.count(1) == 1 and owners[-1] == 1
    assert max(windows.lengths) == 40 and not any(windows.was_truncated)
    prefix = len(tok.encode_pairs([(query, "")]).input_ids[0]) - 1  # <s> query </s></s>
    pieces = [ids[prefix:-1] for ids, owner in zip(windows.input_ids, owners, strict=True) if owner == 0]
    for left, right in itertools.pairwise(pieces):
        assert left[-8:] == right[:8]
    rebuilt = pieces[0] + [t for piece in pieces[1:] for t in piece[8:]]
    whole = tok.encode_pairs([(query, doc)]).input_ids[0]
    assert rebuilt == whole[prefix:-1]


def test_an_overlap_wider_than_the_windows_room_matters_only_for_a_document_needing_two(tok):
    """A long query leaves a window few document tokens: chunking refused every pair of it, a
    short document's too, which fits one window whole (no overlap used) and scores as truncating
    would; only a document that needs a second window cannot have that overlap."""
    query = "a query here " * 3
    room = 40 - len(tok.encode_pairs([(query, "")]).input_ids[0])  # <s> query </s></s> </s>
    assert room > 1
    short, long = " ".join(["the"] * room), " ".join(["the"] * (room + 1))  # a token a word
    windows, owners = tok.encode_chunked([(query, short), ("q", long)], max_length=40, overlap=room)
    assert owners == [0, 1]
    assert windows.input_ids[0] == tok.encode_pairs([(query, short)], max_length=40).input_ids[0]
    assert len(windows.input_ids[0]) == 40
    with pytest.raises(ValueError, match=f"chunk overlap {room} must be smaller than the {room} document"):
        tok.encode_chunked([(query, short), (query, long)], max_length=40, overlap=room)
    # Wider than any window's document part (tokenizers refuses such a stride in its own words).
    with pytest.raises(ValueError, match="chunk overlap 35 must be smaller than 35, the most document"):
        tok.encode_chunked([("q", "d")], max_length=40, overlap=35)


def test_a_text_the_tokenizer_cannot_take_is_a_value_error_when_chunking_too(small_ckpt, tmp_path):
    """A WordLevel vocabulary without its unknown token takes the load probe ("a", "b") and raises
    a bare Exception on any other word: a one-line error when truncating, a traceback (the CLI's
    eval --long-doc chunk) when chunking."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    target = shutil.copytree(small_ckpt, tmp_path / "c")
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", "a", "b", "c"])}
    words = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    words.save(str(target / "tokenizer.json"))
    tok = PairTokenizer.from_directory(target, 64)
    assert tok.encode_chunked([("a", "b c")], overlap=8)[1] == [0]
    for call in (
        lambda: tok.encode_pairs([("hello", "c")]),
        lambda: tok.encode_chunked([("hello", "c")], overlap=8),
        lambda: tok.encode_chunked([("a", "hello")], overlap=8),
        lambda: tok.check_pairs([("hello", "c")], 64, "longest_first", "chunk", 8),
    ):
        with pytest.raises(ValueError, match="tokenisation failed: .*Missing \\[UNK\\] token"):
            call()


def test_every_chunked_window_carries_the_pair_templates_token_types(small_ckpt, tmp_path):
    """tokenizers applies a pair template's token types to the first window of an overflowing pair
    only; under a BERT template (document ``$B:1``) the later windows came back with type 0 on the
    document side and were scored as if the document were part of the query."""
    from tokenizers import Tokenizer, processors

    target = shutil.copytree(small_ckpt, tmp_path / "c")
    bert = Tokenizer.from_file(str(target / "tokenizer.json"))
    bert.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s>:0 $A:0 </s>:0 $B:1 </s>:1",
        special_tokens=[("<s>", bert.token_to_id("<s>")), ("</s>", bert.token_to_id("</s>"))],
    )
    bert.save(str(target / "tokenizer.json"))
    cfg = json.loads((target / "tokenizer_config.json").read_text())
    (target / "tokenizer_config.json").write_text(json.dumps({**cfg, "tokenizer_class": "BertTokenizer"}))
    tok = PairTokenizer.from_directory(target, 8192)
    assert tok.emits_token_type_ids
    query, doc = "what is the alibi bias", random_text(random.Random(9), 60)
    windows, owners = tok.encode_chunked([(query, doc), ("q", "short")], max_length=40, overlap=5)
    assert owners.count(0) >= 3
    head = bert.encode(query, "").ids[:-1]  # <s> query </s>
    for ids, types, owner in zip(windows.input_ids, windows.token_type_ids, owners, strict=True):
        if owner == 0:
            assert ids[: len(head)] == head and ids[-1] == bert.token_to_id("</s>")
            assert types == [0] * len(head) + [1] * (len(ids) - len(head))
    assert windows.token_type_ids[-1] == bert.encode("q", "short").type_ids


@pytest.mark.parametrize(
    "source,limit",
    [("config.json", 4), ("tokenizer_config.json", 3), ("tokenizer_config.json", 4)],
)
def test_length_limit_without_room_for_a_pair_is_refused(small_ckpt, tmp_path, source, limit):
    """A limit at or below the 4 special tokens would wrap around inside tokenizers and turn
    truncation off (a 36,005-token pair reached the model); it is refused at load, naming its file."""
    target = shutil.copytree(small_ckpt, tmp_path / "c")
    positions = limit if source == "config.json" else 8192
    if source == "tokenizer_config.json":
        cfg = json.loads((target / "tokenizer_config.json").read_text())
        cfg["model_max_length"] = limit
        (target / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=f"length limit {limit} .*{source}.* adds 4 special tokens") as info:
        PairTokenizer.from_directory(target, positions)
    assert "at least 5" in str(info.value)


def test_lone_surrogate_is_named(tok):
    with pytest.raises(
        ValueError, match="pair 1: the document contains a lone surrogate U\\+D800 at character 3"
    ):
        tok.encode_pairs([("q", "fine"), ("q", "abc\ud800def")])
    with pytest.raises(
        ValueError, match="pair 0: the query contains a lone surrogate U\\+DFFF at character 0"
    ):
        tok.encode_chunked([("\udfff", "d")], max_length=64)


def _mixed_text(rng: random.Random, chars: int) -> str:
    """Words, whitespace runs, accents and combining marks, CJK, long unbroken runs, special-token
    strings: the places where a cut could change how the text around it tokenises."""
    pieces = [
        lambda: random_text(rng, rng.randint(1, 40)),
        lambda: " " * rng.randint(1, 30),
        lambda: "e\u0301ü日本語" * rng.randint(1, 4),
        lambda: "x" * rng.randint(1, 300),
        lambda: "\n\t ",
        lambda: "<s></s>",
        lambda: "12345 " * 3,
    ]
    out: list[str] = []
    while sum(map(len, out)) < chars:
        out.append(rng.choice(pieces)())
    return "".join(out)[:chars]


@pytest.mark.parametrize("max_length", [33, 64, 65, 512])
def test_clipped_long_texts_truncate_to_the_same_ids(tok, max_length):
    """Over-long texts are tokenised from a part of them; the ids and truncation flags are those of
    the whole text (compared with tokenizers truncating the whole text). Odd and even budgets:
    with an odd one "longest_first" gives the spare token to the longer side."""
    rng = random.Random(max_length)
    compared = 0
    for _ in range(8):
        query = _mixed_text(rng, rng.choice([5, 60, 9 * max_length]))
        docs = [_mixed_text(rng, rng.randint(8 * max_length, 40 * max_length)) for _ in range(3)]
        pairs = [(query, doc) for doc in docs]
        assert tok.clip(pairs, max_length) != pairs  # the part, not the whole, is tokenised
        for truncation in ("longest_first", "only_second"):
            for direction in ("right", "left"):
                try:
                    whole = _whole(tok, max_length, truncation, direction).encode_batch(pairs)
                except Exception:
                    continue  # only_second with a query longer than the budget: an error either way
                got = tok.encode_pairs(pairs, max_length, truncation, direction, warn=False)
                assert got.input_ids == [enc.ids for enc in whole]
                assert got.was_truncated == [bool(enc.overflowing) for enc in whole]
                compared += 1
    assert compared >= 16


def _whole_then_truncated(tok, pairs, max_length, truncation, direction):
    return [enc.ids for enc in _whole(tok, max_length, truncation, direction).encode_batch(pairs)]


@pytest.mark.parametrize("direction", ["right", "left"])
def test_an_odd_budget_gives_the_spare_token_to_the_whole_pairs_longer_side(tok, direction):
    """max_length 33 leaves 29 tokens after the special ones; both sides are long, so each keeps 14
    and the spare one goes to the longer side. A document clipped to a part shorter than the query
    (or a query and a document clipped the other way round from their whole lengths) must not move
    the spare token."""
    max_length = 33
    assert (max_length - tok.num_special_tokens) % 2 == 1
    cases = [
        ("x" + " x" * 59, "question " * 200),  # query not clipped, longer than the clipped document
        ("x" + " x" * 1999, "question " * 1500),  # both clipped; the document's whole text is longer
        ("question " * 1500, "x" + " x" * 1999),  # and the other way round
    ]
    for query, document in cases:
        pairs = [(query, document)]
        assert max(len(query), len(document)) > CLIP_CHARS_PER_TOKEN * max_length  # clipping looks at it
        got = tok.encode_pairs(pairs, max_length, "longest_first", direction, warn=False, bounded=True)
        assert got.input_ids == _whole_then_truncated(tok, pairs, max_length, "longest_first", direction)


@pytest.mark.parametrize("truncation", ["longest_first", "only_second"])
def test_a_suffix_counts_its_words_from_where_it_reads_as_the_whole_text(tok, truncation):
    """Cut from the left, the kept part starts at "'t": read alone that is a contraction, then
    "itit...", where the whole text reads " '" then "titit...", which can tokenise differently to
    its end. The words of the suffix count only from where its reading meets the whole text's."""
    max_length = 32
    chars = CLIP_CHARS_PER_TOKEN * max_length
    plain = tok._copies.plain()
    for unit in ("is", "it", "an", "er", "in", "on", "at", "es", "re", "st", "or", "en"):
        document = "filler " * 60 + "'t" + unit * ((chars - 2) // 2)  # its last `chars` start at "'t"
        whole, suffix = (
            plain.encode(text, add_special_tokens=False).ids[-3:] for text in (document, document[-chars:])
        )
        if whole != suffix:  # this vocabulary's merges make the two readings end differently
            break
    else:
        pytest.skip("no word in the list tokenises differently after 't with this vocabulary")
    pairs = [("query", document)]
    got = tok.encode_pairs(pairs, max_length, truncation, "left", warn=False, bounded=True)
    assert got.input_ids == _whole_then_truncated(tok, pairs, max_length, truncation, "left")


@pytest.mark.parametrize("direction", ["right", "left"])
def test_an_odd_budget_judges_a_clipped_side_by_the_tokens_its_whole_text_has(tok, direction):
    """A cut inside a word can split it into more tokens than the whole word (" alan" is three
    tokens where " aland" is one; "ntal" two more than "ental"), so a clipped part can hold more
    tokens than its whole text. Here the query holds one token more than the whole document and
    one fewer than the document's part: the spare token of the odd budget is the query's, as when
    the whole texts are truncated."""
    max_length = 33
    chars = CLIP_CHARS_PER_TOKEN * max_length
    plain = tok._copies.plain()

    def tokens(text: str) -> int:
        return len(plain.encode(text, add_special_tokens=False).ids)

    if direction == "right":
        document = ("strcon " * chars)[: chars - 6] + "c" + " aland"
        part = document[:chars]
    else:
        document = "ental" + (" strcon" * chars)[: chars - 4]
        part = document[-chars:]
    assert len(document) == chars + 1
    assert tokens(part) == tokens(document) + 2  # the premise: the part looks longer than its text
    query = "i" + " i" * tokens(document)
    assert len(query) <= chars and tokens(query) == tokens(document) + 1
    pairs = [(query, document)]
    got = tok.encode_pairs(pairs, max_length, "longest_first", direction, warn=False)
    assert got.input_ids == _whole_then_truncated(tok, pairs, max_length, "longest_first", direction)


@pytest.fixture(scope="module")
def stripping_tok(small_ckpt, tmp_path_factory):
    """The small tokenizer with <mask> taking the whitespace beside it (lstrip, rstrip), as
    RoBERTa's own tokenizer.json has it."""
    target = tmp_path_factory.mktemp("lstrip")
    shutil.copytree(small_ckpt, target, dirs_exist_ok=True)
    spec = json.loads((target / "tokenizer.json").read_text())
    for token in spec["added_tokens"]:
        if token["content"] == "<mask>":
            token["lstrip"] = token["rstrip"] = True
    (target / "tokenizer.json").write_text(json.dumps(spec))
    return PairTokenizer.from_directory(target, 8192)


@pytest.mark.parametrize("direction", ["right", "left"])
@pytest.mark.parametrize("inside", [1, 3, 5])
def test_a_cut_never_splits_an_added_token(stripping_tok, direction, inside):
    """Added tokens are split out before pre-tokenising, and <mask> here takes the whitespace
    before and after it: a part cut inside "<mask>" would read that whitespace as words of its
    own (a run of space tokens within the budget). The cut moves past the token instead."""
    tok = stripping_tok
    max_length = 16
    chars = CLIP_CHARS_PER_TOKEN * max_length
    spaces = " " * 120
    if direction == "right":  # "<mask>" starts ``inside`` characters before the cut
        head = ("ka lo " * chars)[: chars - inside - len(spaces) - 1] + "k"
        document = head + spaces + "<mask>" + " lo mi" * 30
        assert document.index("<mask>") == chars - inside
    else:  # the cut falls ``inside`` characters into "<mask>"
        tail = ("k" + " lo" * chars)[: chars + inside - 6 - len(spaces)]
        document = "lo mi " * 30 + "<mask>" + spaces + tail
        assert document.index("<mask>") == len(document) - chars - inside
    for truncation in ("longest_first", "only_second"):
        pairs = [("q", document)]
        got = tok.encode_pairs(pairs, max_length, truncation, direction, warn=False)
        assert got.input_ids == _whole_then_truncated(tok, pairs, max_length, truncation, direction)


def test_a_lone_surrogate_past_the_clipped_part_is_named(tok):
    """Only part of a long text is tokenised: a surrogate in the rest is refused all the same."""
    with pytest.raises(
        ValueError, match="pair 0: the document contains a lone surrogate U\\+D800 at character 15000"
    ):
        tok.encode_pairs([("q", "word " * 3000 + "\ud800")], max_length=512)


@pytest.mark.parametrize("max_length", [33, 64])
def test_two_long_texts_that_cannot_be_cut_truncate_as_tokenizers_does(tok, max_length):
    """Both texts long and without a word boundary: the pair is encoded whole and cut by
    pair_truncation (tokenizers would join every overflow window of one with every one of the
    other's); the ids and flags are tokenizers' own truncation of the whole pair."""
    rng = random.Random(max_length)
    long = CLIP_CHARS_PER_TOKEN * max_length
    for _ in range(4):
        query = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(long + 1, 4 * long)))
        document = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(long + 1, 4 * long)))
        for truncation in ("longest_first", "only_second"):
            for direction in ("right", "left"):
                pairs = [(query, document), ("a short query", document)]
                try:
                    whole = _whole(tok, max_length, truncation, direction).encode_batch(pairs)
                except Exception:
                    with pytest.raises(ValueError, match="does not fit max_length"):
                        tok.encode_pairs(pairs, max_length, truncation, direction, warn=False)
                    continue
                got = tok.encode_pairs(pairs, max_length, truncation, direction, warn=False)
                assert got.input_ids == [enc.ids for enc in whole]
                assert got.was_truncated == [bool(enc.overflowing) for enc in whole]
    # The size that took tokenizers over a gigabyte: cut in one pass over each text.
    query, document = "ab" * 10_000, "cd" * 10_000
    got = tok.encode_pairs([(query, document)], 512, warn=False)
    assert len(got.input_ids[0]) == 512 and got.was_truncated == [True]


@pytest.mark.parametrize("query_words", [20, CLIP_CHARS_PER_TOKEN * 64 // 5])
def test_a_long_query_beside_an_uncuttable_document_is_cut_in_one_pass(tok, monkeypatch, query_words):
    """Only pairs of two texts over 8 x max_length characters were cut in one pass, so a query
    clipped to exactly that (or any shorter one that still overflows) beside a long document
    without a word boundary went to tokenizers, which made every combination of the two texts'
    windows (a 60,000-character query beside 300,000 characters: 3.3 GB). A pair whose two texts
    are both longer than its budget is cut in one pass: the same ids."""
    max_length = 64
    query = "word " * query_words
    pairs = [(query, "x" * 20_000), ("q", "x" * 20_000)]
    calls = []
    real = Tokenizer.encode_batch_fast

    def spy(self, inputs, *args, **options):
        calls.append((self.truncation, [len(item[0]) for item in inputs if isinstance(item, tuple)]))
        return real(self, inputs, *args, **options)

    monkeypatch.setattr(Tokenizer, "encode_batch_fast", spy)
    got = tok.encode_pairs(pairs, max_length, warn=False)
    assert not [lengths for truncation, lengths in calls if truncation and len(query) in lengths]
    monkeypatch.undo()
    whole = _whole(tok, max_length, "longest_first", "right").encode_batch(pairs)
    assert got.input_ids == [enc.ids for enc in whole]
    assert got.was_truncated == [True, True]


def test_long_document_is_not_tokenised_whole(tok, monkeypatch):
    seen: list[int] = []

    class Recording:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):  # what it does not record
            return getattr(self.inner, name)

        def encode(self, text, **options):
            seen.append(len(text))
            return self.inner.encode(text, **options)

        def encode_batch(self, pairs):
            seen.extend(len(q) + len(d) for q, d in pairs)
            return self.inner.encode_batch(pairs)

    plain, lend = tok._copies.plain, tok._copies.truncating

    @contextlib.contextmanager
    def recorded(*args, **options):
        with lend(*args, **options) as inner:
            yield Recording(inner)

    monkeypatch.setattr(tok._copies, "plain", lambda: Recording(plain()))
    monkeypatch.setattr(tok._copies, "truncating", recorded)
    document = random_text(random.Random(5), 200_000)  # about 1.4 million characters
    with pytest.warns(TruncationWarning):
        enc = tok.encode_pairs([("a query", document)], max_length=512)
    assert len(enc.input_ids[0]) == 512 and enc.truncated == 1
    assert seen and max(seen) * 50 < len(document)


@pytest.mark.parametrize("text", ["x" * 4096, " " * 4096, "日本語" * 1400])
def test_text_without_word_boundaries_is_kept_whole_or_refused_when_bounded(tok, text):
    """A cut inside one long word is not exact (BPE splits a run of one character by its length),
    so such a text is tokenised whole, or with bounded=True refused after a bounded search."""
    pairs = [("q", text)]
    whole = _whole(tok, 64, "longest_first", "right").encode_batch(pairs)
    with pytest.warns(TruncationWarning):
        assert tok.encode_pairs(pairs, 64).input_ids == [whole[0].ids]
    limit = CLIP_MAX_CHARS_PER_TOKEN * 64
    with pytest.raises(
        UncuttableTextError,
        match=f"the document has {len(text):,} characters and no word boundary in the first {limit:,}",
    ):
        tok.encode_pairs(pairs, 64, bounded=True)


def test_max_document_tokens_cuts_the_document_first(tok):
    """Cohere v2's max_tokens_per_doc: each document keeps its first N tokens, then the pair is cut
    to max_length as usual. The reference: the pair cut with only_second to exactly the query, N
    document tokens and the special tokens, which the tokenizer does on its own."""
    rng = random.Random(7)
    cap = 12
    pairs = [(random_text(rng, rng.randint(2, 6)), random_text(rng, rng.randint(0, 40))) for _ in range(40)]
    pairs.append(("q", "word " * 5000))  # long enough to be clipped before tokenising
    got = tok.encode_pairs(pairs, 256, warn=False, max_document_tokens=cap)
    plain = tok._copies.plain()
    for index, (query, document) in enumerate(pairs):
        query_tokens = len(plain.encode(query, add_special_tokens=False).ids)
        document_tokens = len(plain.encode(document, add_special_tokens=False).ids)
        room = query_tokens + min(cap, document_tokens) + tok.num_special_tokens
        want = tok.encode_pairs([(query, document)], room, "only_second", warn=False)
        assert got.input_ids[index] == want.input_ids[0], (query, document)
        assert got.was_truncated[index] == (document_tokens > cap)
    assert got.truncated > 0 and got.truncated < len(pairs)  # the test covers both sides


def test_max_document_tokens_then_the_pair_limit(tok):
    pairs = [("a rather long query " * 10, "document words " * 50)]
    capped = tok.encode_pairs(pairs, 32, warn=False, max_document_tokens=20)
    assert len(capped.input_ids[0]) == 32 and capped.was_truncated == [True]
    # A cap at or over max_length changes nothing.
    for cap in (32, 10_000):
        assert tok.encode_pairs(pairs, 32, warn=False, max_document_tokens=cap) == tok.encode_pairs(
            pairs, 32, warn=False
        )
    for bad in (0, -1, 1.5, True, "8"):
        with pytest.raises(ValueError, match="max_document_tokens must be a positive integer"):
            tok.encode_pairs(pairs, 32, max_document_tokens=bad)


def test_a_tokenizers_release_that_truncates_pairs_otherwise_is_refused(tok):
    """tokenizers 0.23.1 and 0.23.2 (0.22.2 and 0.23.3 truncate as 0.21 does) keep only the
    first overflow window of a pair cut with a stride, and gives an odd budget's spare token to the
    second text: a document scored as windows lost all but two of them, silently. A release that
    behaves so is refused, naming what to install; the installed one passes (every PairTokenizer
    checks it at load)."""
    import types

    from turborank.truncation_check import REQUIREMENT, check_pair_truncation

    check_pair_truncation(tok._copies, tok.num_special_tokens, "tokenizer.json")

    class Later:  # what 0.23.2 returns: one overflow window, the spare token to the second text
        def __init__(self, real):
            self.real = real

        def encode(self, first, second):
            encoding = self.real.encode(first, second)
            half = (len([s for s in encoding.sequence_ids if s is not None]) - 1) // 2
            return types.SimpleNamespace(
                overflowing=encoding.overflowing[:1], sequence_ids=[0] * half + [1] * (half + 1)
            )

    class Copies:
        def plain(self):
            return tok._copies.plain()

        @contextlib.contextmanager
        def truncating(self, *args):
            with tok._copies.truncating(*args) as real:
                yield Later(real)

    with pytest.raises(ValueError) as refused:
        check_pair_truncation(Copies(), tok.num_special_tokens, "tokenizer.json")
    message = str(refused.value)
    assert "truncates pairs differently" in message and "windows, not" in message
    assert "spare token went to the shorter text" in message and message.endswith(f"install {REQUIREMENT!r}")
