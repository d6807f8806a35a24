"""Offline fixtures: a tiny random Llama with a tiny BPE tokenizer, and a tiny real bundle
built from it by the pipeline's own functions (base -> quantize -> curate -> train -> bundle).

Nothing touches a model hub. The tiny model is random, so tests assert invariants (hashes,
refusals, file sets, loss falls, parity), never output quality.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# make test runs two pytest-xdist workers: each worker, and what it starts, takes its share of the
# cores, since two workers of two BLAS threads each oversubscribe a 2-core machine and spin.
# A test that proves something of the threads a release runs with (tests/unit/test_blockmm.py)
# starts its subprocess without the caps named in TAILGATE_TEST_THREAD_CAPS.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and "TAILGATE_TEST_THREAD_CAPS" not in os.environ:
    _share = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    _capped = [v for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if v not in os.environ]
    os.environ.update({v: _share for v in _capped}, TAILGATE_TEST_THREAD_CAPS=",".join(_capped))


def uncapped_env(extra: dict | None = None) -> dict:
    """os.environ without the thread caps make test's workers run under (plus extra): a
    subprocess then runs with torch's default threads, as a release is served."""
    caps = [v for v in os.environ.get("TAILGATE_TEST_THREAD_CAPS", "").split(",") if v]
    drop = set(caps) | {"TAILGATE_TEST_THREAD_CAPS", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, **(extra or {})}

REPO = Path(__file__).resolve().parents[1]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def default_raw_dir() -> Path:
    """The default synthetic dataset: data/raw when it holds it, else a fresh build of it (the
    generator is seeded, so the same bytes) in a temp dir. A team that replaced data/raw with
    its own records still runs every test written against the default data."""
    from pipeline.synth.dataset import DEFECTS_FILE, RAW_FILE

    if (REPO / "data/raw" / RAW_FILE).is_file() and (REPO / "data/raw" / DEFECTS_FILE).is_file():
        return REPO / "data/raw"
    import tempfile

    from pipeline.synth import build, outputs

    out = Path(tempfile.gettempdir()) / "tailgate-default-raw"
    if not (out / RAW_FILE).is_file():
        out.mkdir(parents=True, exist_ok=True)
        texts = outputs(build())
        for name in (RAW_FILE, DEFECTS_FILE):
            (out / name).write_text(texts[name], encoding="utf-8")
    return out


DEFAULT_RAW = default_raw_dir()


def corpus_lines(limit: int = 400) -> list[str]:
    lines = []
    with open(DEFAULT_RAW / "discharge_notes.jsonl", encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
                lines.extend(m["content"] for m in rec["messages"])
            except (ValueError, KeyError, TypeError):
                continue
            if len(lines) >= limit:
                break
    return lines


def build_tiny_model_dir(out: Path, vocab_size: int = 384, seed: int = 0, heads: int = 4, kv_heads: int = 2) -> Path:
    """A 2-layer random Llama plus a byte-level BPE trained on the repo's notes, saved as an
    ordinary HF directory with a ChatML template. (hidden 64 / heads = head_dim)"""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus_lines(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def tiny_params(tmp: Path, **overrides) -> Path:
    """A params.yaml for the tiny model: local base, short training, small eval."""
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["base"] = {"source": "local_dir", "local_dir": str(tmp / "tiny_hf"), "dtype": "bfloat16"}
    # bf16 compute whatever the default task uses: its coarser rounding is where batching
    # differences show, so the invariance tests are at their strictest
    params["quantize"]["compute_dtype"] = "bfloat16"
    # the tiny BPE spends more tokens per note than SmolLM2's: a longer context keeps the long
    # slice (its eval prompts reach ~1,300 tiny tokens)
    params["curate"]["max_seq_len_tokens"] = 2048
    params["curate"]["max_quarantine_fraction"] = 0.9
    params["train"].update(max_steps=4, batch_size=2, val_every_steps=2, warmup_steps=1, learning_rate=1e-3)
    params["evaluate"].update(limit=1, batch_size=4, max_new_tokens=8, bootstrap_samples=50)
    # the default suite's metrics, at floors a random tiny model meets
    # one item per slice (evaluate.limit): allowed explicitly, as a team iterating would
    params["gate"].update(allow_limited_evaluation=True, rules=[{"metric": "overall.field_accuracy", "min": 0.0},
                                 {"metric": "slices.*.field_accuracy", "min": 0.0},
                                 {"metric": "overall.format_valid", "min": 0.0}],
                          regression=[])
    for section, values in overrides.items():
        params[section].update(values)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def small_raw(out_dir: Path, n: int = 60) -> Path:
    """The first n raw lines (defects included) so curation has real work."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(DEFAULT_RAW / "discharge_notes.jsonl", encoding="utf-8") as src:
        lines = [next(src) for _ in range(n)]
    (out_dir / "notes.jsonl").write_text("".join(lines), encoding="utf-8")
    return out_dir


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """Run the real stage functions on the tiny model once per session; return the paths."""
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny"))


def build_tiny_pipeline(tmp: Path, params_overrides: dict | None = None, **model_kwargs) -> dict:
    from pipeline.base import fetch_base
    from pipeline.bundle.build import build_bundle
    from pipeline.curate import curate
    from pipeline.params import load_section
    from pipeline.quantize import quantize_base
    from pipeline.train import train

    build_tiny_model_dir(tmp / "tiny_hf", **model_kwargs)
    params = tiny_params(tmp, **(params_overrides or {}))
    paths = {"root": tmp, "params": params, "base": tmp / "artifacts/base", "base_q": tmp / "artifacts/base_q",
             "data": tmp / "data/curated", "adapter": tmp / "artifacts/adapter", "bundle": tmp / "artifacts/bundle",
             "raw": small_raw(tmp / "data/raw")}
    fetch_base(load_section("base", params), paths["base"])
    quantize_base(load_section("quantize", params), paths["base"], paths["base_q"])
    paths["curate_report"] = curate(load_section("curate", params), paths["raw"], REPO / "eval_suites",
                                    paths["base"], paths["data"])
    paths["train_report"] = train(load_section("train", params), paths["base_q"], paths["base"], paths["data"],
                                  paths["adapter"])
    build_bundle(load_section("bundle", params), paths["base"], paths["base_q"], paths["adapter"], paths["bundle"])
    return paths


@pytest.fixture
def bundle_copy(tiny_pipeline, tmp_path):
    """A private, fully copied bundle a test may tamper with."""
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_pipeline["bundle"], dst, copy_function=shutil.copyfile)
    return dst


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA; elsewhere they are skipped with a reason, not silently passed."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
