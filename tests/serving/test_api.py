"""The OpenAI-compatible API over a real server and real clients (the official `openai` client
and raw HTTP): answers, streams, stops, usage, the model card, errors, and batching."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.chat import encode_prompt
from serving.probe import LOGPROB_TOLERANCE_NATS

SYSTEM = "You summarize discharge notes."


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from a /metrics body, read with prometheus_client's own parser (0 when
    the series does not exist yet)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def stream_chat(oai_client, **kwargs) -> tuple[list[str], str | None, object]:
    pieces, finish, usage = [], None, None
    for chunk in oai_client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    return pieces, finish, usage


def test_models_report_the_bundle_and_its_components(client, oai, served, model):
    m = served.bundle.manifest
    [card] = client.get("/v1/models").json()["data"]
    assert card["id"] == model == f"tailgate-{m.bundle_digest[:12]}"
    assert card["bundle_digest"] == m.bundle_digest
    components = card["components"]
    assert components["base"]["files"] == {k: v.sha256 for k, v in m.base.files.items()}
    assert components["adapter"]["files"] == {k: v.sha256 for k, v in m.adapter.files.items()}
    assert components["tokenizer"]["files"] == {k: v.sha256 for k, v in m.tokenizer.files.items()}
    assert components["chat_template_sha256"] == m.tokenizer.chat_template_sha256
    assert components["adapter"]["base_digest"] == m.adapter.base_digest
    parity = card["parity"]
    assert parity["status"] == "passed" and parity["prompts"] == 2
    assert 0.0 <= parity["max_abs_logprob_diff"] <= LOGPROB_TOLERANCE_NATS
    assert [x.id for x in oai.models.list().data] == [model]
    assert oai.models.retrieve(model).id == model
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("tailgate-000000000000")


def test_health_ready_and_metrics(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["parity"]["status"] == "passed"
    assert len(ready.headers["x-request-id"]) > 8
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"] == prometheus_client.CONTENT_TYPE_LATEST
    for line in ("# TYPE tailgate_requests_total counter", "# TYPE tailgate_request_latency_seconds histogram",
                 "# TYPE tailgate_queue_depth gauge", "# TYPE tailgate_generated_tokens_total counter"):
        assert line in metrics.text
    assert sample(metrics.text, "tailgate_requests_total", endpoint="/ready", status="200") >= 1


def test_metrics_move_with_real_requests(client, oai, model):
    """/metrics read with prometheus_client's parser, before and after three real requests."""
    before = client.get("/metrics").text
    a = oai.chat.completions.create(model=model, messages=chat("Stable, home."), max_tokens=3, temperature=0)
    b = oai.completions.create(model=model, prompt="Discharge summary:", max_tokens=2, temperature=0)
    assert client.post("/v1/chat/completions", json={"model": model, "messages": []}).status_code == 400
    after = client.get("/metrics").text

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("tailgate_requests_total", endpoint="/v1/chat/completions", status="200") == 1
    assert delta("tailgate_requests_total", endpoint="/v1/chat/completions", status="400") == 1
    assert delta("tailgate_requests_total", endpoint="/v1/completions", status="200") == 1
    assert delta("tailgate_request_latency_seconds_count", endpoint="/v1/chat/completions") == 2
    assert delta("tailgate_request_latency_seconds_sum", endpoint="/v1/completions") > 0
    assert delta("tailgate_prompt_tokens_total") == a.usage.prompt_tokens + b.usage.prompt_tokens
    assert delta("tailgate_generated_tokens_total") == a.usage.completion_tokens + b.usage.completion_tokens
    assert delta("tailgate_batch_size_count") >= 2  # at least one decode step or batch per request
    assert sample(after, "tailgate_queue_depth") == 0


def test_chat_greedy_stream_equals_plain(oai, served, model):
    messages = chat("Patient admitted with chest pain; discharged on aspirin.")
    plain = oai.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=0)
    choice = plain.choices[0]
    prompt_tokens = len(encode_prompt(served.engine.tokenizer, messages))
    assert plain.id.startswith("chatcmpl-") and plain.system_fingerprint == served.bundle.manifest.bundle_digest
    assert choice.message.role == "assistant" and choice.finish_reason in ("length", "stop")
    assert plain.usage.prompt_tokens == prompt_tokens
    assert plain.usage.total_tokens == prompt_tokens + plain.usage.completion_tokens
    assert plain.usage.completion_tokens == 6 or choice.finish_reason == "stop"

    pieces, finish, usage = stream_chat(oai, model=model, messages=messages, max_tokens=6, temperature=0)
    assert "".join(pieces) == choice.message.content
    assert finish == choice.finish_reason
    assert usage.model_dump() == plain.usage.model_dump()
    # A vanishing temperature is greedy, not an overflow that fails the engine batch.
    tiny_t = oai.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=1e-30)
    assert tiny_t.choices[0].message.content == choice.message.content


def test_sampled_stream_equals_plain_with_utf8_held_back(oai, model):
    # The random tiny model samples arbitrary byte-level tokens, so characters split across
    # tokens (U+FFFD when decoded alone) really occur here.
    kwargs = dict(model=model, messages=chat("Summarize: fever, cough."), max_tokens=16, temperature=1.0, seed=7)
    plain = oai.chat.completions.create(**kwargs).choices[0].message.content
    pieces, finish, _ = stream_chat(oai, **kwargs)
    assert "".join(pieces) == plain and finish == "length"
    assert oai.chat.completions.create(**kwargs).choices[0].message.content == plain  # the seed replays


def test_stop_string_ends_the_text_and_is_not_returned(oai, model):
    kwargs = dict(model=model, messages=chat("Summarize: broken wrist, cast."), max_tokens=16, temperature=1.0,
                  seed=11)
    full = oai.chat.completions.create(**kwargs).choices[0].message.content
    stop = next(full[i:i + 2] for i in range(1, len(full) - 1)
                if "\ufffd" not in full[i:i + 2] and full.find(full[i:i + 2]) == i)
    expected = full[:full.find(stop)]
    cut = oai.chat.completions.create(stop=[stop, "never-appears"], **kwargs)
    assert cut.choices[0].message.content == expected and cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < 16
    pieces, finish, _ = stream_chat(oai, stop=stop, **kwargs)
    assert "".join(pieces) == expected and finish == "stop"


def test_completions_plain_and_stream(oai, served, model):
    prompt = "Discharge summary:"
    plain = oai.completions.create(model=model, prompt=prompt, max_tokens=5, temperature=0)
    assert plain.object == "text_completion" and plain.id.startswith("cmpl-")
    assert plain.usage.prompt_tokens == len(served.engine.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    pieces, finish = [], None
    for chunk in oai.completions.create(model=model, prompt=prompt, max_tokens=5, temperature=0, stream=True):
        pieces.append(chunk.choices[0].text)
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == plain.choices[0].text and finish == plain.choices[0].finish_reason


def test_default_max_tokens_is_capped_by_the_remaining_context(client, served, model):
    tok, context = served.engine.tokenizer, served.engine.max_context_tokens
    words = 1
    while len(tok(" ".join(["discharge"] * (words + 1)), add_special_tokens=False)["input_ids"]) <= context - 3:
        words += 1
    prompt = " ".join(["discharge"] * words)
    room = context - len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert 0 < room < served.bundle.manifest.inference.max_new_tokens
    body = client.post("/v1/completions", json={"model": model, "prompt": prompt, "temperature": 0}).json()
    assert body["usage"]["completion_tokens"] == room and body["choices"][0]["finish_reason"] == "length"

    too_long = client.post("/v1/completions", json={"model": model, "prompt": prompt + " discharge" * 8})
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"


GOOD = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize(("change", "param"), [
    ({"messages": None}, "messages"),
    ({"n": 2}, "n"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": "5"}, "max_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, "messages"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format.type"),
    ({"logit_bias": {"5": 10}}, "logit_bias"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"reasoning_effort": "high"}, "reasoning_effort"),
    ({"stream_options": {"include_obfuscation": True}, "stream": True}, "stream_options.include_obfuscation"),
    ({"seed": 2**64}, "seed"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"max_tokens": 2, "max_completion_tokens": 3}, None),
], ids=lambda v: str(v)[:40])
def test_bad_chat_requests_are_openai_shaped_400s(client, model, change, param):
    body = {"model": model, **GOOD, **change}
    body = {k: v for k, v in body.items() if v is not None}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param


def test_malformed_bodies_are_400s(client, model):
    assert client.post("/v1/chat/completions", content=b"{not json",
                       headers={"content-type": "application/json"}).status_code == 400
    assert client.post("/v1/chat/completions", json=[1, 2]).status_code == 400
    assert client.post("/v1/completions", json={"model": model, "prompt": ""}).status_code == 400
    assert client.post("/v1/completions", json={"model": model, "prompt": ["a", ""]}).status_code == 400
    assert client.post("/v1/completions", json={"model": model, "prompt": [[1], []]}).status_code == 400
    assert client.post("/v1/completions", json={"model": model, "prompt": [10**9]}).status_code == 400
    two_streamed = {"model": model, "prompt": ["a", "b"], "stream": True}
    assert client.post("/v1/completions", json=two_streamed).status_code == 400


def test_prompt_plus_max_tokens_over_the_context_is_400_with_both_counts(client, oai, served, model):
    messages = chat("How long is this prompt?")
    prompt_tokens = len(encode_prompt(served.engine.tokenizer, messages))
    max_tokens = served.engine.max_context_tokens - prompt_tokens + 1
    r = client.post("/v1/chat/completions", json={"model": model, "messages": messages, "max_tokens": max_tokens})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"
    assert f"({prompt_tokens})" in error["message"] and f"({max_tokens})" in error["message"]
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens)


def test_unknown_model_is_404(client, oai):
    r = client.post("/v1/chat/completions", json={"model": "gpt-4o", **GOOD})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="gpt-4o", prompt="hi", max_tokens=1)


def _batch_stats(client: httpx.Client) -> tuple[float, float]:
    """(engine batches run, batches that held one request) from /metrics."""
    text = client.get("/metrics").text
    return sample(text, "tailgate_batch_size_count"), sample(text, "tailgate_batch_size_bucket", le="1.0")


def test_concurrent_requests_are_batched_and_match_sequential(oai, client, model):
    requests = [dict(model=model, messages=chat(f"Patient {i}: discharged after {i + 2} days."), max_tokens=i + 1,
                     temperature=0) for i in range(8)]

    def run(kwargs: dict) -> tuple[str, int, str]:
        c = oai.chat.completions.create(**kwargs)
        return c.choices[0].message.content, c.usage.completion_tokens, c.choices[0].finish_reason

    t0 = time.perf_counter()
    sequential = [run(r) for r in requests]
    t1 = time.perf_counter()
    batches_before, singles_before = _batch_stats(client)
    with ThreadPoolExecutor(len(requests)) as pool:
        concurrent = list(pool.map(run, requests))
    t2 = time.perf_counter()
    batches_after, singles_after = _batch_stats(client)

    # Greedy, so each request's answer must not depend on what it was batched with. (Batched
    # bf16 log-probs differ from unbatched ones by up to ~1e-2 nats; a real model with a
    # near-tie could flip a token. The tiny model's margins are far wider; see the report.)
    assert concurrent == sequential
    assert [n for _, n, reason in sequential if reason == "length"] == [
        r["max_tokens"] for r, (_, _, reason) in zip(requests, sequential) if reason == "length"]
    merged = (batches_after - batches_before) - (singles_after - singles_before)
    assert merged >= 1, "no engine batch held more than one request"
    print(f"\n8 requests: sequential {t1 - t0:.2f} s, concurrent {t2 - t1:.2f} s, "
          f"{batches_after - batches_before:.0f} engine batches")


def test_64_requests_at_concurrency_8_match_sequential_ones(oai, model):
    """Load, not just a burst: 64 requests through 8 client threads, mixed chat and completion,
    mixed lengths, every one answered, each greedy answer identical to its sequential twin."""
    def kwargs(i: int) -> dict:
        if i % 4 == 3:
            return dict(kind="completion", model=model, prompt=f"Discharge note {i}: stable, home on day {i % 9}.",
                        max_tokens=1 + i % 13, temperature=0)
        return dict(kind="chat", model=model, messages=chat(f"Note {i}: admitted for {'pain ' * (i % 7)}x."),
                    max_tokens=1 + i % 11, temperature=0)

    def run(kw: dict) -> tuple[str, int, str]:
        kw = dict(kw)
        if kw.pop("kind") == "completion":
            c = oai.completions.create(**kw)
            return c.choices[0].text, c.usage.completion_tokens, c.choices[0].finish_reason
        c = oai.chat.completions.create(**kw)
        return c.choices[0].message.content, c.usage.completion_tokens, c.choices[0].finish_reason

    requests = [kwargs(i) for i in range(64)]
    sequential = [run(r) for r in requests]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(run, requests))
    assert len(concurrent) == 64 and all(reason in ("stop", "length") for _, _, reason in concurrent)
    mismatched = [i for i, (a, b) in enumerate(zip(sequential, concurrent)) if a != b]
    assert not mismatched, f"requests {mismatched} answered differently under concurrency"
