"""OpenAI-compatible request models, response and stream-chunk builders, and error bodies.

Only what a serving system must honour is modelled; unknown fields are accepted and ignored, as vLLM does
with sampling options a simulated engine cannot act on. `n > 1` and batched prompts are refused with a
clear 400 rather than silently answered once.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .tokenizer import tokenize

# The one metric a worker exports beyond vLLM's own: 1 for the phase its last step ran in (phase="prefill",
# "decode" or "idle"). The router reads it from simulated and vLLM workers alike.
PHASE_METRIC = "ecoserve:engine_phase"


class APIError(Exception):
    """An error answered to the client with an OpenAI-style body."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.status)


def error_body(message: str, type_: str, param: str | None = None, code: int | str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _one_choice(self) -> _Request:
        if self.n != 1:
            raise ValueError("n > 1 is not supported: send one request per completion")
        return self

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_Request):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)

    @model_validator(mode="after")
    def _single_prompt(self) -> CompletionRequest:
        p = self.prompt
        if isinstance(p, list) and p and not isinstance(p[0], int):
            if len(p) != 1:
                raise ValueError("batched prompts are not supported: send one request per prompt")
            self.prompt = p[0]
        if not self.prompt_token_ids():
            raise ValueError("prompt must not be empty")
        return self

    def prompt_token_ids(self) -> list[int]:
        return tokenize(self.prompt) if isinstance(self.prompt, str) else list(self.prompt)  # type: ignore[arg-type]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return " ".join(str(part.get("text", "")) for part in self.content)
        return self.content or ""


def chat_token_ids(messages: list[ChatMessage]) -> list[int]:
    """Each message is its role word, then its content's words (our stand-in for a chat template)."""
    return [t for m in messages for t in tokenize(f"{m.role} {m.text()}")]


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def prompt_token_ids(self) -> list[int]:
        return chat_token_ids(self.messages)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class TokenizeRequest(BaseModel):
    """vLLM's /tokenize body: a prompt or chat messages."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    prompt: str | list[int] | None = None
    messages: list[ChatMessage] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` and `messages`")
        return self

    def token_ids(self) -> list[int]:
        if self.messages is not None:
            return chat_token_ids(self.messages)
        return tokenize(self.prompt) if isinstance(self.prompt, str) else list(self.prompt or [])


class Kind(StrEnum):
    COMPLETION = "completion"
    CHAT = "chat"


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclass(frozen=True, slots=True)
class ResponseBuilder:
    """Builds the bodies of one response, streamed or whole, in the shape of its API kind."""

    kind: Kind
    id: str
    model: str
    created: int

    @classmethod
    def new(cls, kind: Kind, model: str) -> ResponseBuilder:
        prefix = "cmpl" if kind is Kind.COMPLETION else "chatcmpl"
        return cls(kind, f"{prefix}-{uuid.uuid4().hex}", model, int(time.time()))

    def _envelope(self, chunk: bool) -> dict[str, Any]:
        if self.kind is Kind.COMPLETION:
            obj = "text_completion"
        else:
            obj = "chat.completion.chunk" if chunk else "chat.completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def role_chunk(self) -> dict[str, Any] | None:
        """Chat streams open with the assistant role; completions have no such chunk."""
        if self.kind is Kind.COMPLETION:
            return None
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        return self._envelope(True) | {"choices": [choice]}

    def chunk(self, text: str, finish_reason: str | None = None) -> dict[str, Any]:
        if self.kind is Kind.COMPLETION:
            choice = _completion_choice(text, finish_reason)
        else:
            delta = {"content": text} if text else {}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._envelope(True) | {"choices": [choice]}

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        return self._envelope(True) | {"choices": [], "usage": usage.as_dict()}

    def full(self, text: str, finish_reason: str | None, usage: Usage) -> dict[str, Any]:
        if self.kind is Kind.COMPLETION:
            choice = _completion_choice(text, finish_reason)
        else:
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        return self._envelope(False) | {"choices": [choice], "usage": usage.as_dict()}


def _completion_choice(text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event line as OpenAI streams use them."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


SSE_DONE = sse("[DONE]")


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """A one-line message and the offending parameter from pydantic's validation errors."""
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    return (f"{param}: {msg}" if param else msg), param
