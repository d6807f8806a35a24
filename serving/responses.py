"""Response bodies in the OpenAI shapes: what the handlers send back (requests are in
serving/protocol.py). Required fields the spec marks required are present even when this server
has nothing to put there (`refusal: null`), since clients validate against the spec."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_serializer

from serving.protocol import FinishReason
from serving.token_ids import WithBothTokenIds, WithPromptTokenIds, WithTokenIds


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None  # the token's UTF-8 bytes: half a character is a valid token


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None
    refusal: list[ChatTokenLogprob] | None = None  # required by the spec; this model never refuses


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None  # required by the spec (null: no refusal)


class ChatChoice(WithTokenIds):
    index: int = 0
    message: ChatResponseMessage
    finish_reason: FinishReason
    logprobs: ChatLogprobs | None = None


class ChatCompletionResponse(WithPromptTokenIds):
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


class ChatChunkChoice(WithTokenIds):
    index: int = 0
    delta: DeltaMessage
    finish_reason: FinishReason | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(WithPromptTokenIds):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None  # sent only with stream_options.include_usage (see handlers)


class CompletionLogprobs(BaseModel):
    """The legacy shape: parallel lists, one entry per token. The first prompt token (echo) has
    no log-prob (nothing precedes it), hence the nulls."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(WithBothTokenIds):
    index: int = 0
    text: str
    finish_reason: FinishReason | None = None
    logprobs: CompletionLogprobs | None = None


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
    replay: dict[str, Any] | None = Field(None, description="Summary of the last replay of every evaluated item "
                                          "against a live server (python -m serving.replay), when given.")
    platform: dict[str, Any] | None = Field(None, description="The platform serving computes on, the one the "
                                            "release was evaluated on, whether they are one class (coverage: "
                                            "evaluated, attested, not_covered, unknown) and the platforms the "
                                            "release is attested on.")
    configuration: dict[str, Any] = Field(default_factory=lambda: {"name": "bundle"}, description="What is "
                                          "served: the bundle itself ({name: bundle}), or one of its evaluated "
                                          "exports ({name, kind, digest: sha256 of the export's record}).")


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
