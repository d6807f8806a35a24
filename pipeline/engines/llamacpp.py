"""`llama.cpp` engine: a GGUF export run by llama.cpp (llama-cpp-python), behind the Engine interface.

It evaluates a GGUF export the way llama.cpp and Ollama serve it: llama.cpp's own kernels on the
export's own tensors, and the export's own tokenizer and chat template (transformers reads both
from the GGUF's metadata, so a GGUF written without its chat template cannot be evaluated as if
it had one). llama-cpp-python is optional (`pip install -e '.[bench]'`, built from the
registry's sdist); it is imported only when this engine is built.

One sequence at a time, on one llama.cpp context: a request's numbers never share a batch, so
they are the same under any load served the same way (one slot). llama.cpp's parallel slots
batch sequences together and are not batch-invariant on CPU; they are not used here.

Token choice is this engine's (greedy: the arg max of the last position's logits, log-probs from
a float64 log-softmax), the same rule the hf engine applies, so an answer differs from the
bundle's only where llama.cpp's logits do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pipeline.engines.base import Completion, GenerationRequest, TokenCallback, check_requests


def _log_softmax(row: np.ndarray) -> np.ndarray:
    x = row.astype(np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


class LlamaCppEngine:
    name = "llama.cpp"
    exact = True  # deterministic on one context, one sequence at a time: what is served is what ran
    batch_invariant = True  # nothing is ever batched with another sequence

    def __init__(self, llm, tokenizer, *, max_context_tokens: int, stop_token_ids: Sequence[int], description: str,
                 threads: int):
        self.llm = llm
        self.tokenizer = tokenizer
        self.max_context_tokens = max_context_tokens
        self.stop_token_ids = tuple(stop_token_ids)
        self.description = description
        self.threads = threads

    @classmethod
    def from_export(cls, export_dir: str | Path, record: dict, threads: int | None = None) -> "LlamaCppEngine":
        try:
            import llama_cpp
        except ImportError as exc:
            raise RuntimeError("evaluating a GGUF export needs llama-cpp-python: pip install -c constraints.txt "
                               "-e '.[bench]' (builds llama.cpp from the sdist)") from exc
        from transformers import AutoTokenizer

        path = Path(export_dir) / record["file"]
        threads = threads or len(os.sched_getaffinity(0))
        # logits_all: scoring a continuation reads every position's logits
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=record["max_context_tokens"], n_threads=threads,
                              n_threads_batch=threads, seed=0, logits_all=True, verbose=False)
        # the GGUF's own tokenizer and chat template, as a runtime that loads the file sees them
        tokenizer = AutoTokenizer.from_pretrained(Path(export_dir), gguf_file=record["file"])
        return cls(llm, tokenizer, max_context_tokens=record["max_context_tokens"],
                   stop_token_ids=record["stop_token_ids"], threads=threads,
                   description=f"{record['gguf_type']} GGUF export of bundle {record['bundle_digest'][:12]} on "
                               f"llama.cpp (llama-cpp-python {llama_cpp.__version__}), one sequence at a time")

    def platform_record(self) -> dict:
        """This machine's platform (pipeline/platform.py) with llama.cpp as the kernel: what an
        export's golden answers hold for, and what serving it compares with."""
        import llama_cpp

        from pipeline.platform import detect

        return detect(kernel=f"llama.cpp {llama_cpp.__version__} ({self.threads} threads)").as_record()

    def _last_logprobs(self) -> np.ndarray:
        return _log_softmax(np.asarray(self.llm.scores[self.llm.n_tokens - 1]))

    def _feed(self, tokens: Sequence[int], keep: int = 0) -> None:
        """Evaluate tokens after the first `keep` positions already in the context."""
        self.llm.n_tokens = keep  # eval() drops the cache past n_tokens first
        self.llm.eval(list(tokens))

    def _prefix_kept(self, ids: Sequence[int]) -> int:
        """How many leading positions of ids the context already holds (a shared prompt)."""
        held = self.llm.input_ids[:self.llm.n_tokens]
        n = min(len(held), len(ids))
        same = np.flatnonzero(held[:n] != np.asarray(ids[:n]))
        return int(same[0]) if same.size else n

    def generate(self, requests: Sequence[GenerationRequest], on_token: TokenCallback | None = None, *,
                 max_live: int | None = None, on_finish: Callable[[int, Completion], None] | None = None,
                 ) -> list[Completion]:
        check_requests(requests, self.max_context_tokens)
        done = []
        for i, r in enumerate(requests):
            s = r.sampling
            stops = set(s.stop_token_ids or self.stop_token_ids)
            rng = np.random.default_rng(s.seed) if not s.greedy else None
            c = Completion()
            self.llm.reset()
            self._feed(r.prompt_ids)
            while len(c.token_ids) < s.max_new_tokens:
                lp = self._last_logprobs()
                if s.greedy:
                    tok = int(np.argmax(lp))
                else:
                    p = np.exp(_log_softmax(np.asarray(self.llm.scores[self.llm.n_tokens - 1]) / s.temperature))
                    if s.top_p < 1.0:
                        order = np.argsort(-p, kind="stable")
                        keep = np.cumsum(p[order]) - p[order] < s.top_p
                        q = np.zeros_like(p)
                        q[order[keep]] = p[order[keep]]
                        p = q
                    tok = int(rng.choice(len(p), p=p / p.sum()))
                if tok in stops:
                    c.finish_reason = "stop"
                    break
                c.token_ids.append(tok)
                c.logprobs.append(float(lp[tok]))
                if on_token is not None and on_token(i, tok, float(lp[tok])) is False:
                    c.finish_reason = "cancelled"
                    break
                if len(c.token_ids) < s.max_new_tokens:
                    self._feed([tok], self.llm.n_tokens)
            done.append(c)
            if on_finish is not None:
                on_finish(i, c)
        return done

    def loglikelihood(self, pairs, batch_size: int = 8, progress: Callable[[int], None] | None = None,
                      ) -> list[tuple[float, bool]]:
        # pairs sharing a context are taken together, so the context is evaluated once
        order = sorted(range(len(pairs)), key=lambda i: (list(pairs[i][0]), i))
        results: dict[int, tuple[float, bool]] = {}
        for i in order:
            ctx, cont = list(pairs[i][0]), list(pairs[i][1])
            if not ctx or not cont:
                raise ValueError("a scored pair needs a context and a continuation")
            whole = ctx + cont
            if len(whole) > self.max_context_tokens:
                raise ValueError(f"pair of {len(whole)} tokens exceeds the context ({self.max_context_tokens})")
            keep = min(self._prefix_kept(whole), len(ctx))
            if keep == 0:
                self.llm.reset()
            self._feed(whole[keep:], keep)
            rows = np.asarray(self.llm.scores[len(ctx) - 1:len(whole) - 1])
            total, greedy = 0.0, True
            for row, tok in zip(rows, cont):
                lp = _log_softmax(row)
                total += float(lp[tok])
                greedy &= int(np.argmax(lp)) == tok
            results[i] = (total, greedy)
            if progress is not None:
                progress(1)
        return [results[i] for i in range(len(pairs))]
