"""OpenAI compatibility over a real server, checked against OpenAI's published OpenAPI spec
(github.com/openai/openai-openapi, openapi.yaml) and the official `openai` client.

Shapes: every kind of response (chat, chat chunks, completion, completion chunks, models,
errors) is validated with the `openai` package's own pydantic types (`model_validate`, which
checks types but leaves most fields optional), plus the spec's `required` lists for what those
types do not require (message.refusal, choice.logprobs, ...). Behaviour: stream usage per the
spec, neutral parameter values accepted and changing nothing, log-probs on chat and
completions (chosen token, alternatives, bytes, offsets, echo of the prompt's log-probs)
consistent with the engine's own numbers.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import httpx
import openai
import pytest
import torch
from openai.types import Completion, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from pipeline.chat import encode_prompt
from serving.errors import APIError
from serving.probe import LOGPROB_TOLERANCE_NATS

MESSAGES = [{"role": "user", "content": "Summarize: admitted with pneumonia, discharged on amoxicillin."}]
PROMPT = "Discharge summary: patient stable, home on day 3."

# The spec's `required` lists (openapi.yaml), for the fields the client's types leave optional.
REQUIRED = {
    "chat": ("choices", "created", "id", "model", "object"),
    "chat_choice": ("finish_reason", "index", "message", "logprobs"),
    "message": ("role", "content", "refusal"),
    "chat_logprobs": ("content", "refusal"),
    "token_logprob": ("token", "logprob", "bytes", "top_logprobs"),
    "top_logprob": ("token", "logprob", "bytes"),
    "chunk_choice": ("delta", "finish_reason", "index"),
    "completion": ("id", "object", "created", "model", "choices"),
    "completion_choice": ("finish_reason", "index", "logprobs", "text"),
    "model": ("id", "object", "created", "owned_by"),
    "model_list": ("object", "data"),
    "error": ("type", "message", "param", "code"),
}


def has(obj: dict, kind: str) -> None:
    missing = [k for k in REQUIRED[kind] if k not in obj]
    assert not missing, f"{kind} lacks required {missing}: {json.dumps(obj)[:300]}"


def check_chat(body: dict) -> None:
    ChatCompletion.model_validate(body)
    has(body, "chat")
    for choice in body["choices"]:
        has(choice, "chat_choice")
        has(choice["message"], "message")
        assert choice["message"]["refusal"] is None
        check_chat_logprobs(choice["logprobs"])


def check_chat_logprobs(lp: dict | None) -> None:
    if lp is None:
        return
    has(lp, "chat_logprobs")
    for item in lp["content"]:
        has(item, "token_logprob")
        for alt in item["top_logprobs"]:
            has(alt, "top_logprob")


def check_chunk(body: dict) -> None:
    ChatCompletionChunk.model_validate(body)
    has(body, "chat")
    for choice in body["choices"]:
        has(choice, "chunk_choice")
        check_chat_logprobs(choice.get("logprobs"))


def check_completion(body: dict, chunk: bool = False) -> None:
    """Two nulls the spec's schema and the client's types do not allow, yet OpenAI's API sends
    (and vLLM, and lm-eval reads): a stream chunk's finish_reason before the last chunk (the spec
    shares one schema for chunks and whole answers), and the first echoed prompt token's
    log-prob (nothing predicts it; dropping it would shift every index lm-eval slices by). They
    are checked here and stood in for before validating the rest with the client's type."""
    body = json.loads(json.dumps(body))
    for choice in body["choices"]:
        if chunk:
            assert choice["finish_reason"] in (None, "stop", "length")
            choice["finish_reason"] = choice["finish_reason"] or "length"
        lp = choice.get("logprobs")
        if lp and lp["token_logprobs"] and lp["token_logprobs"][0] is None:
            assert lp["text_offset"][0] == 0 and lp["top_logprobs"][0] is None  # the echo's first token
            lp["token_logprobs"][0], lp["top_logprobs"][0] = 0.0, {}
        if lp:
            assert None not in lp["token_logprobs"] and None not in lp["top_logprobs"]
    Completion.model_validate(body)
    has(body, "completion")
    for choice in body["choices"]:
        has(choice, "completion_choice")


def sse(response: httpx.Response) -> list[dict]:
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


def test_every_response_kind_validates_against_the_openai_types_and_spec(client, model):
    chat = {"model": model, "messages": MESSAGES, "max_tokens": 4, "temperature": 0}
    check_chat(client.post("/v1/chat/completions", json=chat).json())
    check_chat(client.post("/v1/chat/completions", json={**chat, "logprobs": True, "top_logprobs": 2}).json())
    for extra in ({}, {"stream_options": {"include_usage": True}}, {"logprobs": True, "top_logprobs": 1}):
        for chunk in sse(client.post("/v1/chat/completions", json={**chat, "stream": True, **extra})):
            check_chunk(chunk)
    comp = {"model": model, "prompt": PROMPT, "max_tokens": 4, "temperature": 0}
    for extra in ({}, {"logprobs": 2}, {"echo": True, "logprobs": 1}, {"prompt": [PROMPT, "Home."]}):
        check_completion(client.post("/v1/completions", json={**comp, **extra}).json())
    for extra in ({}, {"stream_options": {"include_usage": True}}, {"echo": True, "logprobs": 0}):
        for chunk in sse(client.post("/v1/completions", json={**comp, "stream": True, **extra})):
            check_completion(chunk, chunk=True)
    listing = client.get("/v1/models").json()
    has(listing, "model_list")
    for card in listing["data"]:
        Model.model_validate(card)
        has(card, "model")
    Model.model_validate(client.get(f"/v1/models/{model}").json())
    for r in (client.post("/v1/chat/completions", json={**chat, "n": 3}),
              client.post("/v1/chat/completions", json={**chat, "model": "nope"}),
              client.get("/v1/models/nope")):
        assert r.status_code in (400, 404)
        has(r.json()["error"], "error")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_stream_usage_is_absent_unless_asked_then_null_until_the_last_chunk(client, model, path):
    body = {"model": model, "max_tokens": 3, "temperature": 0, "stream": True,
            **({"messages": MESSAGES} if "chat" in path else {"prompt": PROMPT})}
    plain = sse(client.post(path, json=body))
    assert plain and all("usage" not in c for c in plain)
    counted = sse(client.post(path, json={**body, "stream_options": {"include_usage": True}}))
    assert all("usage" in c for c in counted)
    *rest, last = counted
    assert all(c["usage"] is None for c in rest)
    assert last["choices"] == [] and last["usage"]["total_tokens"] == (
        last["usage"]["prompt_tokens"] + last["usage"]["completion_tokens"])
    # and the chunks before it are those of the stream without the option
    assert [c.get("choices") for c in plain] == [c.get("choices") for c in rest]


NEUTRAL_CHAT = {"response_format": {"type": "text"}, "logit_bias": {}, "n": 1, "presence_penalty": 0,
                "frequency_penalty": 0.0, "seed": 123, "tools": [], "tool_choice": "none", "logprobs": False,
                "top_logprobs": 0, "user": "u-1", "store": False, "metadata": {"k": "v"}, "modalities": ["text"],
                "service_tier": "auto", "stream": False, "stop": None, "audio": None, "prediction": None,
                "reasoning_effort": None, "parallel_tool_calls": True, "prompt_cache_key": "k",
                "safety_identifier": "s", "stream_options": None}
NEUTRAL_COMPLETION = {"logit_bias": {"17": 0}, "n": 1, "best_of": 1, "presence_penalty": 0.0, "frequency_penalty": 0,
                      "seed": 5, "suffix": None, "echo": False, "logprobs": None, "user": "u-1", "stream": None}


def test_neutral_values_clients_send_are_accepted_and_change_nothing(client, model):
    chat = {"model": model, "messages": MESSAGES, "max_tokens": 6, "temperature": 0}
    plain = client.post("/v1/chat/completions", json=chat).json()
    neutral = client.post("/v1/chat/completions", json={**chat, **NEUTRAL_CHAT})
    assert neutral.status_code == 200, neutral.text
    assert neutral.json()["choices"][0]["message"] == plain["choices"][0]["message"]
    comp = {"model": model, "prompt": PROMPT, "max_tokens": 6, "temperature": 0}
    plain = client.post("/v1/completions", json=comp).json()
    neutral = client.post("/v1/completions", json={**comp, **NEUTRAL_COMPLETION})
    assert neutral.status_code == 200, neutral.text
    assert neutral.json()["choices"][0]["text"] == plain["choices"][0]["text"]


@pytest.mark.parametrize(("change", "param"), [
    ({"best_of": 2}, "best_of"),
    ({"suffix": "tail"}, "suffix"),
    ({"logprobs": 6}, "logprobs"),
    ({"logit_bias": {"17": 5}}, "logit_bias"),
    ({"frequency_penalty": 0.1}, "frequency_penalty"),
    ({"n": 2}, "n"),
    ({"prompt": [PROMPT, "x"], "stream": True}, "prompt"),
    ({"prompt": [1, 2, -3]}, "prompt"),
], ids=lambda v: str(v)[:40])
def test_what_would_change_the_answer_is_an_openai_shaped_400(client, model, change, param):
    r = client.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 2, **change})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"


def test_chat_logprobs_are_the_engines_with_alternatives_and_bytes(client, model, served):
    body = {"model": model, "messages": MESSAGES, "max_tokens": 8, "temperature": 0, "logprobs": True,
            "top_logprobs": 3}
    got = client.post("/v1/chat/completions", json=body).json()
    choice = got["choices"][0]
    items = choice["logprobs"]["content"]
    assert choice["logprobs"]["refusal"] is None
    assert len(items) == got["usage"]["completion_tokens"]
    # The tokens' bytes spell the content exactly (whole characters or not).
    assert b"".join(bytes(it["bytes"]) for it in items).decode("utf-8") == choice["message"]["content"]
    for it in items:
        tops = it["top_logprobs"]
        assert len(tops) == 3 and [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)
        # greedy: the chosen token is the most likely one
        assert tops[0]["bytes"] == it["bytes"] and tops[0]["logprob"] == it["logprob"]
    # The chosen log-probs are the engine's own (batch of one, as the golden replay runs).
    from pipeline.engines.base import GenerationRequest, SamplingParams

    ids = encode_prompt(served.engine.tokenizer, [{"role": "system", "content":
                                                    served.bundle.manifest.tokenizer.system_prompt}, *MESSAGES])
    [alone] = served.engine.generate([GenerationRequest(ids, SamplingParams(
        max_new_tokens=8, stop_token_ids=tuple(served.bundle.manifest.tokenizer.stop_token_ids)))])
    assert [it["logprob"] for it in items] == pytest.approx(alone.logprobs, abs=LOGPROB_TOLERANCE_NATS)
    # Streamed, the same log-probs arrive with the pieces that release their text.
    streamed = [it for c in sse(client.post("/v1/chat/completions", json={**body, "stream": True}))
                for ch in c["choices"] if ch.get("logprobs") for it in ch["logprobs"]["content"]]
    assert streamed == items


def test_sampled_chat_logprob_bytes_spell_split_characters(client, model):
    # The random tiny model samples arbitrary byte tokens: characters split over tokens occur.
    body = {"model": model, "messages": MESSAGES, "max_tokens": 24, "temperature": 1.0, "seed": 7,
            "logprobs": True}
    choice = client.post("/v1/chat/completions", json=body).json()["choices"][0]
    items = choice["logprobs"]["content"]
    assert all(it["top_logprobs"] == [] for it in items)
    spelled = b"".join(bytes(it["bytes"]) for it in items)
    assert spelled.decode("utf-8", errors="replace") == choice["message"]["content"]
    assert any(it["token"].startswith("bytes:") for it in items) or "\ufffd" not in choice["message"]["content"]


def test_completion_logprobs_offsets_and_alternatives(client, model):
    body = {"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0, "logprobs": 2}
    got = client.post("/v1/completions", json=body).json()
    choice = got["choices"][0]
    lp = choice["logprobs"]
    n = len(lp["tokens"])
    stopped = choice["finish_reason"] == "stop"
    # one entry per generated token, plus the stop token that ended it (as OpenAI-style servers do)
    assert n == got["usage"]["completion_tokens"] + (1 if stopped else 0)
    assert len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == n
    assert lp["text_offset"] == sorted(lp["text_offset"])
    assert all(0 <= o <= len(choice["text"]) for o in lp["text_offset"])
    for chosen, tok, top in zip(lp["token_logprobs"], lp["tokens"], lp["top_logprobs"]):
        assert 1 <= len(top) <= 3 and top[tok] == chosen and max(top.values()) == chosen  # greedy
    streamed = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for c in sse(client.post("/v1/completions", json={**body, "stream": True})):
        for ch in c["choices"]:
            for k in streamed:
                streamed[k] += (ch["logprobs"] or {}).get(k, [])
    assert streamed == lp


def test_echo_with_max_tokens_0_scores_the_prompt_like_the_engine(client, model, served):
    tok, engine = served.engine.tokenizer, served.engine
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    got = client.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 0, "echo": True,
                                               "logprobs": 1}).json()
    choice = got["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"] == PROMPT and choice["finish_reason"] == "length"
    assert got["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}
    assert len(lp["tokens"]) == len(ids) and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert "".join(lp["tokens"]) == PROMPT and lp["text_offset"][0] == 0
    assert [PROMPT[o:o + len(t)] for o, t in zip(lp["text_offset"], lp["tokens"])] == lp["tokens"]
    # Exactly the engine's prompt log-probs (the same prefill of the whole prompt, alone) ...
    with engine.lock, torch.inference_mode():
        _, every = engine.start(ids, all_positions=True)
    whole = torch.log_softmax(every[:-1].float(), dim=-1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    assert lp["token_logprobs"][1:] == whole.tolist()
    # ... and, within a summation order (bf16 tiny model), the engine's scoring, which prefills
    # the context alone and runs the continuation over its cache
    for k in (1, len(ids) // 2, len(ids) - 1):
        [(total, greedy)] = engine.loglikelihood([(ids[:k], ids[k:])])
        assert sum(lp["token_logprobs"][k:]) == pytest.approx(total, abs=1e-2)
        assert greedy == all(max(top.values()) == chosen for chosen, top in
                             zip(lp["token_logprobs"][k:], lp["top_logprobs"][k:]))
    # Token ids in, the same scores out; max_tokens 1 adds the one generated (or stop) token.
    by_ids = client.post("/v1/completions", json={"model": model, "prompt": ids, "max_tokens": 0, "echo": True,
                                                  "logprobs": 1}).json()["choices"][0]
    assert by_ids["text"] == PROMPT and by_ids["logprobs"] == lp
    one = client.post("/v1/completions", json={"model": model, "prompt": [ids, ids[:5]], "max_tokens": 1,
                                               "echo": True, "logprobs": 1, "temperature": 0}).json()
    assert [c["index"] for c in one["choices"]] == [0, 1]
    assert len(one["choices"][0]["logprobs"]["tokens"]) == len(ids) + 1
    assert one["choices"][0]["logprobs"]["token_logprobs"][:-1] == lp["token_logprobs"]
    assert len(one["choices"][1]["logprobs"]["tokens"]) == 5 + 1


def test_echo_without_logprobs_and_streamed_echo(client, model):
    plain = client.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 4,
                                                  "temperature": 0}).json()["choices"][0]["text"]
    echoed = client.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 4,
                                                   "temperature": 0, "echo": True}).json()["choices"][0]["text"]
    assert echoed == PROMPT + plain
    assert client.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 0, "echo": True}
                       ).json()["choices"][0]["text"] == PROMPT
    for extra in ({}, {"logprobs": 1}):
        chunks = sse(client.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 4,
                                                          "temperature": 0, "echo": True, "stream": True, **extra}))
        assert "".join(ch["text"] for c in chunks for ch in c["choices"]) == echoed


def test_several_prompts_answer_as_each_alone(client, model):
    prompts = [PROMPT, "Allergies: none.", "Follow-up in two weeks."]
    alone = [client.post("/v1/completions", json={"model": model, "prompt": p, "max_tokens": 5, "temperature": 0}
                         ).json() for p in prompts]
    together = client.post("/v1/completions", json={"model": model, "prompt": prompts, "max_tokens": 5,
                                                     "temperature": 0}).json()
    assert [c["text"] for c in together["choices"]] == [a["choices"][0]["text"] for a in alone]
    assert together["usage"]["total_tokens"] == sum(a["usage"]["total_tokens"] for a in alone)


def test_engines_without_the_continuous_loop_refuse_alternatives_and_prompt_scores(served):
    """The Engine interface gives only the chosen token's log-prob; alternatives and prompt
    log-probs come from the continuous loop, so other engines get a 400, not made-up numbers."""
    from serving.generation import prepare
    from serving.protocol import ChatCompletionRequest, CompletionRequest

    state = SimpleNamespace(engine=SimpleNamespace(max_context_tokens=64, name="vllm"),
                            batcher=SimpleNamespace(continuous=False), manifest=served.bundle.manifest,
                            stop_token_ids=(2,))
    chat = ChatCompletionRequest(model="m", messages=MESSAGES, logprobs=True, top_logprobs=2)
    with pytest.raises(APIError) as err:
        prepare(state, chat, [1, 2, 3], "messages", logprobs=True, top_logprobs=2)
    assert err.value.status == 400 and err.value.param == "top_logprobs"
    comp = CompletionRequest(model="m", prompt="x", echo=True, logprobs=0, max_tokens=0)
    with pytest.raises(APIError) as err:
        prepare(state, comp, [1, 2, 3], "prompt", logprobs=True, score_prompt=True)
    assert err.value.status == 400 and err.value.param == "logprobs"
    # the chosen token's log-prob alone is available from any engine
    assert prepare(state, chat, [1, 2, 3], "messages", logprobs=True, top_logprobs=0).logprobs


def test_the_official_client_reads_logprobs_and_echo(oai, model):
    chat = oai.chat.completions.create(model=model, messages=MESSAGES, max_tokens=3, temperature=0, logprobs=True,
                                       top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert chat.choices[0].message.refusal is None and len(content) == chat.usage.completion_tokens
    assert all(len(c.top_logprobs) == 2 for c in content)
    echo = oai.completions.create(model=model, prompt=PROMPT, max_tokens=0, echo=True, logprobs=1)
    assert echo.choices[0].text == PROMPT and echo.choices[0].logprobs.token_logprobs[0] is None
    chunks = list(oai.chat.completions.create(model=model, messages=MESSAGES, max_tokens=3, temperature=0,
                                              stream=True))
    assert all(c.usage is None for c in chunks)
