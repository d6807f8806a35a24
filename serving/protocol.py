"""Request and response bodies in the OpenAI shapes (`*Request` in, `*Response` out).

Requests are strict (no "5" for 5, no true for 1) and forbid unknown fields: a parameter this
server would silently ignore (tools, logit_bias, ...) is a 400 naming it, not a response that
looks as if it had been honoured. Parameters the OpenAI API defines but this server cannot
honour beyond their neutral value (n, penalties, logprobs) are accepted only at that value.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel, ConfigDict, Field, ValidationError, ValidatorFunctionWrapHandler, field_validator, model_serializer,
    model_validator,
)

# OpenAI's own limit on stop sequences; more would make the per-token stop scan a cost.
MAX_STOP_SEQUENCES = 4

FinishReason = Literal["stop", "length"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _one_of(value: Any, handler: ValidatorFunctionWrapHandler, expected: str) -> Any:
    """Validate a union, reporting one plain sentence instead of an error per union member."""
    try:
        return handler(value)
    except ValidationError:
        raise ValueError(f"must be {expected}") from None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    # The roles the adapter was trained on; the chat template renders nothing else faithfully.
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    @field_validator("content", mode="wrap")
    @classmethod
    def _content(cls, v: Any, handler: ValidatorFunctionWrapHandler) -> str | list[TextPart]:
        return _one_of(v, handler, 'a string or a list of {"type": "text", "text": ...} parts')

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class _GenerationRequest(_Strict):
    """Fields /v1/chat/completions and /v1/completions share."""

    model: str
    max_tokens: int | None = Field(None, ge=1, description="Tokens to generate at most; default: the bundle's "
                                   "max_new_tokens capped by the context left after the prompt.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 = greedy; default: the bundle's.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus mass; default: the bundle's.")
    # The range torch.Generator.manual_seed takes; outside it the engine would fail the batch.
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1,
                             description="Seeds sampling, so a sampled request can be replayed.")
    stop: str | list[str] | None = Field(None, description="Text that ends the completion (not returned).")
    n: int = Field(1, description="Completions per request; only 1 is served.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    user: str | None = Field(None, description="Caller's end-user id; logged with the request id.")

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int) -> int:
        if v != 1:
            raise ValueError(f"n={v} is not supported: this server returns exactly one choice per request; "
                             "send separate requests (with different seeds) for more")
        return v

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v: float) -> float:
        if v != 0.0:
            raise ValueError("penalties are not supported (the evaluated decoding has none); use 0")
        return v

    @field_validator("stop", mode="wrap")
    @classmethod
    def _stop_type(cls, v: Any, handler: ValidatorFunctionWrapHandler) -> str | list[str] | None:
        return _one_of(v, handler, "a string or a list of strings")

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return v

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def include_usage_chunk(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="The newer name for max_tokens.")
    logprobs: bool = False

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v: bool) -> bool:
        if v:
            raise ValueError("logprobs are not served over HTTP; the parity probe checks them at startup")
        return v

    @model_validator(mode="after")
    def _one_budget_name(self) -> ChatCompletionRequest:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("give max_tokens or max_completion_tokens, not both")
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self


class CompletionRequest(_GenerationRequest):
    prompt: str = Field(min_length=1, description="Raw text, tokenized without a chat template.")


# -- responses --------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatResponseMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _only_set(self, handler: Any) -> dict[str, Any]:
        # OpenAI deltas carry only what changed: the role once, then content pieces.
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason | None = None
    logprobs: None = None


class CompletionResponse(BaseModel):
    """Both the whole /v1/completions answer and each of its stream chunks (OpenAI uses one
    shape for both; a chunk's finish_reason is null until the last)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tailgate"
    bundle_digest: str
    components: dict[str, Any] = Field(description="Digest of each piece: base files, adapter files, tokenizer "
                                       "files, chat template.")
    system_prompt: dict[str, Any] = Field(description="The bundle's pinned system prompt (text, null if none) "
                                          "and which requests it is applied to.")
    engine: dict[str, Any]
    max_context_tokens: int
    parity: dict[str, Any]
    release: dict[str, Any] | None = Field(None, description="The release being served (digest, time, commit, "
                                           "signature status); null for a bundle served with --allow-unreleased.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
