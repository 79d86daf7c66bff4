"""Request bodies of the two rerank APIs (Jina/Cohere `/v1/rerank`, text-embeddings-inference `/rerank`).

Every field is strict (``top_n: "1"`` and ``top_n: true`` are refused like any other wrong type),
and every text must be valid Unicode: JSON's "\\ud800" escape decodes to a lone surrogate that no
tokenizer (nor the JSON encoder of the response) can take.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
)
from pydantic_core import PydanticCustomError

from turborank.unicode_text import describe_lone_surrogate


def _valid_unicode(text: str) -> str:
    problem = describe_lone_surrogate(text)
    if problem is not None:
        raise PydanticCustomError("unicode", "contains {problem}", {"problem": problem})
    return text


Text = Annotated[StrictStr, AfterValidator(_valid_unicode)]


class DocumentObject(BaseModel):
    text: Text


class JinaRerankRequest(BaseModel):
    """POST /v1/rerank. ``documents`` are strings or {"text": ...} objects."""

    model_config = ConfigDict(extra="ignore")

    model: Text | None = None
    query: Text
    documents: list[Text | DocumentObject]
    top_n: StrictInt | None = Field(default=None, ge=1)
    return_documents: StrictBool = True

    @field_validator("documents", mode="before")
    @classmethod
    def _documents(cls, value: Any) -> Any:
        # One clear message per bad item instead of one per branch of the union.
        if not isinstance(value, list):
            raise PydanticCustomError("list_type", 'expected a list of strings or {"text": string} objects')
        for index, item in enumerate(value):
            text = item.get("text") if isinstance(item, dict) else item
            if not isinstance(text, str):
                raise PydanticCustomError(
                    "document",
                    'item {index}: expected a string or an object with a string "text" field, got {kind}',
                    {"index": index, "kind": type(item).__name__},
                )
            problem = describe_lone_surrogate(text)
            if problem is not None:
                raise PydanticCustomError(
                    "unicode", "item {index} contains {problem}", {"index": index, "problem": problem}
                )
        return value

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class TEIRerankRequest(BaseModel):
    """POST /rerank, as text-embeddings-inference defines it."""

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
