"""vLLM's `return_token_ids` request extension (vLLM >= 0.10.2): the token ids behind the text.

Text cannot be compared with recorded token ids exactly (decoding is lossy: skipped special
tokens, bytes that form no character, equal texts from different ids), so a client that checks
what was served against what evaluation recorded asks for the ids. Names and placement follow
vLLM's protocol (vllm/entrypoints/openai/chat_completion/protocol.py and
completion/protocol.py), so a client written against vLLM reads them unchanged:

- chat: `prompt_token_ids` at the top level of the response, `token_ids` on each choice;
- completions: both on each choice (each choice has its own prompt);
- streams: `prompt_token_ids` only in the first chunk, `token_ids` on every choice chunk with
  the ids that chunk adds, so a stream's ids concatenate to the whole answer's.

`token_ids` are the generated ids the answer consumed (as many as usage.completion_tokens):
without the stop id that ended it, which is not part of the text either, and, when a stop
string ended it, up to the token that completed the stop string (the text stops before it),
as vLLM reports them; with echo they are still only the generated ids. (vLLM also drops the
echoed prompt text when ids are asked for; here echo keeps its OpenAI meaning.) Without the
flag the fields are absent, not null: they are not in OpenAI's schema, and a response must not
grow keys nobody asked for.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_serializer

_FIELDS = ("prompt_token_ids", "token_ids")


class ReturnTokenIds(BaseModel):
    """The request flag, on both /v1/chat/completions and /v1/completions."""

    return_token_ids: bool | None = Field(None, description="vLLM's extension: also return the prompt's and the "
                                          "completion's token ids (prompt_token_ids, token_ids).")


class _OmittedUnlessAsked(BaseModel):
    @model_serializer(mode="wrap")
    def _omit_unasked(self, handler: Any) -> dict[str, Any]:
        # Dropped when null (not asked for); otherwise moved last, after the OpenAI fields,
        # where vLLM has them too.
        data = handler(self)
        ids = {k: data.pop(k) for k in _FIELDS if k in data}
        data.update({k: v for k, v in ids.items() if v is not None})
        return data


class WithTokenIds(_OmittedUnlessAsked):
    token_ids: list[int] | None = None


class WithPromptTokenIds(_OmittedUnlessAsked):
    prompt_token_ids: list[int] | None = None


class WithBothTokenIds(WithTokenIds, WithPromptTokenIds):
    """Completion choices: vLLM puts the prompt's ids on the choice, next to its own ids."""
