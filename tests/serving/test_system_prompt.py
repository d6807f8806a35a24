"""The pinned system prompt over a real server: a chat request without a system message is
answered exactly as the same request carrying the pinned one, a request with its own system
message is served as sent, /v1/completions is untouched, /v1/models says which prompt is
pinned, and the parity probe replays golden records with or without their system turn."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from pipeline.chat import encode_prompt, with_system
from serving.probe import GoldenRecord, ParityError, load_golden, replay

USER = {"role": "user", "content": "Summarize: admitted with pneumonia, discharged on amoxicillin."}
OTHER = {"role": "system", "content": "Be brief."}


@pytest.fixture(scope="module")
def api(start_server):
    return start_server()


@pytest.fixture(scope="module")
def oai(api):
    return openai.OpenAI(base_url=f"{api.url}/v1", api_key="not-needed", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def pinned(served) -> str:
    text = served.bundle.manifest.tokenizer.system_prompt
    assert text == "You write structured hospital discharge summaries."  # the default notes' prompt
    return text


def _ask(oai, model, messages, **kw):
    return oai.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0, **kw)


def test_request_without_system_message_gets_the_pinned_one(oai, api, served, pinned):
    model, tok = api.state.model_id, served.engine.tokenizer
    bare = _ask(oai, model, [USER])
    explicit = _ask(oai, model, [{"role": "system", "content": pinned}, USER])
    assert bare.choices[0].message.content == explicit.choices[0].message.content
    assert bare.choices[0].finish_reason == explicit.choices[0].finish_reason
    assert bare.usage.model_dump() == explicit.usage.model_dump()
    # The prompt really carries the pinned turn, not the bare conversation the template renders.
    assert bare.usage.prompt_tokens == len(encode_prompt(tok, with_system([USER], pinned)))
    assert bare.usage.prompt_tokens > len(encode_prompt(tok, [USER]))
    # Streaming goes through the same encoding.
    pieces = [c.choices[0].delta.content or "" for c in oai.chat.completions.create(
        model=model, messages=[USER], max_tokens=8, temperature=0, stream=True) if c.choices]
    assert "".join(pieces) == bare.choices[0].message.content


def test_request_with_its_own_system_message_is_served_as_sent(oai, api, served, pinned):
    model, tok = api.state.model_id, served.engine.tokenizer
    own = _ask(oai, model, [OTHER, USER])
    assert own.usage.prompt_tokens == len(encode_prompt(tok, [OTHER, USER]))
    assert own.usage.prompt_tokens != len(encode_prompt(tok, with_system([USER], pinned)))


def test_completions_are_raw_text_without_a_system_prompt(oai, api, served):
    prompt = "Discharge summary:"
    out = oai.completions.create(model=api.state.model_id, prompt=prompt, max_tokens=2, temperature=0)
    assert out.usage.prompt_tokens == len(served.engine.tokenizer(prompt, add_special_tokens=False)["input_ids"])


def test_models_report_the_pinned_system_prompt(api, pinned):
    with httpx.Client(base_url=api.url, timeout=30) as c:
        [card] = c.get("/v1/models").json()["data"]
        assert card["system_prompt"] == {"text": pinned, "applied_to": "chat requests without a system message"}
        assert c.get(f"/v1/models/{card['id']}").json()["system_prompt"] == card["system_prompt"]


def _golden(served) -> dict:
    return json.loads(served.golden_path.read_text())


def test_probe_replays_golden_records_with_or_without_their_system_turn(served, pinned, tmp_path):
    raw = _golden(served)
    assert all(p["messages"][0] == {"role": "system", "content": pinned} for p in raw["prompts"])
    as_recorded = replay(served.engine, GoldenRecord.model_validate(raw), served.bundle.manifest)
    for p in raw["prompts"]:
        p["messages"] = p["messages"][1:]  # a request without one gets the pinned turn back
    stripped = replay(served.engine, GoldenRecord.model_validate(raw), served.bundle.manifest)
    assert stripped == as_recorded == served.parity


def test_probe_refuses_golden_prompts_recorded_without_the_pinned_prompt(served, tmp_path):
    """Evaluation that scored bare conversations did not evaluate what serving answers."""
    raw = _golden(served)
    tok = served.engine.tokenizer
    for p in raw["prompts"]:
        p["messages"] = p["messages"][1:]
        p["prompt_ids"] = encode_prompt(tok, p["messages"])
    path = tmp_path / "golden.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ParityError, match="system prompt changed"):
        replay(served.engine, load_golden(path, served.bundle.manifest), served.bundle.manifest)
