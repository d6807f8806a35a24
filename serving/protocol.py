"""Request bodies in the OpenAI shapes (responses are in serving/responses.py).

Requests are strict (no "5" for 5, no true for 1) and forbid unknown fields: a parameter this
server would silently ignore (tools, a JSON response format, ...) is a 400 naming it, not a
response that looks as if it had been honoured. Parameters the OpenAI API defines that this
server cannot honour are still accepted at their neutral value, the one that changes nothing
(`n: 1`, penalties 0, `logit_bias: {}`, `response_format: {"type": "text"}`, `tools: []`, null
for any of them), because real clients send those by default. Field names, ranges and shapes
follow OpenAI's OpenAPI spec (openai/openai-openapi) and the official `openai` client's types.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel, ConfigDict, Field, ValidationError, ValidatorFunctionWrapHandler, field_validator,
    model_validator,
)

from serving.token_ids import ReturnTokenIds

# OpenAI's own limit on stop sequences; more would make the per-token stop scan a cost.
MAX_STOP_SEQUENCES = 4
# OpenAI's limits: alternatives per position on chat (top_logprobs) and completions (logprobs).
MAX_CHAT_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5
# Prompts in one /v1/completions request (each one is a row the batcher runs).
MAX_PROMPTS = 128

FinishReason = Literal["stop", "length"]

# OpenAI parameters that are accepted only when null (null means "the default": nothing to
# honour). Given a value they stay unknown fields, so the 400 names them.
_NULL_ONLY = frozenset({"audio", "prediction", "reasoning_effort", "verbosity", "web_search_options", "moderation",
                        "function_call", "functions", "prompt_cache_retention", "prompt_cache_options"})


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
    include_usage: bool | None = None
    include_obfuscation: bool | None = None

    @field_validator("include_obfuscation")
    @classmethod
    def _no_obfuscation(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError("stream obfuscation (random padding against traffic analysis) is not implemented; "
                             "send false or leave it out")
        return v


class _GenerationRequest(_Strict, ReturnTokenIds):
    """Fields /v1/chat/completions and /v1/completions share."""

    model: str
    max_tokens: int | None = Field(None, ge=1, description="Tokens to generate at most; default: the bundle's "
                                   "max_new_tokens capped by the context left after the prompt.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 = greedy; default: the bundle's.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus mass; default: the bundle's.")
    # The range torch.Generator.manual_seed takes; outside it the engine would fail the batch.
    # Greedy decoding ignores it, as it should: there is nothing random to seed.
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1,
                             description="Seeds sampling, so a sampled request can be replayed.")
    stop: str | list[str] | None = Field(None, description="Text that ends the completion (not returned).")
    n: int | None = Field(None, description="Completions per request; only 1 is served.")
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="Only 0 is served.")
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="Only 0 is served.")
    logit_bias: dict[str, int] | None = Field(None, description="Only an empty map (or all biases 0) is served.")
    user: str | None = Field(None, description="Caller's end-user id; logged with the request id.")

    @model_validator(mode="before")
    @classmethod
    def _drop_null_only(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (k in _NULL_ONLY and v is None)}
        return data

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int | None) -> int | None:
        if v is not None and v != 1:
            raise ValueError(f"n={v} is not supported: this server returns exactly one choice per request; "
                             "send separate requests (with different seeds) for more")
        return v

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v: float | None) -> float | None:
        if v:
            raise ValueError("penalties are not supported (the evaluated decoding has none); use 0")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        if v and any(bias != 0 for bias in v.values()):
            raise ValueError("logit biases are not supported (the evaluated decoding has none); send {} or leave "
                             "it out")
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
        return self.stream_options is not None and bool(self.stream_options.include_usage)


class ResponseFormat(_Strict):
    type: str

    @field_validator("type")
    @classmethod
    def _text_only(cls, v: str) -> str:
        if v != "text":
            raise ValueError(f"response_format {v!r} is not supported: this server does not constrain the output; "
                             "use {\"type\": \"text\"}")
        return v


_NO_TOOLS = "tool calling is not supported by this server; send no tools"
# Chat parameters served only at a neutral value: field -> (is it neutral, why not otherwise).
_CHAT_NEUTRAL: dict[str, tuple[Any, str]] = {
    "tools": (lambda v: v in (None, []), _NO_TOOLS),
    "tool_choice": (lambda v: v in (None, "none", "auto"), _NO_TOOLS),
    "modalities": (lambda v: v in (None, ["text"]), 'only text output is served: send ["text"] or leave it out'),
    "store": (lambda v: not v, "this server stores no completions; send false or leave it out"),
}


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="The newer name for max_tokens.")
    logprobs: bool | None = Field(None, description="Return each content token's log-prob.")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_CHAT_TOP_LOGPROBS,
                                     description="Most likely alternatives per position (needs logprobs: true).")
    response_format: ResponseFormat | None = None
    # Tool calling is not served; its empty or "no tool" values are (without tools, "auto"
    # can only mean "none", and parallel_tool_calls has nothing to act on).
    tools: list[Any] | None = Field(None, description="Only an empty list is served.")
    tool_choice: Any = Field(None, description="Only 'none' (or 'auto', which without tools is 'none').")
    parallel_tool_calls: bool | None = None
    modalities: list[str] | None = Field(None, description="Only [\"text\"].")
    store: bool | None = Field(None, description="Nothing is stored: only false is served.")
    metadata: dict[str, str] | None = Field(None, description="Accepted and ignored (tags for stored completions).")
    service_tier: Literal["auto", "default"] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("give max_tokens or max_completion_tokens, not both")
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self

    @field_validator(*_CHAT_NEUTRAL)
    @classmethod
    def _neutral(cls, v: Any, info: Any) -> Any:
        is_neutral, why = _CHAT_NEUTRAL[info.field_name]
        if not is_neutral(v):
            raise ValueError(why)
        return v

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, v: int | None, info: Any) -> int | None:
        if v and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return v


class CompletionRequest(_GenerationRequest):
    # OpenAI's four prompt shapes: text, texts, token ids, lists of token ids.
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="Raw text (tokenized without a chat template) or token ids; a list gives one choice each.")
    max_tokens: int | None = Field(None, ge=0, description="Tokens to generate at most (0: only score or echo the "
                                   "prompt); default: the bundle's max_new_tokens capped by the context left.")
    echo: bool | None = Field(None, description="Return the prompt in front of the completion (with its log-probs "
                              "when logprobs is set).")
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS,
                                 description="Log-probs of each token plus this many alternatives per position.")
    best_of: int | None = Field(None, description="Only 1 is served.")
    suffix: str | None = Field(None, description="Insertion is not served: only an empty suffix.")

    @field_validator("prompt", mode="wrap")
    @classmethod
    def _prompt_type(cls, v: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return _one_of(v, handler, "a string, a list of strings, a list of token ids or a list of lists of token ids")

    @field_validator("prompt")
    @classmethod
    def _prompt_sizes(cls, v: Any) -> Any:
        prompts = [v] if isinstance(v, str) or (v and isinstance(v[0], int)) else v
        if not prompts:
            raise ValueError("must not be empty")
        if len(prompts) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("prompts must not be empty")
        return v

    @field_validator("best_of")
    @classmethod
    def _one_candidate(cls, v: int | None) -> int | None:
        if v is not None and v != 1:
            raise ValueError(f"best_of={v} is not supported: one completion is generated per prompt")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("suffix (insertion) is not supported by this model")
        return v

    def prompts(self) -> list[str | list[int]]:
        """One entry per choice: a text, or token ids."""
        p = self.prompt
        return [p] if isinstance(p, str) or isinstance(p[0], int) else list(p)  # type: ignore[list-item]
