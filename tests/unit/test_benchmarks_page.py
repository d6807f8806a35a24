"""benchmarks/RESULTS.md is rendered from the result files alone: every benchmark appears, skipped
ones say why, and each ratio follows the raw numbers it is computed from (synthetic results, no
benchmark is run)."""

import json

import pytest

from benchmarks.__main__ import main
from benchmarks.page import RUN_RECORD, render
from benchmarks.suite import BENCHMARKS, NAMES

MIB = 2 ** 20


def _arm(disk, runtime, load_peak, train_live, train_default, planned):
    def status(rss):
        return {"VmRSS": rss, "VmHWM": rss, "RssAnon": rss - rss // 4, "RssFile": rss // 4}

    load = {"runtime": status(runtime), "after_load": status(runtime + MIB), "after_forward": status(load_peak),
            "runtime_rss_bytes": runtime, "peak_rss_bytes": load_peak, "tensor_bytes": disk, "load_s": 1.0}
    return {"dir": "artifacts/x", "disk_bytes": disk, "load_live": load, "load_default": load,
            "train_live": {"peak_rss_bytes": train_live, "step_s": [9.0, 1.0, 3.0]},
            "train_default": {"peak_rss_bytes": train_default, "step_s": [9.0, 1.0, 3.0]},
            "planned": {"train_total_bytes": planned, "weights_bytes": disk}}


def synthetic() -> dict:
    """One small result per benchmark, in the shape each benchmark writes."""
    return {
        "soak": {"minutes": 60.0, "concurrency": 8, "sample_s": 60.0, "rss_tolerance": 0.1,
                 "mix_per_10_requests": {"chat": 3, "stream": 2, "completion": 2, "disconnect": 1, "oversize": 1,
                                         "malformed": 1},
                 "stats": {"chat:200": 30, "stream:200": 20, "completion:200": 20, "disconnect:200": 10,
                           "oversize:400": 10, "malformed:400": 10, "greedy_equal": 70},
                 "checks": {"no_5xx": True, "every_answer_as_expected": True, "no_leaked_request_slots": True,
                            "rss_stable": True, "greedy_equal_to_alone": True},
                 "client_5xx": 0, "rss_change": 0.02, "rss_baseline_mib": 1000.0, "rss_baseline_at_s": 300.0,
                 "rss_end_mib": 1020.0, "end_metrics": {"queue_depth": 0.0, "in_flight": 0.0, "server_5xx": 0.0},
                 "load_avg_before": [0.1, 0.1], "load_avg_after": [2.0, 2.0], "bundle_digest": "ab" * 32},
        "scoring": {"items": 40, "options": 5, "pairs": 240, "context_tokens": 16000, "continuation_tokens": 3000,
                    "threads": 2, "bundle_digest": "cd" * 32, "load_avg_before": [0.1], "load_avg_after": [2.0],
                    "arms": {name: {"wall_s": wall, "kernel_4bit": "cpu-dequantize", "prefills": n} for name, wall, n in
                             (("before", 200.0, 240), ("whole_pairs", 120.0, 240), ("shared_prefix", 40.0, 40),
                              ("after_generation", 20.0, 0))},
                    "speedup_vs_before": {"before": 1.0, "whole_pairs": 1.67, "shared_prefix": 5.0,
                                          "after_generation": 10.0},
                    "shared_equal_after_generation": True, "max_abs_diff_shared_vs_whole_pairs": 1e-5,
                    "max_abs_diff_whole_pairs_vs_before": 0.2},
        "exports": {"bundle_digest": "34" * 32, "headline_metric": "field_accuracy",
                    "load_avg_before": [0.1], "load_avg_after": [2.0],
                    "bundle": {"size_bytes": 200_000_000, "headline": {"overall": 0.6, "slices": {"a": 0.6}}},
                    "configurations": {name: {"size_bytes": 500_000_000, "eval_wall_s": 100.0, "engine": "x",
                                              "headline": {"overall": 0.6, "slices": {"a": 0.6}},
                                              "damage": {"identical_outputs": 0.9, "flip_rate": 0.01,
                                                         "unflip_rate": 0.01, "worst_slice_drop": 0.0,
                                                         "delta_nll_p99": 0.001, "abs_delta_nll_p99": 0.002},
                                              "gate_passed": ok, "gate_failed": [] if ok else ["damage.flip_rate"]}
                                       for name, ok in (("merged_float32", True), ("gguf_q8_0", True),
                                                        ("merged_into_16bit_original", False))}},
        "release_exports": {
            "load_avg_before": [0.1], "load_avg_after": [2.0], "export_stage_wall_s": 100.0,
            "release_stage_wall_s": 200.0,
            "exports_summary": {"bundle_digest": "78" * 32, "requested": ["merged"],
                                "configurations": {"merged": {"gate_passed": True}}},
            "release": {"bundle_digest": "78" * 32, "signature": "verified", "files": 30, "size_bytes": 700_000_000,
                        "exports": {"merged": {"kind": "merged", "digest": "9a" * 32, "gate_passed": True,
                                               "evidence": {}}}},
            "replays": {name: {"items": 2, "identical": 2, "different": 0, "concurrency": 8, "wall_s": 1.0,
                               "generated_tokens": 10, "tokens_per_s": 10.0, "load_avg_before": [0.1],
                               "load_avg_after": [1.0]} for name in ("bundle", "merged")},
            "card_configurations": ["## Configurations", "", "| configuration | tokens/s |", "|---|---|",
                                    "| bundle (NF4 + LoRA) | 10.0 |", "| merged | 10.0 |"]},
        "exports_exp": {"command": "dvc exp run --temp -S export.merged=true -S export.gguf=[q8_0]",
                        "wall_s": 100.0, "stages_ran": ["export", "gate", "release"],
                        "stages_skipped": ["evaluate", "train"], "load_avg_before": [0.1], "load_avg_after": [2.0],
                        "experiment": {"name": "tailgate-exports", "rev": "ab" * 20, "params_export": {},
                                       "metrics": {"reports/metrics/exports.json": {
                                           "merged": {"gate_passed": 1, "flip_rate": 0.0},
                                           "gguf_q8_0": {"gate_passed": 1, "flip_rate": 0.01}}}},
                        "workspace": {"name": None, "rev": "workspace", "params_export": {},
                                      "metrics": {"reports/metrics/exports.json": {}}}},
        "llamacpp_server": {"items": 2, "slots": 8, "threads": 2, "bundle_digest": "56" * 32,
                            "llama_server": "version: 1 (abc)", "load_avg_before": [0.1], "load_avg_after": [2.0],
                            "arms": {name: {"concurrency_1": {"wall_s": 10.0, "generated_tokens": 100,
                                                              "tokens_per_s": tps, "latency_p50_s": 5.0,
                                                              "identical_to_golden": 2},
                                            "concurrency_8": {"wall_s": 5.0, "generated_tokens": 100,
                                                              "tokens_per_s": 2 * tps, "latency_p50_s": 4.0,
                                                              "identical_to_golden": 2,
                                                              "identical_to_concurrency_1": same}}
                                     for name, tps, same in (("tailgate server (hf engine, bundle NF4 + LoRA)", 10.0, 2),
                                                             ("llama-server, GGUF export q8_0", 40.0, 1))}},
        "decode_blocks": {"bundle_digest": "12" * 32, "threads": 2, "steps_per_arm": 8, "items": 2,
                          "load_avg_before": [0.1], "load_avg_after": [2.0],
                          "steps": {str(n): {"one_pass_ms": 100.0 * n / 8, "passes_of_8_ms": 120.0 * n / 8,
                                             "speedup": 1.2, "equal_to_passes_of_8": True, "equal_to_alone": True}
                                    for n in (8, 16, 32)},
                          "generate": {"8": {"wall_s": 30.0, "tokens": 200, "identical_to_golden": 2},
                                       "32": {"wall_s": 20.0, "tokens": 200, "identical_to_golden": 2}}},
        "decode_step": {"bundle_digest": "12" * 32, "threads": 2, "lora_layers": 210, "steps_per_arm": 3,
                        "rounds": 2, "load_avg_before": [0.1], "load_avg_after": [2.0],
                        "rows": {str(n): {"peft_ms": 100.0 * n, "fused_ms": 90.0 * n, "speedup": 1.111,
                                          "bitwise_equal": True} for n in (1, 8, 32)}},
        "decode_widths": {"bundle_digest": "12" * 32, "threads": 2, "decode_width": 8, "steps_per_arm": 3,
                          "rounds": 2, "load_avg_before": [0.1], "load_avg_after": [2.0],
                          "widths": {"576x576 float32": list(range(4, 17)), "1536x16 float32": [4, 5, 8, 9]},
                          "rows": {str(n): {"fixed_rows": -(-n // 8) * 8, "probed_rows": max(n, 4),
                                            "fixed_ms": 100.0 * n, "probed_ms": 80.0 * n, "speedup": 1.25,
                                            "bitwise_equal": True} for n in (1, 3, 8, 13, 32)}},
        "fixed_matmul": {"threads": 2, "layers": 30, "steps_per_arm": 5, "rounds": 2, "load_avg_before": [0.1],
                         "load_avg_after": [2.0], "blas_widths": {"576x576": [4, 8]}, "kernel_path": "avx2-fma",
                         "rows": {str(n): {"blas_rows": max(n, 4), "blas_ms": 60.0 * n, "fixed_ms": 20.0 * n,
                                           "speedup": 3.0} for n in (1, 3, 8, 13, 32)},
                         "fixed_rows_bitwise_alone": True, "fixed_max_abs_diff_vs_f_linear": 4e-06},
        "row_slots": {"bundle_digest": "12" * 32, "prompts": 2, "steps_timed": 3, "load_avg_before": [0.1],
                      "load_avg_after": [2.0], "arm_env": {},
                      "arms": {name: {"platform": {"decode_matmul": plan},
                                      **{engine: {"slot_max_abs_diff": diff, "slots_bitwise_equal": diff == 0.0,
                                                  "step_ms_8_rows": 100.0, "answers": 2,
                                                  "answers_differing_alone_vs_together": int(diff > 0),
                                                  "logprobs_differing_alone_vs_together": 2 * int(diff > 0)}
                                         for engine, diff in (("probed", 0.0), ("f_linear", bad))}}
                               for name, plan, bad in (("native", None, 0.0), ("avx2", "576x576 float32: transposed",
                                                                                 3.8e-5))}},
        "llamacpp_peer": {"items": 2, "threads": 2, "bundle_digest": "ef" * 32, "prompt_tokens": 800,
                          "golden_tokens": 100, "llama_cpp_python": "0.3.36", "load_avg_before": [0.1],
                          "load_avg_after": [2.0],
                          "arms": {"tailgate hf engine, bundle (NF4 + LoRA)": {
                                       "prefill_tokens_per_s": 600.0, "decode_tokens_per_s": 12.0,
                                       "identical_to_golden": 2},
                                   "llama.cpp, base GGUF Q4_1 (no adapter)": {
                                       "prefill_tokens_per_s": 300.0, "decode_tokens_per_s": 80.0}},
                          "decode_vs_tailgate": {"tailgate hf engine, bundle (NF4 + LoRA)": 1.0,
                                                 "llama.cpp, base GGUF Q4_1 (no adapter)": 0.15}},
        "verify": {"median_verify_bundle_s": 0.1, "median_sha256sum_s": 0.3, "total_mb": 135.0, "files": 11,
                   "largest_file_mb": 112.0, "reps": 7},
        "noop_repro": {"median_s": {"repro": 4.0, "status": 2.0, "version": 1.0},
                       "seconds": {"repro": [4.0], "status": [2.0], "version": [1.0]},
                       "dvc_version": "3.0.0", "stages": 7, "dvc_lock_unchanged": True},
        "curate": {"records": 100_000, "input_mb": 169.4, "wall_s": 50.0,
                   "memory": {"main_peak_rss_mib": 800.0, "worker_processes": 2, "worker_peak_rss_mib": [300.0, 300.0],
                              "sum_of_peak_rss_mib": 1400.0, "peak_sampled_sum_pss_mib": 1000.0},
                   "targets": {"wall_s_max": 120.0, "peak_bytes_max": 2_000_000_000},
                   "outcome": {"kept": 90_000, "rejected": 10_000}},
        "nf4_memory": {"config": {"batch": 4, "seq_len": 512, "steps": 3, "prompt_tokens": 256},
                       "arms": {"nf4": _arm(100 * MIB, 400 * MIB, 600 * MIB, 3000 * MIB, 4000 * MIB, 2800 * MIB),
                                "bf16": _arm(250 * MIB, 400 * MIB, 800 * MIB, 3300 * MIB, 4400 * MIB, 2900 * MIB)}},
        "memory_plan": {"target": 0.25, "cases": [
            {"model": "tiny", "batch": 4, "seq_len": 512, "gradient_checkpointing": False, "planned_mib": 90,
             "measured_live_mib": 100, "measured_rss_mib": 110}]},
        "memory_plan_avx2": {"target": 0.25, "simulated": {"ATEN_CPU_CAPABILITY": "avx2"}, "cases": [
            {"model": "default", "batch": 4, "seq_len": 512, "gradient_checkpointing": False, "planned_mib": 90,
             "measured_live_mib": 100, "measured_rss_mib": 110, "planned_rss_mib": 105, "mixed_lengths": False}]},
        "train_checkpointing": {"results": {"off": {"steps": 5, "s_per_step": 10.0, "peak_rss_mb": 4000.0},
                                            "on": {"steps": 5, "s_per_step": 12.0, "peak_rss_mb": 2000.0}}},
        "train_vs_trl": {"goal_ratio": 1.5,
                         "median_tokens_per_s": {"ours": 400.0, "trl": 200.0, "trl_padding_free": 250.0},
                         "config": {"batch_size": 4, "reps": 3, "timed_steps": 10}, "versions": {"trl": "1.16.0"},
                         "contended_runs": [], "machine": {}},
        "serving": {"bundle_digest": "ab" * 32, "requests": 16, "max_tokens": 160, "torch_threads": 2, "rows": [
            {"mode": "naive sequential generate", "concurrency": 1, "requests": 16, "tokens": 1600,
             "tokens_per_s": 20.0, "latency_p50_s": 5.0, "latency_p99_s": 9.0, "answers_equal_to_naive": "-"},
            {"mode": "tailgate server (hf engine)", "concurrency": 8, "tokens_per_s": 50.0, "latency_p50_s": 9.0,
             "latency_p99_s": 20.0, "answers_equal_to_naive": "12/16"}],
            "vllm_not_measured": "vllm is not importable here"},
        "streaming": {"tokens": 2000, "reps": 5, "loadavg_before": [0.5, 0.5, 0.5], "loadavg_after": [0.6, 0.5, 0.5],
                      "results": [{"tokenizer": "tiny", "vocab": 384, "tokens": 2000,
                                   "redecode_old": {"us_per_token": 200.0, "us_per_token_first_10pct": 30.0,
                                                    "us_per_token_last_10pct": 400.0},
                                   "decodestream_new": {"us_per_token": 4.0, "us_per_token_first_10pct": 4.0,
                                                        "us_per_token_last_10pct": 4.0}}]},
        "invariance": {"bundle_digest": "ab" * 32, "compute_dtype": "float32", "max_tokens": 16, "torch_threads": 2,
                       "machine": "x86_64, 2 cores", "prompt_tokens": [300, 900], "load_avg_before": [1.0, 1.0, 1.0],
                       "load_avg_after": [1.0, 1.0, 1.0], "engines": {
                           name: {"generation": {"alone_s": 10.0, "batches": [
                               {"batch": b, "identical_tokens": 2, "requests": 2, "max_abs_logprob_diff": diff,
                                "wall_s": 5.0} for b in (2, 4, 8)]},
                                  "schedule": {"rows": 2, "logit_vectors": 8, "bitwise_equal": eq,
                                               "max_abs_logit_diff": diff}}
                           for name, diff, eq in (("invariant", 0.0, 8), ("padded", 1e-5, 2))}},
    }


def write(tmp_path, results: dict, entries: dict | None = None):
    for name, r in results.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    run = {"run_id": "2026-01-01T00:00:00+00:00", "command": "python -m benchmarks", "profile": "full",
           "commit": "0123456789abcdef", "dirty_paths": 0, "total_wall_s": 600.0, "load_avg_before": [0.1, 0.1, 0.1],
           "load_avg_after": [1.0, 1.0, 1.0], "machine": {"cpu": "Test CPU", "cpu_count": 2, "memory_gib": 8.0}}
    entries = entries if entries is not None else {n: {"status": "ok", "run_id": run["run_id"], "wall_s": 1.0,
                                                         "command": f"python -m benchmarks.{n}"} for n in results}
    (tmp_path / RUN_RECORD).write_text(json.dumps({"runs": {run["run_id"]: run}, "benchmarks": entries}))
    return render(tmp_path)


def headline(page: str, title: str) -> list[str]:
    return [line for line in page.splitlines() if line.startswith(f"| {title} |")]


def test_every_benchmark_appears_with_a_headline_and_a_section(tmp_path):
    page = write(tmp_path, synthetic())
    for b in BENCHMARKS:
        assert headline(page, b.title), b.name
        assert f"## {b.title} (`{b.name}`)" in page
    assert "Test CPU, 2 cores, 8.0 GiB" in page and "0123456789ab" in page and "10.0 min" in page
    assert "not run:" not in page and "skipped:" not in page
    assert "python -m benchmarks --only verify" in page and "--render-only" in page


@pytest.mark.parametrize("name, change, before, after", [
    ("verify", lambda r: r.update(median_sha256sum_s=0.5), "3.00x", "5.00x"),
    ("train_vs_trl", lambda r: r["median_tokens_per_s"].update(trl=100.0), "2.00x (400.0 vs 200.0)",
     "4.00x (400.0 vs 100.0)"),
    ("nf4_memory", lambda r: r["arms"]["bf16"].update(disk_bytes=400 * MIB), "| 2.50x |", "| 4.00x |"),
    ("serving", lambda r: r["rows"][1].update(tokens_per_s=30.0), "| 2.50x | >= 2x | met |",
     "| 1.50x | >= 2x | **missed** |"),
    ("noop_repro", lambda r: r["median_s"].update(status=1.0), "4.00 s (2.00x)", "4.00 s (4.00x)"),
    ("train_checkpointing", lambda r: r["results"]["on"].update(s_per_step=15.0), "1.20x, 0.50x", "1.50x, 0.50x"),
    ("memory_plan", lambda r: r["cases"][0].update(planned_mib=60), "10.0% over 1 shapes | <= 25% | met",
     "40.0% over 1 shapes | <= 25% | **missed**"),
    ("invariance", lambda r: r["engines"]["invariant"]["schedule"].update(bitwise_equal=7), "| yes | yes | met |",
     "| no | yes | **missed** |"),
    ("decode_widths", lambda r: r["rows"]["1"].update(fixed_ms=200.0), "1.25x (80 vs 100 ms)",
     "2.50x (80 vs 200 ms)"),
    ("fixed_matmul", lambda r: r["rows"]["1"].update(blas_ms=100.0), "3.00x (20 vs 60 ms)",
     "5.00x (20 vs 100 ms)"),
    ("fixed_matmul", lambda r: r.update(fixed_rows_bitwise_alone=False), "| every row bitwise as alone | pass |",
     "| every row bitwise as alone | FAIL |"),
    ("streaming", lambda r: r["results"][0]["decodestream_new"].update(us_per_token=8.0), "| 50.00x |",
     "| 25.00x |"),
])
def test_ratios_follow_the_numbers_they_are_computed_from(tmp_path, name, change, before, after):
    results = synthetic()
    title = next(b.title for b in BENCHMARKS if b.name == name)
    assert before in "\n".join(headline(write(tmp_path, results), title))
    change(results[name])
    rows = "\n".join(headline(write(tmp_path, results), title))
    assert after in rows and before not in rows


def test_curate_targets_are_checked_only_at_the_size_they_are_stated_for(tmp_path):
    results = synthetic()
    results["curate"]["wall_s"] = 200.0
    assert "| <= 120 s | **missed** |" in write(tmp_path, results)
    results["curate"]["records"] = 2000
    page = write(tmp_path, results)
    assert "**missed**" not in "\n".join(headline(page, "Curate throughput (100k records)"))
    assert "the targets are for 100,000" in page


def test_skipped_failed_and_missing_benchmarks_say_why(tmp_path):
    results = synthetic()
    del results["train_vs_trl"], results["nf4_memory"], results["memory_plan"]
    results["noop_repro"] = {"skipped": True, "reason": "dvc status reports stale stages: train"}
    entries = {n: {"status": "ok", "run_id": "2026-01-01T00:00:00+00:00"} for n in results}
    entries["train_vs_trl"] = {"status": "skipped", "reason": "`trl` is not installed", "run_id": "r"}
    entries["nf4_memory"] = {"status": "failed", "reason": "exited with 1 and wrote no result",
                             "tail": ["Traceback", "MemoryError: boom"], "run_id": "r"}
    page = write(tmp_path, results, entries)
    assert "skipped: `trl` is not installed" in "\n".join(headline(page, "Training vs TRL SFTTrainer"))
    assert "skipped: dvc status reports stale stages: train" in "\n".join(headline(page, "No-op dvc repro"))
    assert "failed: exited with 1" in "\n".join(headline(page, "NF4 vs 16-bit memory")) and "MemoryError: boom" in page
    assert "not run: no results/memory_plan.json" in page
    serving = "\n".join(headline(page, "Serving vs naive generate (and vLLM CPU)"))
    assert "not measured: vllm is not importable here" in serving
    for name in ("train_vs_trl", "nf4_memory", "memory_plan", "noop_repro"):
        assert f"python -m benchmarks --only {name}" in page


def test_a_result_this_page_cannot_read_is_named_not_rendered_as_numbers(tmp_path):
    results = synthetic()
    del results["verify"]["median_sha256sum_s"]
    page = write(tmp_path, results)
    rows = "\n".join(headline(page, "Bundle verification vs sha256sum"))
    assert "result file unreadable by this page (KeyError" in rows and "3.00x" not in rows


def test_render_only_writes_the_page_beside_the_results_and_runs_nothing(tmp_path):
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    (results_dir / "verify.json").write_text(json.dumps(synthetic()["verify"]))
    assert main(["--render-only", "--results-dir", str(results_dir)]) == 0
    page = (tmp_path / "RESULTS.md").read_text()
    assert "3.00x" in page and "No run record" in page
    assert sorted(p.name for p in results_dir.iterdir()) == ["verify.json"]
    with pytest.raises(KeyError):
        main(["--render-only", "--only", "nonsense", "--results-dir", str(results_dir)])
    assert set(NAMES) == {b.name for b in BENCHMARKS}


def test_serving_says_which_environment_ran_it_and_how_long_the_answers_were(tmp_path):
    results = synthetic()
    results["serving"]["rows"][0].update(tokens=800, requests=16)
    entries = {n: {"status": "ok", "run_id": "r"} for n in results}
    entries["serving"]["python"] = "/repo/.venv-vllm/bin/python"
    page = write(tmp_path, results, entries)
    assert "answers averaged 50 tokens" in page and "Run with `.venv-vllm/bin/python`" in page
