"""Request bodies of the rerank APIs: Jina / Cohere v1 (`/v1/rerank`), Cohere v2 (`/v2/rerank`) and
text-embeddings-inference (`/rerank`, `POST /`); vLLM's and infinity's are in ``vllm_infinity``.
The Jina and Cohere bodies also take vLLM's scoring options and infinity's ``raw_scores``, which
those servers' clients send to the same paths.

Every field is strict (``top_n: "1"`` and ``top_n: true`` are refused like any other wrong type),
and every text must be valid Unicode: JSON's "\\ud800" escape decodes to a lone surrogate that no
tokenizer (nor the JSON encoder of the response) can take. Unknown fields are ignored, as the
hosted APIs add fields over time.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from turborank.unicode_text import describe_lone_surrogate

# Cohere v2's documented default for max_tokens_per_doc.
COHERE_MAX_TOKENS_PER_DOC = 4096
# How deep a document object may nest: the hosted APIs take flat objects of strings.
MAX_OBJECT_DEPTH = 32


def _valid_unicode(text: str) -> str:
    problem = describe_lone_surrogate(text)
    if problem is not None:
        raise PydanticCustomError("unicode", "contains {problem}", {"problem": problem})
    return text


Text = Annotated[StrictStr, AfterValidator(_valid_unicode)]

# A Jina / Cohere v1 document object: "text" (or the rank_fields) is scored; every other key
# comes back as it was sent.
DocumentObject = Annotated[
    dict[str, Any],
    WithJsonSchema(
        {
            "type": "object",
            "title": "DocumentObject",
            "properties": {"text": {"type": "string"}},
            "additionalProperties": True,
            "description": 'Scored by its "text", or by the rank_fields; returned whole.',
        }
    ),
]


def _unechoable(value: Any) -> str | None:
    """What in a JSON value (keys included) the response could not carry back as it came, and
    where: a lone surrogate (no UTF-8 for it), NaN or an infinity (Python's JSON reader takes them,
    JSON has no such numbers), nesting deeper than MAX_OBJECT_DEPTH (the response nests it three
    levels deeper than the request did). Iterative, one iterator per level and the keys down to
    it: no allocation per item (a path string built for each of the millions of empty lists a
    16 MiB body can hold took seconds and a gigabyte)."""
    path: list[Any] = []  # the keys down to the container being read
    stack = [iter((("", value),))]
    while stack:
        for key, item in stack[-1]:
            if len(stack) - 1 > MAX_OBJECT_DEPTH:
                return f"nesting deeper than {MAX_OBJECT_DEPTH} levels at {_place(path, key)}"
            if isinstance(item, str):
                problem = describe_lone_surrogate(item)
                if problem is not None:
                    return f"{problem} in {_place(path, key)}"
            elif isinstance(item, float) and not math.isfinite(item):
                return f"{item} (not a JSON number) in {_place(path, key)}"
            elif not item:
                continue  # an empty object or list (or a falsy scalar): nothing inside to check
            elif isinstance(item, dict):
                for inner in item:
                    problem = describe_lone_surrogate(inner)
                    if problem is not None:
                        return f"{problem} in a key of {_place(path, key)}"
                path.append(key)
                stack.append(iter(item.items()))
                break
            elif isinstance(item, list):
                path.append(key)
                stack.append(enumerate(item))
                break
        else:
            stack.pop()
            if path:
                path.pop()
    return None


def _place(path: list[Any], key: Any) -> str:
    return ".".join(map(str, [*path, key])).lstrip(".") or "the object"


def document_text(document: str | dict[str, Any], rank_fields: list[str] | None) -> str:
    """What is scored: the string; an object's "text"; with several rank_fields, one
    "field: value" line per field the object has (Cohere's order), a single one as its value."""
    if isinstance(document, str):
        return document
    fields = rank_fields or ["text"]
    if len(fields) == 1:
        return document[fields[0]]
    return "\n".join(f"{field}: {document[field]}" for field in fields if field in document)


# What tells a body on a shared path to be vLLM's: its scoring options (or top_n 0, its "all").
VLLM_KEYS = frozenset(
    {"truncate_prompt_tokens", "use_activation", "activation", "softmax", "mm_processor_kwargs"}
)
# ... and infinity's: its raw_scores.
INFINITY_KEYS = frozenset({"raw_scores"})


class VLLMScoringOptions(BaseModel):
    """vLLM's options of its rerank and score APIs."""

    model_config = ConfigDict(extra="ignore")

    truncate_prompt_tokens: StrictInt | None = Field(
        default=None, ge=-1, description="vLLM: cut each pair to this many tokens (-1: max_input_length)"
    )
    use_activation: StrictBool | None = Field(
        default=None, description="vLLM: false answers the logits instead of their sigmoid"
    )
    activation: StrictBool | None = Field(default=None, description="vLLM's older name of use_activation")
    softmax: StrictBool | None = Field(default=None, description="vLLM's older name of use_activation")

    def sigmoid_wanted(self) -> bool:
        """vLLM's reading: the first of use_activation, softmax, activation that is set; true if none."""
        for value in (self.use_activation, self.softmax, self.activation):
            if value is not None:
                return value
        return True


class InfinityScoringOptions(VLLMScoringOptions):
    """vLLM's options and infinity's ``raw_scores``, both sent to the rerank paths infinity serves."""

    raw_scores: StrictBool | None = Field(default=None, description="infinity: true answers the logits")

    def sigmoid_wanted(self) -> bool:
        return not self.raw_scores and super().sigmoid_wanted()


def strings_only(value: Any, hint: str) -> Any:
    """A "before" validator's check of a list of strings: one clear message for the first item
    that is not one (``hint`` says what the API takes), instead of pydantic's per-item noise."""
    if not isinstance(value, list):
        raise PydanticCustomError("list_type", "expected a list of strings")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise PydanticCustomError(
                "document",
                "item {index}: expected a string, got {kind} ({hint})",
                {"index": index, "kind": type(item).__name__, "hint": hint},
            )
    return value


def is_vllm_body(raw: dict[str, Any]) -> bool:
    return not VLLM_KEYS.isdisjoint(raw) or raw.get("top_n") == 0


def is_infinity_body(raw: dict[str, Any]) -> bool:
    return not INFINITY_KEYS.isdisjoint(raw)


class JinaRerankRequest(InfinityScoringOptions):
    """POST /v1/rerank: Jina's rerank API, which Cohere's v1 shares (rank_fields,
    max_chunks_per_doc), vLLM's and infinity's clients too. ``documents`` are strings or objects;
    objects come back whole."""

    model: Text | None = Field(default=None, description="ignored: the server answers with its own model")
    query: Text
    # Before documents: the documents validator reads it.
    rank_fields: list[Text] | None = Field(
        default=None,
        min_length=1,
        description='Cohere v1: the object fields scored, in order (default ["text"])',
    )
    documents: list[Text | DocumentObject]
    top_n: StrictInt | None = Field(default=None, ge=0, description="0 or absent: every document (vLLM)")
    return_documents: StrictBool | None = Field(
        default=None,
        description="default true (Jina); false for Cohere's SDK, Cohere-only fields, infinity's raw_scores",
    )
    max_chunks_per_doc: StrictInt | None = Field(
        default=None,
        ge=1,
        description="Cohere v1: accepted; each document is scored as one window of max_input_length tokens",
    )
    _texts: list[str] = PrivateAttr(default_factory=list)

    @field_validator("documents", mode="before")
    @classmethod
    def _documents(cls, value: Any, info: ValidationInfo) -> Any:
        # One clear message per bad item instead of one per branch of the union.
        if not isinstance(value, list):
            raise PydanticCustomError("list_type", 'expected a list of strings or {"text": string} objects')
        rank_fields = info.data.get("rank_fields") or ["text"]
        for index, item in enumerate(value):
            if isinstance(item, str):
                problem = describe_lone_surrogate(item)
            elif isinstance(item, dict):
                problem = _check_document_object(item, rank_fields, index)
            else:
                raise PydanticCustomError(
                    "document",
                    'item {index}: expected a string or an object with a string "text" field, got {kind}',
                    {"index": index, "kind": type(item).__name__},
                )
            if problem is not None:
                raise PydanticCustomError(
                    "unicode", "item {index} contains {problem}", {"index": index, "problem": problem}
                )
        return value

    @model_validator(mode="after")
    def _scored_texts(self) -> JinaRerankRequest:
        self._texts = [document_text(d, self.rank_fields) for d in self.documents]
        return self

    def texts(self) -> list[str]:
        return self._texts

    def cohere_only_fields(self) -> bool:
        return self.rank_fields is not None or self.max_chunks_per_doc is not None


def _check_document_object(item: dict[str, Any], rank_fields: list[str], index: int) -> str | None:
    """Raises for a missing or non-string rank field; returns what the response could not carry
    back, if anything (the object comes back whole)."""
    present = [field for field in rank_fields if field in item]
    if not present:
        wanted = '"text" field' if rank_fields == ["text"] else f"field of rank_fields {rank_fields}"
        raise PydanticCustomError(
            "document",
            "item {index}: expected a string or an object with a string {wanted}",
            {"index": index, "wanted": wanted},
        )
    for field in present:
        if not isinstance(item[field], str):
            raise PydanticCustomError(
                "document",
                "item {index}: field {field} must be a string to be ranked, got {kind}",
                {"index": index, "field": repr(field), "kind": type(item[field]).__name__},
            )
    return _unechoable(item)


class RelevantSpans(BaseModel):
    model_config = ConfigDict(extra="ignore")

    mode: Literal["enabled", "disabled"]


class CohereV2RerankRequest(VLLMScoringOptions):
    """POST /v2/rerank, as Cohere's v2 API defines it (vLLM's clients use it too): documents are
    strings, each cut to ``max_tokens_per_doc`` tokens (default 4096) before the pair is cut to
    max_input_length."""

    model: Text | None = Field(default=None, description="ignored: the server answers with its own model")
    query: Text
    documents: list[Text]
    top_n: StrictInt | None = Field(default=None, ge=0, description="0 or absent: every document (vLLM)")
    max_tokens_per_doc: StrictInt | None = Field(default=None, ge=1, description="default 4096")
    return_documents: StrictBool | None = Field(
        default=None,
        description="default false for Cohere's SDK (as Cohere answers), true otherwise (as vLLM answers)",
    )
    priority: StrictInt | None = Field(
        default=None, description="accepted and ignored: requests share forwards round-robin"
    )
    relevant_spans: RelevantSpans | None = Field(
        default=None, description='only "disabled": a cross-encoder scores whole documents'
    )

    @field_validator("documents", mode="before")
    @classmethod
    def _strings(cls, value: Any) -> Any:
        return strings_only(value, "Cohere v2 takes strings; /v1/rerank takes objects")

    @field_validator("relevant_spans")
    @classmethod
    def _no_spans(cls, value: RelevantSpans | None) -> RelevantSpans | None:
        if value is not None and value.mode == "enabled":
            raise PydanticCustomError(
                "unsupported", "not supported: this cross-encoder scores whole documents, without spans"
            )
        return value

    @property
    def document_token_limit(self) -> int:
        return COHERE_MAX_TOKENS_PER_DOC if self.max_tokens_per_doc is None else self.max_tokens_per_doc


class TEIRerankRequest(BaseModel):
    """POST /rerank (and POST /), as text-embeddings-inference defines it."""

    model_config = ConfigDict(extra="ignore")

    query: Text
    texts: list[Text]
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: StrictBool | None = None
    truncation_direction: Literal["right", "left"] = "right"

    @field_validator("truncation_direction", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value  # TEI spells it "Right" / "Left"
