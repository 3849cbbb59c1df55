"""Request and response models of the HTTP API (they are the OpenAPI schema at /docs).

Requests forbid unknown fields, so a typo is a 422 rather than a silently ignored
option. The hard caps here are the schema's; `ServeConfig` may set lower ones.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ltray.config import ServeConfig

_LIMITS = ServeConfig()
MAX_K = _LIMITS.max_k
MAX_TEXT_CHARS = _LIMITS.max_text_chars
MAX_RECENT_ITEMS = _LIMITS.max_recent_items
MAX_ID_CHARS = 256

Segment = Literal["head", "tail", "cold"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(_Request):
    user_id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="a user id from training, or any "
                         "id together with recent_items")
    k: int = Field(20, ge=1, le=MAX_K, description="how many items to return")
    tail_share: float | None = Field(None, ge=0, le=1, description="least share of tail/cold items; "
                                     "None = the share chosen on validation")
    exclude_seen: bool = Field(True, description="leave out items the user interacted with")
    recent_items: list[str] | None = Field(None, max_length=MAX_RECENT_ITEMS,
                                           description="session items, most recent first; unknown ids "
                                           "are ignored and listed in the response")


class SearchRequest(_Request):
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="free-text query")
    k: int = Field(20, ge=1, le=MAX_K)
    segment: Segment | None = Field(None, description="only items of this segment")


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    segment: Segment
    source: Literal["cf", "tail", "bridge", "pop"]
    reason: str


class RecommendResponse(BaseModel):
    user_id: str
    items: list[RecommendedItem]
    fallback: bool = Field(description="true when the user is unknown and had no usable recent_items: "
                           "popular and diverse items instead of personal ones")
    tail_share: float = Field(description="the tail share the blend used")
    unknown_recent_items: list[str] = Field(description="recent_items not in the catalog (ignored)")
    version: str = Field(description="artifacts version that answered")


class ScoredItem(BaseModel):
    item_id: str
    score: float
    segment: Segment


class ItemsResponse(BaseModel):
    items: list[ScoredItem]
    version: str


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    ready: bool
    version: str | None
    stages: dict[str, str] = Field(description="version each stage deployment loaded")


class ErrorBody(BaseModel):
    detail: str | list
