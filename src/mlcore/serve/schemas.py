"""Request bodies of the OpenAI-compatible API (the subset served), validated strictly.

Unknown fields are refused (``extra="forbid"``) rather than silently ignored: a client that sends
``logprobs`` or a typo such as ``max_token`` learns it at once (HTTP 400 naming the field). Values are not
coerced (``strict=True``): ``"max_tokens": "5"``, ``true`` for a number or ``"yes"`` for ``stream`` are refused.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Common(_Strict):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None  # OpenAI: up to 4 sequences
    seed: int | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)
    user: str | None = None
    stream_options: dict[str, bool] | None = None

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _Common:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream=true")
        return self

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(_Common):
    prompt: str | list[str]


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
