"""A GGUF export evaluated through llama.cpp itself (the `llama.cpp` engine), where it is built.

llama-cpp-python is an optional build (`make bench`); without it these tests are skipped with
that reason. The f32 GGUF holds the merged float32 weights unrounded, so llama.cpp's greedy
answers must be the merged model's (run by the hf engine), and its log-likelihoods within a
summation order of them (stated tolerance: 1e-3 nats per continuation on the tiny model)."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not built here (make bench builds it)")

from pipeline.engines.base import GenerationRequest, SamplingParams  # noqa: E402

PROMPTS = [[{"role": "user", "content": "Discharge note: admitted with pneumonia, allergy to penicillin (rash)."}],
           [{"role": "user", "content": "Summarise: fall at home, no fracture."}],
           [{"role": "user", "content": "Hi"}]]


@pytest.fixture(scope="module")
def engines(tiny_pipeline, tmp_path_factory):
    from pipeline.export import export_gguf, export_merged
    from pipeline.export.evaluate import export_engine, open_export

    root = tmp_path_factory.mktemp("llamacpp")
    export_gguf(tiny_pipeline["bundle"], root / "gguf", "f32")
    export_merged(tiny_pipeline["bundle"], root / "merged", dtype="float32")
    return {name: export_engine(root / name, open_export(root / name)) for name in ("gguf", "merged")}


def _requests(engine):
    from pipeline.chat import encode_prompt

    return [GenerationRequest(encode_prompt(engine.tokenizer, p), SamplingParams(max_new_tokens=12)) for p in PROMPTS]


def test_the_gguf_renders_prompts_with_its_own_template_as_the_bundle_does(engines):
    gguf, merged = engines["gguf"], engines["merged"]
    assert [r.prompt_ids for r in _requests(gguf)] == [r.prompt_ids for r in _requests(merged)]


def test_llamacpp_answers_the_f32_export_as_the_merged_model_does(engines):
    gguf, merged = engines["gguf"], engines["merged"]
    reqs = _requests(merged)
    got, want = gguf.generate(reqs), merged.generate(reqs)
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    assert max(abs(a - b) for g, w in zip(got, want) for a, b in zip(g.logprobs, w.logprobs)) < 1e-3
    # one sequence at a time: the same answers again, in any order
    assert [c.token_ids for c in gguf.generate(reqs[::-1])] == [c.token_ids for c in want][::-1]


def test_llamacpp_scores_continuations_as_the_merged_model_does(engines):
    gguf, merged = engines["gguf"], engines["merged"]
    reqs = _requests(merged)
    pairs = [(r.prompt_ids, [5, 9, 11]) for r in reqs] + [(reqs[0].prompt_ids, [7])]
    got, want = gguf.loglikelihood(pairs), merged.loglikelihood(pairs)
    assert max(abs(g[0] - w[0]) for g, w in zip(got, want)) < 1e-3
    assert [g[1] for g in got] == [w[1] for w in want]


def test_a_gguf_export_is_served_on_llamacpp_with_its_own_golden_answers(tiny_pipeline, tmp_path):
    """`python -m serving --export`: the GGUF served by llama.cpp, one sequence at a time, its own
    evaluated answers replayed at start-up and again under load by the official client."""
    import json
    import subprocess
    import sys

    import httpx

    from pipeline.evaluate import evaluate
    from pipeline.export import export_gguf
    from pipeline.export.evaluate import evaluate_export
    from pipeline.params import load_section
    from serving.replay import launched_server
    from tests.conftest import REPO

    params = load_section("evaluate", tiny_pipeline["params"]).model_copy(
        update={"suite": str(REPO / "eval_suites/discharge"), "damage": False})
    report, rows, _ = evaluate(params, tiny_pipeline["bundle"])
    export_gguf(tiny_pipeline["bundle"], tmp_path / "gguf", "f32")
    _, _, golden = evaluate_export(params, tmp_path / "gguf", tiny_pipeline["bundle"], report, rows)
    (tmp_path / "golden.json").write_text(json.dumps(golden))
    args = ["--allow-unreleased", "--export", str(tmp_path / "gguf"), "--golden", str(tmp_path / "golden.json")]
    with launched_server(str(tiny_pipeline["bundle"]), args) as url:
        card = httpx.get(f"{url}/models").json()["data"][0]
        assert card["configuration"]["name"] == "gguf_f32" and card["engine"]["name"] == "llama.cpp"
        assert card["parity"]["status"] == "passed"
    out = subprocess.run([sys.executable, "-m", "serving.replay", "--serve", str(tiny_pipeline["bundle"]),
                          "--export", str(tmp_path / "gguf"), "--golden", str(tmp_path / "golden.json"),
                          "--concurrency", "4", "--out", str(tmp_path / "replay.json")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    replay = json.loads((tmp_path / "replay.json").read_text())
    assert replay["identical"] == replay["items"] == len(golden["prompts"])
    assert replay["export"]["name"] == "gguf_f32"
