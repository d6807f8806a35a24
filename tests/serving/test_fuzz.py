"""Schemathesis against the live server's own /openapi.json: requests generated from the
schema (valid ones and deliberately invalid ones) never produce a 5xx, and every refusal is
an OpenAI-shaped error body.

Each operation gets its examples from Hypothesis; the test counts what was really sent and
fails if fewer than MIN_REQUESTS reached the server, so a schema that generates nothing
cannot pass vacuously.
"""

from __future__ import annotations

from collections import Counter

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

MIN_REQUESTS = 200
EXAMPLES = {"positive": 50, "negative": 50}  # per operation and mode


@pytest.fixture(scope="module")
def api(start_server):
    # A short generation budget per request keeps 200+ generations cheap on the tiny model;
    # the schema still offers max_tokens up to the context, which the server must handle.
    return start_server(max_queue=64, request_timeout_s=60)


def _operations(url: str):
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    ops = []
    for result in schema.get_all_operations():
        ops.append(result.ok())
    return ops


def _served_model(model_id: str):
    def fix(case):
        if isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = model_id
        if isinstance(case.path_parameters, dict) and "model" in case.path_parameters:
            case.path_parameters["model"] = model_id
        return case
    return fix


def _check(response: requests.Response, label: str, statuses: Counter, failures: list[str]) -> None:
    statuses[response.status_code] += 1
    if response.status_code >= 500:
        failures.append(f"{label}: {response.status_code} {response.text[:300]}")
    elif response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            failures.append(f"{label}: {response.status_code} with a non-JSON body {response.text[:200]!r}")
            return
        err = body.get("error") if isinstance(body, dict) else None
        if not (isinstance(err, dict) and isinstance(err.get("message"), str) and err.get("type")):
            failures.append(f"{label}: {response.status_code} body is not OpenAI-shaped: {body!r:.200}")


@pytest.mark.slow
def test_generated_requests_never_get_a_5xx(api):
    from schemathesis import GenerationMode

    ops = _operations(api.url)
    paths = {op.path for op in ops}
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= paths, paths
    statuses: Counter = Counter()
    failures: list[str] = []
    sent = 0
    no_negative: list[str] = []
    session = requests.Session()
    for op in ops:
        for mode_name, mode in (("positive", GenerationMode.POSITIVE), ("negative", GenerationMode.NEGATIVE)):
            label = f"{op.method.upper()} {op.path} [{mode_name}]"

            strategy = op.as_strategy(generation_mode=mode)
            if mode_name == "positive":
                # Valid requests should reach the model: name the served model (a random name is
                # a correct 404, but then nothing is generated).
                strategy = strategy.map(_served_model(api.state.model_id))

            @settings(max_examples=EXAMPLES[mode_name], deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def send(case):
                nonlocal sent
                response = case.call(base_url=api.url, session=session, timeout=60)
                sent += 1
                _check(response, label, statuses, failures)

            try:
                send()
            except Unsatisfiable:
                # an operation without parameters or body (GET /health) has no invalid input
                assert mode_name == "negative", label
                no_negative.append(op.path)
    assert "/v1/chat/completions" not in no_negative and "/v1/completions" not in no_negative
    print(f"\nschemathesis: {sent} requests over {len(ops)} operations; statuses {dict(sorted(statuses.items()))}")
    assert not failures, "\n".join(failures[:20])
    assert sent >= MIN_REQUESTS, f"only {sent} generated requests reached the server"
    assert any(400 <= s < 500 for s in statuses), "no invalid request was ever generated"
    assert statuses[200] > 0, "no valid request was ever generated"
