"""lm-eval both ways: the bundle engine as an lm-eval model from lm-eval's own command line,
and lm-eval's OpenAI-compatible chat client against a running server.

Stated tolerance: with one prompt per forward pass on both sides (server --max-batch 1, the
in-process model at batch size 1) the two paths must agree exactly, output for output and
score for score. Batched bf16 forwards may move near-tie tokens, so batched runs are not
compared here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
import yaml

from tests.conftest import REPO

SUITE = REPO / "eval_suites/discharge"
MAX_GEN = 8
LIMIT = 3


def _task(folder) -> dict:
    """The suite's generation task as `python -m pipeline.suites tasks` writes it: over the
    unrendered items, for lm-eval to apply the chat template on both sides (the evaluate stage
    hands it rendered prompts instead)."""
    from pipeline.suites.__main__ import main

    assert main(["tasks", str(SUITE), "--out", str(folder), "--max-new-tokens", str(MAX_GEN)]) == 0
    return yaml.safe_load((folder / "discharge_summary.yaml").read_text())


def _evaluate(model, folder, model_args=None) -> tuple[dict, dict]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from pipeline.suites import load_suite

    out = simple_evaluate(model=model, model_args=model_args, tasks=[_task(folder)],
                          task_manager=TaskManager(include_path=str(folder), include_defaults=False), apply_chat_template=True,
                          system_instruction=load_suite(SUITE).spec.system_prompt, log_samples=True, limit=LIMIT,
                          bootstrap_iters=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0)
    samples = {s["doc"]["id"]: s["filtered_resps"][0] for s in out["samples"]["discharge_summary"]}
    return out["results"]["discharge_summary"], samples


@pytest.mark.slow
def test_lm_eval_chat_client_against_the_server_agrees_with_in_process(served, start_server, tmp_path):
    from pipeline.evaluate.lm_model import TailgateLM
    from pipeline.evaluate.scoring import Output, build_scorer
    from pipeline.suites import load_suite

    srv = start_server(max_batch=1)
    through_server, server_out = _evaluate("local-chat-completions", tmp_path / "tasks", {
        "base_url": f"{srv.url}/v1/chat/completions", "model": srv.state.model_id,
        "tokenizer_backend": None, "num_concurrent": 1, "max_retries": 1, "max_gen_toks": MAX_GEN})
    in_process, local_out = _evaluate(TailgateLM(engine=served.engine, batch_size=1, max_gen_toks=MAX_GEN),
                                      tmp_path / "tasks")
    assert len(server_out) == LIMIT and set(server_out) == set(local_out)
    assert server_out == local_out  # tolerance 0 unbatched
    assert through_server["exact_match,none"] == in_process["exact_match,none"]
    items = {it.id: it for it in load_suite(SUITE).items()}
    score = build_scorer(load_suite(SUITE), "scorers:field_exact_match")
    for item_id, text in server_out.items():
        assert score(Output(text), items[item_id]) == score(Output(local_out[item_id]), items[item_id])
    # the server really answered them, one request per item
    metrics = httpx.get(f"{srv.url}/metrics").text
    served_ok = [line for line in metrics.splitlines() if line.startswith("tailgate_requests_total{")
                 and "chat/completions" in line and 'status="200"' in line]
    assert served_ok and float(served_ok[0].rsplit(" ", 1)[1]) == LIMIT


class WholePrompt:
    """The same engine, scoring each (context, continuation) as the server computes prompt
    log-probs: context and continuation prefilled together as one prompt, every position's
    logits kept. (Evaluation's own scoring prefills the context alone and runs the continuation
    over its cache, so options share the context's prefill: the same model, another summation
    order, compared below with a tolerance.)"""

    def __init__(self, engine) -> None:
        self.engine = engine

    def __getattr__(self, name: str):
        return getattr(self.engine, name)

    def loglikelihood(self, pairs, **_kwargs):
        import torch

        out = []
        for ctx, cont in pairs:
            with self.engine.lock, torch.inference_mode():
                _, every = self.engine.start(list(ctx) + list(cont), all_positions=True)
            lp = torch.log_softmax(every[len(ctx) - 1:-1].float(), dim=-1)
            target = torch.tensor(list(cont))
            chosen = lp.gather(-1, target[:, None]).squeeze(-1).tolist()
            out.append((float(sum(chosen)), bool((lp.argmax(-1) == target).all())))
        return out


def _loglikelihood_task(served, tmp_path) -> dict:
    """A small log-likelihood task over discharge-note text: contexts cut at a space and
    continuations of a few words (no BPE merge crosses the cut), plus the engine's own greedy
    continuations, whose is_greedy must come out true."""
    from pipeline.engines.base import GenerationRequest, SamplingParams

    # the notes, without the instruction every item opens with
    notes = [json.loads(line)["messages"][1]["content"].split("\n\n", 1)[1] for line in
             (SUITE / "data/test.jsonl").read_text().splitlines()[:4]]
    docs = []
    for i, note in enumerate(notes):
        words = note.split(" ")
        docs.append({"id": i, "context": " ".join(words[:12 + i]), "target": " " + " ".join(words[12 + i:15 + i])})
    tok, engine = served.engine.tokenizer, served.engine
    for i, note in enumerate(notes[:2]):
        context = " ".join(note.split(" ")[:20 + i])
        ids = tok(context, add_special_tokens=False)["input_ids"]
        [greedy] = engine.generate([GenerationRequest(ids, SamplingParams(max_new_tokens=6))])
        docs.append({"id": len(docs), "context": context, "target": tok.decode(greedy.token_ids)})
    data = tmp_path / "ll.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return {"task": "tailgate_server_ll", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test", "output_type": "loglikelihood", "doc_to_text": "{{context}}",
            "doc_to_target": "{{target}}", "target_delimiter": "",
            "metric_list": [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                            {"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1}}


def _scores(model, task: dict, **kwargs) -> dict[int, tuple[float, bool]]:
    from lm_eval import simple_evaluate

    out = simple_evaluate(model=model, tasks=[task], log_samples=True, bootstrap_iters=0, random_seed=0,
                          numpy_random_seed=0, torch_random_seed=0, **kwargs)
    return {s["doc"]["id"]: (float(s["filtered_resps"][0][0]), bool(s["filtered_resps"][0][1]))
            for s in out["samples"][task["task"]]}


@pytest.mark.slow
def test_lm_eval_completions_client_loglikelihood_agrees_with_in_process(served, start_server, tmp_path):
    """lm-eval's `local-completions` model scores a log-likelihood task through /v1/completions
    (echo + logprobs: it sends token ids, several prompts per request, max_tokens 1, and reads
    token_logprobs / top_logprobs from the context length on). Stated tolerance: 0 against the
    same engine's prompt log-probs of context + continuation as one prompt, which is what the
    server computes; against evaluation's scoring (the context prefilled alone, the continuation
    run over its cache; bf16 on the tiny model), 1e-2 nats a sample."""
    from pipeline.evaluate.lm_model import TailgateLM

    srv = start_server()
    task = _loglikelihood_task(served, tmp_path)
    through_server = _scores("local-completions", task, batch_size=3, model_args={
        "base_url": f"{srv.url}/v1/completions", "model": srv.state.model_id, "tokenizer_backend": "huggingface",
        "tokenizer": str(served.bundle.root / "tokenizer"), "num_concurrent": 1, "max_retries": 1})
    unbatched = _scores(TailgateLM(engine=WholePrompt(served.engine)), task)
    batched = _scores(TailgateLM(engine=served.engine), task)
    assert len(through_server) == 6 and set(through_server) == set(unbatched) == set(batched)
    assert through_server == unbatched  # exact, is_greedy included
    assert sum(greedy for _, greedy in through_server.values()) >= 2  # the engine's own continuations
    worst = max(abs(through_server[k][0] - batched[k][0]) for k in batched)
    print(f"\nlm-eval through the server vs evaluation's scoring: max |delta ll| = {worst:.2e} nats")
    assert worst <= 1e-2
    assert [g for _, g in through_server.values()] == [g for _, g in batched.values()]


@pytest.mark.slow
def test_lm_eval_command_line_runs_the_bundle_engine(tiny_pipeline, tmp_path):
    """`tailgate-lm-eval --model tailgate --model_args bundle=...` is lm-eval's CLI with our
    model registered; the samples it logs are the engine's greedy outputs."""
    tasks = tmp_path / "tasks"
    _task(tasks)  # the documented `python -m pipeline.suites tasks` output, used as lm-eval reads it
    cmd = [sys.executable, "-m", "pipeline.evaluate.lm_eval_cli", "run", "--model", "tailgate",
           "--model_args", f"bundle={tiny_pipeline['bundle']},max_gen_toks={MAX_GEN}", "--batch_size", "2",
           "--tasks", "discharge_summary", "--include_path", str(tasks), "--limit", "2",
           "--apply_chat_template", "--system_instruction", "You write structured hospital discharge summaries.",
           "--output_path", str(tmp_path / "out"), "--log_samples"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("results_*.json")]
    assert results and "exact_match,none" in results[0]["results"]["discharge_summary"]
    assert results[0]["config"]["model"] == "tailgate"
    samples = [json.loads(line) for p in (tmp_path / "out").rglob("samples_discharge_summary_*.jsonl")
               for line in p.read_text().splitlines()]
    assert len(samples) == 2 and all(isinstance(s["resps"][0][0], str) for s in samples)


def test_a_tampered_bundle_is_refused_by_the_lm_eval_model(bundle_copy):
    from pipeline.bundle.verify import BundleError
    from pipeline.evaluate.lm_model import TailgateLM

    (bundle_copy / "tokenizer/chat_template.jinja").write_text("{{ messages }}")
    with pytest.raises(BundleError, match="chat_template.jinja"):
        TailgateLM(bundle=str(bundle_copy))


def test_the_lm_eval_model_names_what_it_cannot_run(tiny_pipeline):
    """Refused before the bundle is read: a runtime it does not have, vLLM at reference precision."""
    from pipeline.evaluate.lm_model import TailgateLM

    with pytest.raises(ValueError, match="runtime must be hf or vllm, not 'tgi'"):
        TailgateLM(bundle=str(tiny_pipeline["bundle"]), runtime="tgi")
    with pytest.raises(ValueError, match="shipped bundle only"):
        TailgateLM(bundle=str(tiny_pipeline["bundle"]), runtime="vllm", precision="reference")
