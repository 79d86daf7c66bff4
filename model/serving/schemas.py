"""Request bodies of the two rerank APIs (Jina/Cohere `/v1/rerank`, text-embeddings-inference `/rerank`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator


class DocumentObject(BaseModel):
    text: StrictStr


class JinaRerankRequest(BaseModel):
    """POST /v1/rerank. ``documents`` are strings or {"text": ...} objects."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    query: StrictStr
    documents: list[StrictStr | DocumentObject]
    top_n: int | None = Field(default=None, ge=1)
    return_documents: StrictBool = True

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class TEIRerankRequest(BaseModel):
    """POST /rerank, as text-embeddings-inference defines it."""

    model_config = ConfigDict(extra="ignore")

    query: StrictStr
    texts: list[StrictStr]
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: StrictBool | None = None
    truncation_direction: Literal["right", "left"] = "right"

    @field_validator("truncation_direction", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value  # TEI spells it "Right" / "Left"
