"""Request bodies of the OpenAI-compatible API (the subset served), validated strictly.

Unknown fields are refused (``extra="forbid"``) rather than silently ignored: a client that sends a typo such
as ``max_token`` learns it at once (HTTP 400 naming the field); OpenAI fields this server does not implement
(``logprobs``, the penalties) are accepted only at the value that asks for nothing. Values are not
coerced (``strict=True``): ``"max_tokens": "5"``, ``true`` for a number or ``"yes"`` for ``stream`` are refused.
``null`` is accepted wherever OpenAI's API declares the field nullable (the ``openai`` client's params types) and
means the field's default, as there.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# Fields OpenAI declares nullable whose null means the default below (the others default to None already)
_NULL_IS_DEFAULT: dict[str, object] = {"temperature": 1.0, "top_p": 1.0, "n": 1, "stream": False,
                                       "presence_penalty": 0.0, "frequency_penalty": 0.0}


class _Common(_Strict):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None  # OpenAI: up to 4 sequences
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)  # what a torch generator takes
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)
    user: str | None = None
    stream_options: dict[str, bool] | None = None
    # OpenAI fields this server does not implement, accepted only at the value that asks for nothing
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool | int | None = None

    @field_validator(*_NULL_IS_DEFAULT, mode="before")
    @classmethod
    def _null_is_the_default(cls, value: object, info: ValidationInfo) -> object:
        # OpenAI declares these nullable (``temperature: null`` = 1); clients and frameworks send explicit nulls
        return _NULL_IS_DEFAULT[info.field_name] if value is None else value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float, info: ValidationInfo) -> float:
        if value:  # a field validator, so the error's loc (and the error object's "param") names the field
            raise ValueError(f"{info.field_name} is not served by this server (only 0 or null), got {value}")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | int | None) -> bool | int | None:
        # logprobs: 0 on /v1/completions still asks for the sampled token's logprob, so only null / false ask
        # for nothing
        if value is not None and value is not False:
            raise ValueError(f"logprobs is not served by this server (only null or false), got {value}")
        return value

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
    prompt: str | list[str] | list[int] | list[list[int]]  # text, or token ids as OpenAI takes them; one prompt


class TextPart(_Strict):
    """One part of a message's content given as a list (OpenAI's content parts); only text is served."""

    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]  # "developer": OpenAI's newer name for "system"
    content: str | Annotated[list[TextPart], Field(min_length=1)]
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _parts_as_text(cls, value: str | list[TextPart]) -> str:
        # text parts are joined with newlines (vLLM's rule; OpenAI does not publish one), so the guard and the
        # prompt template see one string whichever form the client sent
        return value if isinstance(value, str) else "\n".join(part.text for part in value)


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)  # OpenAI's current name for max_tokens
    # accepted only at the values that ask for nothing beyond plain text
    response_format: dict[str, str] | None = None
    top_logprobs: int | None = None

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and value != {"type": "text"}:
            raise ValueError(f"response_format is not served by this server (only {{'type': 'text'}} or null), "
                             f"got {value}")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _no_top_logprobs(cls, value: int | None) -> int | None:
        if value:
            raise ValueError(f"top_logprobs is not served by this server (only 0 or null), got {value}")
        return value

    @model_validator(mode="after")
    def _one_length_field(self) -> ChatRequest:
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None and self.max_tokens != self.max_completion_tokens:
                raise ValueError("give max_tokens or max_completion_tokens, not two different values")
            self.max_tokens = self.max_completion_tokens
        return self
