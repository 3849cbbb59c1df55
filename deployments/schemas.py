"""Request and response models of the HTTP API (they are the OpenAPI schema at /docs).

Requests forbid unknown fields, so a typo is a 422 rather than a silently ignored
option. Types are strict (`"k": "5"` and `"exclude_seen": 0` are 422), numbers must be finite
and strings valid Unicode (no lone surrogates); ids are strings, or integers taken as their
decimal form (JSON clients send `42`). The hard caps here are the schema's; `ServeConfig` may set
lower ones.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from ltray.config import ServeConfig

_LIMITS = ServeConfig()
MAX_K = _LIMITS.max_k
MAX_TEXT_CHARS = _LIMITS.max_text_chars
MAX_RECENT_ITEMS = _LIMITS.max_recent_items
MAX_ID_CHARS = 256

Segment = Literal["head", "tail", "cold"]
Source = Literal["cf", "item", "tail", "bridge", "pop"]  # ltray.candidates.SOURCES (a test keeps them equal)


def _valid_unicode(s: str) -> str:
    """A lone surrogate (JSON `"\\ud800"`) is no character: it could not even be written back as UTF-8."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise PydanticCustomError("lone_surrogate", "String holds a lone surrogate at position {position}",
                                  {"position": e.start}) from None
    return s


def _id_from_int(v):
    # bool is an int in Python, but `true` is no id
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


Text = Annotated[StrictStr, AfterValidator(_valid_unicode)]
Id = Annotated[Text, Field(min_length=1, max_length=MAX_ID_CHARS), BeforeValidator(_id_from_int),
               WithJsonSchema({"anyOf": [{"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS},
                                         {"type": "integer"}]})]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(_Request):
    user_id: Id = Field(description="a user id from training, or any id together with recent_items")
    k: StrictInt = Field(20, ge=1, le=MAX_K, description="how many items to return")
    tail_share: float | None = Field(None, ge=0, le=1, strict=True, allow_inf_nan=False,
                                     description="least share of tail/cold items; None = the share chosen "
                                     "on validation")
    exclude_seen: StrictBool = Field(True, description="leave out items the user interacted with")
    recent_items: list[Id] | None = Field(None, max_length=MAX_RECENT_ITEMS,
                                          description="session items, most recent first; unknown ids "
                                          "are ignored and listed in the response")


class SearchRequest(_Request):
    text: Text = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="free-text query")
    k: StrictInt = Field(20, ge=1, le=MAX_K)
    segment: Segment | None = Field(None, description="only items of this segment")


class RecommendedItem(BaseModel):
    item_id: str
    title: str | None = Field(None, description="the catalog's title column; null where it has none")
    score: float
    segment: Segment
    source: Source
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
    title: str | None = Field(None, description="the catalog's title column; null where it has none")
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
    detail: str | list = Field(description="a message, or (422) one entry per invalid field: loc, msg, type "
                               "and a short, JSON-safe echo of the input")
