"""vLLM's `return_token_ids` extension over a real server and the official `openai` client
(sent as `extra_body`, as a client written against vLLM sends it): the served ids are the ones
the engine generates for the same prompt ids, streamed deltas add up to them, the fields sit
where vLLM puts them, and without the flag they are absent. Also what /v1/models says about
the engine's batch invariance."""

from __future__ import annotations

import json

from pipeline.chat import encode_prompt, with_system
from pipeline.engines.base import GenerationRequest, SamplingParams

MESSAGES = [{"role": "user", "content": "Summarize: admitted with pneumonia, discharged on amoxicillin."}]
PROMPT = "Discharge summary: patient stable, home on day 3."
ASK = {"return_token_ids": True}


def greedy_ids(api, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """What the engine itself generates for these prompt ids (a batch of one, greedy)."""
    state = api.state
    [alone] = state.engine.generate([GenerationRequest(prompt_ids, SamplingParams(
        max_new_tokens=max_new_tokens, stop_token_ids=state.stop_token_ids))])
    return alone.token_ids


def chat_prompt_ids(api) -> list[int]:
    # What the request encodes to: the bundle's pinned system prompt goes in front.
    return encode_prompt(api.state.engine.tokenizer, with_system(MESSAGES, api.state.system_prompt))


def text_ids(api, text: str) -> list[int]:
    return list(api.state.engine.tokenizer(text, add_special_tokens=False)["input_ids"])


def sse(response) -> list[dict]:
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


def test_chat_returns_the_prompt_ids_and_the_engines_generated_ids(oai, api, model):
    got = oai.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8, temperature=0, extra_body=ASK)
    choice = got.choices[0]
    prompt_ids = chat_prompt_ids(api)
    assert got.prompt_token_ids == prompt_ids  # top level on chat, as in vLLM
    assert len(prompt_ids) == got.usage.prompt_tokens
    assert choice.token_ids == greedy_ids(api, prompt_ids, 8)
    assert len(choice.token_ids) == got.usage.completion_tokens
    tokenizer = api.state.engine.tokenizer
    assert tokenizer.decode(choice.token_ids, skip_special_tokens=True) == choice.message.content
    assert "prompt_token_ids" not in choice.model_extra


def test_chat_stream_sends_the_prompt_ids_once_and_each_chunks_new_ids(oai, model):
    kwargs = dict(model=model, messages=MESSAGES, max_tokens=8, temperature=0, extra_body=ASK)
    plain = oai.chat.completions.create(**kwargs)
    chunks = list(oai.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    first, *rest = chunks
    assert first.prompt_token_ids == plain.prompt_token_ids and first.choices[0].delta.role == "assistant"
    assert all("prompt_token_ids" not in c.model_extra for c in rest)
    streamed = [t for c in chunks for ch in c.choices for t in (ch.model_extra.get("token_ids") or [])]
    assert streamed == plain.choices[0].token_ids
    # Every content chunk says which ids it adds, and its text is theirs.
    for c in rest:
        for ch in c.choices:
            assert isinstance(ch.token_ids, list)
    assert "".join(ch.delta.content or "" for c in chunks for ch in c.choices) == plain.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(streamed)


def test_the_fields_are_absent_unless_asked(client, model):
    chat = {"model": model, "messages": MESSAGES, "max_tokens": 3, "temperature": 0}
    comp = {"model": model, "prompt": PROMPT, "max_tokens": 3, "temperature": 0}
    for flag in ({}, {"return_token_ids": False}, {"return_token_ids": None}):
        for path, body in (("/v1/chat/completions", chat), ("/v1/completions", comp)):
            whole = client.post(path, json={**body, **flag})
            assert whole.status_code == 200, whole.text
            for doc in (whole.json(), *sse(client.post(path, json={**body, **flag, "stream": True}))):
                assert "prompt_token_ids" not in doc
                assert all("token_ids" not in ch and "prompt_token_ids" not in ch for ch in doc["choices"])
    # The flag is a boolean like every other (strict requests: no "true" for true).
    bad = client.post("/v1/chat/completions", json={**chat, "return_token_ids": "true"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "return_token_ids"


def test_completions_put_both_on_each_choice(oai, api, model):
    as_ids = text_ids(api, "Home on day 2.")
    got = oai.completions.create(model=model, prompt=[PROMPT, "Admitted with sepsis."], max_tokens=6, temperature=0,
                                 extra_body=ASK)
    for choice, prompt in zip(got.choices, [PROMPT, "Admitted with sepsis."]):
        prompt_ids = text_ids(api, prompt)
        assert choice.prompt_token_ids == prompt_ids  # on the choice for completions, as in vLLM
        assert choice.token_ids == greedy_ids(api, prompt_ids, 6)
    assert "prompt_token_ids" not in got.model_extra
    assert sum(len(c.token_ids) for c in got.choices) == got.usage.completion_tokens
    # A prompt given as ids comes back as sent; echo keeps its text and the generated ids stay
    # the generated ones (vLLM's placement: the prompt's ids have their own field).
    echoed = oai.completions.create(model=model, prompt=as_ids, max_tokens=4, temperature=0, echo=True,
                                    extra_body=ASK).choices[0]
    assert echoed.prompt_token_ids == as_ids and echoed.token_ids == greedy_ids(api, as_ids, 4)
    assert echoed.text.startswith(api.state.engine.tokenizer.decode(as_ids))


def test_completions_stream_sends_the_prompt_ids_in_the_first_chunk(oai, model):
    kwargs = dict(model=model, prompt=PROMPT, max_tokens=6, temperature=0, extra_body=ASK)
    plain = oai.completions.create(**kwargs).choices[0]
    chunks = list(oai.completions.create(stream=True, **kwargs))
    [first_choice], rest = chunks[0].choices, chunks[1:]
    assert first_choice.prompt_token_ids == plain.prompt_token_ids
    assert all("prompt_token_ids" not in ch.model_extra for c in rest for ch in c.choices)
    assert [t for c in chunks for ch in c.choices for t in ch.token_ids] == plain.token_ids
    assert "".join(ch.text for c in chunks for ch in c.choices) == plain.text


def test_a_stop_string_keeps_the_ids_it_consumed_streamed_or_not(oai, api, model):
    """A stop string cuts the text, not the ids the answer consumed (as vLLM reports them): they
    run up to the token that completed the stop string, also when the held-back stop prefix and
    that token release no text at all (then a textless chunk carries the ids)."""
    tokenizer = api.state.engine.tokenizer
    # Sampled with a seed (it replays): the tiny model's greedy answer repeats one token.
    kwargs = dict(model=model, prompt=PROMPT, max_tokens=16, temperature=1.0, seed=3, extra_body=ASK)
    full = oai.completions.create(**kwargs).choices[0].token_ids
    texts = [tokenizer.decode(full[:n], skip_special_tokens=True) for n in range(len(full) + 1)]
    # A stop string that starts exactly where token j's text does and ends inside token j+1's
    # (whole characters around it: a trailing U+FFFD may be half a character, held back).
    picks = [(j, texts[j + 2][len(texts[j]):len(texts[j + 1]) + 1]) for j in range(len(full) - 1)
             if len(texts[j]) < len(texts[j + 1]) < len(texts[j + 2]) and texts[j + 2].startswith(texts[j + 1])
             and texts[j + 1].startswith(texts[j]) and "\ufffd" not in texts[j + 2][max(len(texts[j]) - 1, 0):]]
    j, stop = next((j, stop) for j, stop in picks if texts[-1].find(stop) == len(texts[j]))
    cut = oai.completions.create(stop=stop, **kwargs)
    choice = cut.choices[0]
    assert choice.finish_reason == "stop" and choice.text == texts[j]
    assert choice.token_ids == full[:j + 2] and cut.usage.completion_tokens == j + 2
    chunks = list(oai.completions.create(stream=True, stop=stop, **kwargs))
    assert [t for c in chunks for ch in c.choices for t in ch.token_ids] == choice.token_ids
    assert "".join(ch.text for c in chunks for ch in c.choices) == choice.text
    # The same on chat, streamed and not.
    chat = dict(model=model, messages=MESSAGES, max_tokens=16, temperature=1.0, seed=3, extra_body=ASK)
    answer = oai.chat.completions.create(**chat).choices[0]
    stop = answer.message.content[1:3]
    whole = oai.chat.completions.create(stop=stop, **chat)
    streamed = list(oai.chat.completions.create(stop=stop, stream=True, **chat))
    ids = whole.choices[0].token_ids
    assert ids == answer.token_ids[:len(ids)] and len(ids) == whole.usage.completion_tokens
    assert [t for c in streamed for ch in c.choices for t in (ch.model_extra.get("token_ids") or [])] == ids


def test_asked_for_the_responses_still_validate_as_openai_types(client, model):
    from openai.types import Completion
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    chat = {"model": model, "messages": MESSAGES, "max_tokens": 3, "temperature": 0, **ASK}
    ChatCompletion.model_validate(client.post("/v1/chat/completions", json=chat).json())
    for chunk in sse(client.post("/v1/chat/completions", json={**chat, "stream": True})):
        ChatCompletionChunk.model_validate(chunk)
    body = client.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 3, **ASK}).json()
    Completion.model_validate(body)


def test_models_say_the_engine_is_batch_invariant(client, model):
    [card] = client.get("/v1/models").json()["data"]
    assert card["engine"]["batch_invariant"] is True  # the default hf engine
    assert client.get(f"/v1/models/{model}").json()["engine"] == card["engine"]
    assert card.get("replay") is None  # no replay report given to this server
