"""Pair tokenisation with the checkpoint's own tokenizer.json (post-processor builds the pair template)."""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from turborank.files import read_regular_file
from turborank.option_names import TRUNCATION_STRATEGIES, as_integer
from turborank.pair_truncation import truncate_whole
from turborank.text_clipping import CLIP_CHARS_PER_TOKEN, UncuttableTextError, clip_pairs
from turborank.tokenizer_copies import TokenizerCopies
from turborank.tokenizer_settings import check_special_tokens, emits_token_type_ids, read_tokenizer_config
from turborank.truncation_check import check_pair_truncation
from turborank.unicode_text import describe_lone_surrogate

TRUNCATION_DIRECTIONS = ("right", "left")
# HF writes int(1e30) when a tokenizer has no limit of its own.
_NO_LIMIT = 10**9
# tokenizer.json of the largest vocabularies is tens of megabytes.
MAX_TOKENIZER_BYTES = 512 * 1024 * 1024


class TruncationWarning(UserWarning):
    """Raised (as a warning) whenever a pair was cut to fit ``max_length``."""


def warn_truncated(truncated: int, pairs: int, max_length: int, truncation: str, stacklevel: int) -> None:
    """The TruncationWarning counting the pairs cut; ``stacklevel`` as ``warnings.warn``'s (1: this
    function)."""
    warnings.warn(
        f"{truncated} of {pairs} pairs were longer than max_length={max_length} tokens and were "
        f"truncated ({truncation})",
        TruncationWarning,
        stacklevel=stacklevel,
    )


@dataclasses.dataclass
class EncodedPairs:
    """Token ids of each pair, in input order.

    ``token_type_ids`` is None when the reference tokenizer does not emit them (RoBERTa-style): the
    model then uses zeros, as the HF reference does.
    """

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    was_truncated: list[bool]
    # Which pairs were longer than the pair limit. ``was_truncated`` also counts documents cut to
    # ``max_document_tokens`` first (Cohere's max_tokens_per_doc), which a strict limit allows;
    # None: the same as ``was_truncated``.
    over_length: list[bool] | None = None

    @property
    def longer_than_limit(self) -> list[bool]:
        return self.was_truncated if self.over_length is None else self.over_length

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    @property
    def truncated(self) -> int:
        return sum(self.was_truncated)

    @classmethod
    def gather(cls, picks: list[tuple[EncodedPairs, int]]) -> EncodedPairs:
        """One EncodedPairs of the pair at each (source, index), in that order."""
        with_types = bool(picks) and picks[0][0].token_type_ids is not None
        return cls(
            input_ids=[source.input_ids[i] for source, i in picks],
            token_type_ids=[source.token_type_ids[i] for source, i in picks] if with_types else None,
            was_truncated=[source.was_truncated[i] for source, i in picks],
            over_length=[source.longer_than_limit[i] for source, i in picks],
        )


def encode_batch(tokenizer: Tokenizer, inputs: list[Any], **options: Any) -> list[Any]:
    """``tokenizer.encode_batch`` without the character offsets nothing here reads: tokenizers from
    0.21 on has ``encode_batch_fast`` for that, the same ids, types and overflows (checked over
    both truncations, both directions and three lengths) in about 70% of the time."""
    fast = getattr(tokenizer, "encode_batch_fast", None)
    return (fast or tokenizer.encode_batch)(inputs, **options)


def _check_encodes_a_pair(tokenizer: Tokenizer, path: Path) -> None:
    """A tokenizers file can load and still fail on its first pair: a pair template naming a token
    its special tokens lack makes the Rust side panic (a BaseException that ``except Exception``
    misses), a WordLevel model without its unknown token raises a bare Exception. Refused at load,
    naming the file, instead of on the first request."""
    try:
        tokenizer.encode("a", "b")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pyo3's PanicException derives from BaseException
        reason = f"{type(exc).__name__}: {exc}"
        raise ValueError(f"{path}: the tokenizer cannot encode a pair ({reason})") from None


class PairTokenizer:
    """Encodes (query, document) pairs as ``<s> query </s></s> document </s>`` (or whatever the
    checkpoint's post-processor defines), truncating to a token budget.

    Thread-safe: calls that tokenise at once each use a copy of the tokenizer of their own
    (``tokenizer_copies``).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        model_max_length: int,
        emits_token_type_ids: bool = False,
        source: str = "tokenizer.json",
        limit_source: str = "model_max_length",  # where the limit comes from, for errors
    ) -> None:
        self._copies = TokenizerCopies(tokenizer.to_str())
        self.model_max_length = model_max_length
        self.emits_token_type_ids = emits_token_type_ids
        self.source = source
        with self._copies.truncating(model_max_length, "longest_first") as probe:
            self.num_special_tokens = probe.num_special_tokens_to_add(is_pair=True)
        if self.num_special_tokens == 0:
            raise ValueError(
                f"{source}: the tokenizer has no post-processor adding special tokens to a pair; the "
                "classifier pools token 0, so the pair template (<s> q </s></s> d </s>) is required"
            )
        check_pair_truncation(self._copies, self.num_special_tokens, source)
        if model_max_length <= self.num_special_tokens:
            # tokenizers subtracts the special tokens from the limit in unsigned arithmetic: a limit
            # at or below their count wraps around and silently turns truncation off.
            raise ValueError(
                f"the length limit {model_max_length} ({limit_source}) leaves no room for a pair: the "
                f"pair template of {source} adds {self.num_special_tokens} special tokens, so the limit "
                f"must be at least {self.num_special_tokens + 1}"
            )

    @classmethod
    def from_directory(cls, directory: str | Path, max_position_embeddings: int) -> PairTokenizer:
        """Load tokenizer.json, and tokenizer_config.json when present (model_max_length, class)."""
        directory = Path(directory)
        path = directory / "tokenizer.json"
        try:
            text = read_regular_file(path, MAX_TOKENIZER_BYTES).decode("utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{directory}: no tokenizer.json (turborank uses the fast tokenizer file the reranker ships)"
            ) from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not UTF-8 text ({exc})") from None
        try:
            tokenizer = Tokenizer.from_str(text)
        except Exception as exc:
            raise ValueError(f"{path}: not a valid tokenizers file ({exc})") from None
        del text
        _check_encodes_a_pair(tokenizer, path)
        config_path = directory / "tokenizer_config.json"
        settings = read_tokenizer_config(config_path)
        limit = settings.get("model_max_length")
        model_max_length = max_position_embeddings
        limit_source = f"max_position_embeddings in {directory / 'config.json'}"
        usable = isinstance(limit, (int, float)) and not isinstance(limit, bool) and 0 < limit < _NO_LIMIT
        if usable and int(limit) < max_position_embeddings:
            model_max_length, limit_source = int(limit), f"model_max_length in {config_path}"
        tokenizer = check_special_tokens(tokenizer, settings, path)
        return cls(
            tokenizer,
            model_max_length,
            emits_token_type_ids(settings),
            source=str(path),
            limit_source=limit_source,
        )

    def clip(
        self,
        pairs: list[tuple[str, str]],
        max_length: int,
        direction: str = "right",
        bounded: bool = False,
        truncation: str = "longest_first",
    ) -> list[tuple[str, str]]:
        """The pairs, with each text of over ``CLIP_CHARS_PER_TOKEN * max_length`` characters cut to a
        part that truncates to the same tokens (``text_clipping.clip_text``), so a 10 MB document
        costs the tokenisation of a few times ``max_length`` tokens instead of all of it. Exact:
        truncating the clipped pairs to ``max_length`` gives the ids, and the truncated flags, of
        the whole ones.

        A text with no word boundary to cut at within ``CLIP_MAX_CHARS_PER_TOKEN * max_length``
        characters is kept whole (tokenised whole, still exact), or with ``bounded`` raises
        ``UncuttableTextError``, so the work per text stays bounded. Under "longest_first" with an
        odd budget (``max_length`` less the special tokens) a clipped pair also keeps its longer
        side, which may take more of the texts (see ``text_clipping.keep_the_longer_side``)."""
        budget = max_length - self.num_special_tokens
        odd_halves = budget // 2 if truncation == "longest_first" and budget % 2 else None
        # Only part of a clipped text reaches the tokenizer, which refuses a lone surrogate: the
        # rest must be valid Unicode too, or the same text would be refused short and scored long.
        _raise_if_not_unicode(pairs, longer_than=CLIP_CHARS_PER_TOKEN * max_length)
        return clip_pairs(pairs, max_length, direction, bounded, self._copies.plain, odd_halves)

    def check_max_length(self, max_length: int | None) -> int:
        if max_length is None:
            return self.model_max_length
        number = as_integer(max_length)
        if number is None:
            raise ValueError(f"max_length must be an integer, got {max_length!r}")
        max_length = number
        if not self.num_special_tokens < max_length <= self.model_max_length:
            raise ValueError(
                f"max_length={max_length} is outside the model's range "
                f"({self.num_special_tokens + 1}..{self.model_max_length})"
            )
        return max_length

    def encode_pairs(
        self,
        pairs: list[tuple[str, str]],
        max_length: int | None = None,
        truncation: str = "longest_first",
        direction: str = "right",
        warn: bool = True,
        bounded: bool = False,
        max_document_tokens: int | None = None,
    ) -> EncodedPairs:
        """Tokenise pairs. Truncation "longest_first" (the HF reference default) trims the longer side
        token by token; "only_second" keeps the query whole and cuts the document; ``direction``
        "left" cuts from the start instead of the end. Unless ``warn`` is False, a warning counts
        every truncated pair; ``EncodedPairs.was_truncated`` says which. Over-long texts are
        tokenised from a part of them (``clip``; ``bounded`` as there). ``max_document_tokens``
        first cuts each document to that many tokens (Cohere's ``max_tokens_per_doc``), then the
        pair is truncated to ``max_length`` as usual; a pair cut either way counts as truncated."""
        max_length = self.check_max_length(max_length)
        if truncation not in TRUNCATION_STRATEGIES:
            raise ValueError(f"truncation={truncation!r}; expected one of {TRUNCATION_STRATEGIES}")
        if direction not in TRUNCATION_DIRECTIONS:
            raise ValueError(f"direction={direction!r}; expected one of {TRUNCATION_DIRECTIONS}")
        if max_document_tokens is not None:
            cap = as_integer(max_document_tokens)
            if cap is None or cap < 1:
                given = max_document_tokens
                raise ValueError(f"max_document_tokens must be a positive integer, got {given!r}")
            max_document_tokens = cap
        capped = max_document_tokens is not None and max_document_tokens < max_length
        try:
            clipped = self.clip(pairs, max_length, direction, bounded, truncation)
            if capped:
                encodings, documents_cut, over_length = self._encode_with_document_cap(
                    clipped, max_length, truncation, direction, max_document_tokens
                )
            else:
                encodings = self._encode_truncated(clipped, max_length, truncation, direction)
                documents_cut, over_length = [False] * len(encodings), None
        except UncuttableTextError:
            raise
        except Exception as exc:  # tokenizers raises a bare Exception
            _raise_if_not_unicode(pairs)
            if truncation == "only_second":
                self._raise_query_too_long(pairs, max_length)
            raise ValueError(f"tokenisation failed: {exc}") from None
        was_truncated = [
            bool(enc.overflowing) or cut for enc, cut in zip(encodings, documents_cut, strict=True)
        ]
        truncated = sum(was_truncated)
        if truncated and warn:
            warn_truncated(truncated, len(pairs), max_length, truncation, stacklevel=4)
        return EncodedPairs(
            input_ids=[enc.ids for enc in encodings],
            token_type_ids=[enc.type_ids for enc in encodings] if self.emits_token_type_ids else None,
            was_truncated=was_truncated,
            over_length=over_length,
        )

    def _encode_truncated(
        self, pairs: list[tuple[str, str]], max_length: int, truncation: str, direction: str
    ) -> list[Any]:
        """Each pair's encoding truncated to ``max_length``: by tokenizers, but a pair whose two
        texts both have more characters than the pair's token budget (so both may overflow) is
        encoded whole and cut by ``pair_truncation``: tokenizers would join every overflow window
        of one text with every one of the other's, memory and time growing with the product of
        their lengths (a 60,000-character query beside a 300,000-character document without a
        word boundary took 3.3 GB). Cut here, the same ids in about the same time."""
        budget = max_length - self.num_special_tokens
        heavy = [
            i for i, (query, document) in enumerate(pairs) if len(query) > budget and len(document) > budget
        ]
        if not heavy:
            with self._copies.truncating(max_length, truncation, direction) as tokenizer:
                return encode_batch(tokenizer, pairs)
        whole = encode_batch(self._copies.plain(), [pairs[i] for i in heavy])
        cut = {
            i: truncate_whole(enc, budget, truncation, direction) for i, enc in zip(heavy, whole, strict=True)
        }
        rest = [i for i in range(len(pairs)) if cut.get(i) is None]
        with self._copies.truncating(max_length, truncation, direction) as tokenizer:
            encoded = encode_batch(tokenizer, [pairs[i] for i in rest])
        cut.update(zip(rest, encoded, strict=True))
        return [cut[i] for i in range(len(pairs))]

    def _encode_with_document_cap(
        self,
        pairs: list[tuple[str, str]],
        max_length: int,
        truncation: str,
        direction: str,
        max_document_tokens: int,
    ) -> tuple[list[Any], list[bool], list[bool]]:
        """Pair encodings whose documents were cut to ``max_document_tokens`` first, which documents
        were cut, and which pairs were still over ``max_length`` (a cut document's encoding keeps
        its cut tokens as overflow, so the pair's own overflow does not tell). Each side is
        tokenised on its own, as ``encode`` does for a pair, and the pair template and its
        truncation are applied to the two (``post_process``): the same ids as encoding the pair,
        but with the document cut first. The texts were clipped for
        ``max_length`` >= ``max_document_tokens``, so the document's first tokens are exact."""
        plain = self._copies.plain()
        queries = {q: plain.encode(q, add_special_tokens=False) for q in dict.fromkeys(q for q, _ in pairs)}
        documents = encode_batch(plain, [d for _, d in pairs], add_special_tokens=False)
        encodings, cut, over_length = [], [], []
        for document in documents:
            over = len(document.ids) > max_document_tokens
            if over:
                document.truncate(max_document_tokens, direction=direction)
            cut.append(over)
        with self._copies.truncating(max_length, truncation, direction) as pair_tokenizer:
            for (query, _), document in zip(pairs, documents, strict=True):
                tokens = len(queries[query].ids) + len(document.ids) + self.num_special_tokens
                encodings.append(pair_tokenizer.post_process(queries[query], document))
                over_length.append(tokens > max_length)
        return encodings, cut, over_length

    def check_pairs(
        self, pairs: list[tuple[str, str]], max_length: int, truncation: str, long_doc: str, overlap: int
    ) -> None:
        """The errors tokenising ``pairs`` would raise for a text no tokenizer takes (a lone
        surrogate) or a query the settings leave no room, found without tokenising a document: a
        long list scored in chunks then fails before its first chunk is scored, as a list
        tokenised whole does."""
        if long_doc == "chunk":
            with _tokenizer_errors_as_value_errors():
                self._check_chunk_queries(pairs, max_length, overlap)
            return
        _raise_if_not_unicode(pairs)
        if truncation == "only_second":
            self._raise_query_too_long(pairs, max_length)

    def _check_chunk_queries(self, pairs: list[tuple[str, str]], max_length: int, overlap: int) -> None:
        _raise_if_not_unicode(pairs)
        # Checked here: tokenizers panics (an uncatchable-by-Exception PanicException) when the
        # overlap does not fit the document part of a window.
        plain = self._copies.plain()
        tight = {}  # query -> the document tokens a window leaves it, where the overlap does not fit
        for query in dict.fromkeys(q for q, _ in pairs):
            query_tokens = len(plain.encode(query, add_special_tokens=False).ids)
            room = max_length - self.num_special_tokens - query_tokens
            if room < 1:
                # Raising max_length helps only if the model's maximum leaves the document a token.
                fits = query_tokens + self.num_special_tokens < self.model_max_length
                advice = f" or raise max_length (at most {self.model_max_length})" if fits else ""
                raise ValueError(
                    f"query of {query_tokens} tokens leaves no room for the document in windows of "
                    f"max_length={max_length} (long_doc='chunk' keeps the whole query in every window); "
                    f"shorten the query{advice}"
                )
            if overlap >= room:
                tight[query] = room
        widest = max_length - self.num_special_tokens - 1  # a window's document part beside a 1-token query
        if overlap >= widest:
            raise ValueError(
                f"chunk overlap {overlap} must be smaller than {widest}, the most document tokens a "
                f"window of max_length={max_length} holds"
            )
        # The overlap is used only where a document needs a second window: one that fits whole
        # beside its query scores as with long_doc="truncate", however long the query.
        beside_tight = [(query, document) for query, document in pairs if query in tight]
        documents = encode_batch(plain, [d for _, d in beside_tight], add_special_tokens=False)
        for (query, _), document in zip(beside_tight, documents, strict=True):
            room = tight[query]
            if len(document.ids) > room:
                raise ValueError(
                    f"chunk overlap {overlap} must be smaller than the {room} document tokens a window of "
                    f"max_length={max_length} leaves beside this query (its document needs more than one)"
                )

    def encode_chunked(
        self, pairs: list[tuple[str, str]], max_length: int | None = None, overlap: int = 128
    ) -> tuple[EncodedPairs, list[int]]:
        """Every pair as one or more windows of at most ``max_length`` tokens: the query whole in
        each, the document cut into consecutive pieces that share ``overlap`` tokens. Nothing is
        lost. Returns the windows and, per window, the index of its pair."""
        max_length = self.check_max_length(max_length)
        number = as_integer(overlap)
        if number is None or number < 0:
            raise ValueError(f"chunk overlap must be a non-negative integer, got {overlap!r}")
        overlap = number
        with _tokenizer_errors_as_value_errors():
            self._check_chunk_queries(pairs, max_length, overlap)
            with self._copies.truncating(max_length, "only_second", "right", overlap) as tokenizer:
                encodings = encode_batch(tokenizer, pairs)
        windows, types, owners = [], [], []
        for index, enc in enumerate(encodings):
            pieces = (enc, *enc.overflowing)
            windows += pieces
            types += _window_type_ids(enc) if self.emits_token_type_ids else []
            owners += [index] * len(pieces)
        encoded = EncodedPairs(
            input_ids=[w.ids for w in windows],
            token_type_ids=types if self.emits_token_type_ids else None,
            was_truncated=[False] * len(windows),
        )
        return encoded, owners

    def check_fits(self, vocab_size: int, type_vocab_size: int, config_source: str) -> None:
        """Refuse a tokenizer that can emit an id the embedding tables have no row for: caught
        here, at load, rather than as an IndexError (PyTorch) or a NaN row (Triton) per request.

        Every id the tokenizer knows (its vocabulary, added tokens and the pair template's special
        tokens) must be below ``vocab_size``;
        the pair template's token types, when the model is given them, below ``type_vocab_size``.
        """
        base = self._copies.plain()
        # The pair template's special tokens carry ids of their own, which need not be in the vocab.
        largest = max(*base.get_vocab(with_added_tokens=True).values(), *base.encode("a", "b").ids, -1)
        if largest >= vocab_size:
            raise ValueError(
                f"{self.source}: token ids reach {largest}, but {config_source} has vocab_size {vocab_size} "
                f"(the word-embedding table has no row for ids >= {vocab_size}); the tokenizer does not "
                "belong to this checkpoint"
            )
        if self.emits_token_type_ids:
            types = max(base.encode("a", "b").type_ids, default=0)
            if types >= type_vocab_size:
                raise ValueError(
                    f"{self.source}: the pair template gives token type {types}, but {config_source} has "
                    f"type_vocab_size {type_vocab_size}"
                )

    def _raise_query_too_long(self, pairs: list[tuple[str, str]], max_length: int) -> None:
        # With only_second the tokenizer errors without saying which query is too long.
        room = max_length - self.num_special_tokens - 1
        plain = self._copies.plain()
        for query in dict.fromkeys(query for query, _ in pairs):
            n = len(plain.encode(query, add_special_tokens=False).ids)
            if n > room:
                raise ValueError(
                    f"query of {n} tokens does not fit max_length={max_length} with truncation='only_second' "
                    f"(at most {room} query tokens leave room for the document); shorten the query or use "
                    "truncation='longest_first'"
                )


@contextlib.contextmanager
def _tokenizer_errors_as_value_errors() -> Iterator[None]:
    """tokenizers raises a bare Exception for a text it cannot tokenise (a WordLevel vocabulary
    without its unknown token): a ValueError here, as for any bad input; other exceptions pass."""
    try:
        yield
    except Exception as exc:
        if type(exc) is not Exception:
            raise
        raise ValueError(f"tokenisation failed: {exc}") from None


def _raise_if_not_unicode(pairs: list[tuple[str, str]], longer_than: int = -1) -> None:
    """ValueError naming the first text (of over ``longer_than`` characters) holding a lone surrogate."""
    for index, (query, document) in enumerate(pairs):
        for side, text in (("query", query), ("document", document)):
            problem = describe_lone_surrogate(text) if len(text) > longer_than else None
            if problem is not None:
                raise ValueError(f"pair {index}: the {side} contains {problem}")


def _window_type_ids(first: Any) -> list[list[int]]:
    """Token types of the windows of one chunked pair (``first``: its encoding, the later windows
    in ``first.overflowing``). tokenizers applies the pair template's token types to the first
    window only: the later ones keep their texts' own types (0 on the document side under a BERT
    template's ``$B:1``). Every window has the first one's layout, so each takes its types: the
    same before and after the document, the document's type for every document token."""
    if not first.overflowing:
        return [first.type_ids]
    document = [i for i, side in enumerate(first.sequence_ids) if side == 1]
    types = first.type_ids
    head, tail = types[: document[0]], types[document[-1] + 1 :]
    body = types[document[0]]
    windows = (first, *first.overflowing)
    return [head + [body] * (len(w.ids) - len(head) - len(tail)) + tail for w in windows]
