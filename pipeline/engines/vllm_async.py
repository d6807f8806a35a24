"""`vllm` engine through vLLM's own async engine (`AsyncLLM`): how vLLM is served at scale.

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

Exactness and batch invariance are decided as for the offline engine (vllm_invariance.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from concurrent.futures import Future
from typing import Callable, Sequence

from pipeline.engines.base import Completion, GenerationRequest, TokenCallback, check_requests
from pipeline.engines.vllm import _version, prepare, sampling_kwargs

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
                               f"bundle {m.bundle_digest[:12]}, "
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
            logprobs = o.logprobs or [None] * len(o.token_ids)
            for tok, lps in zip(o.token_ids, logprobs):
                if tok in stops:  # the stop id ends the answer and is not part of it
                    comp.finish_reason = "stop"
                    await self.llm.abort(request_id)
                    return comp
                lp = float(lps[tok].logprob) if lps is not None and tok in lps else float("nan")
                comp.token_ids.append(tok)
                comp.logprobs.append(lp)
                if on_token is not None and on_token(row, tok, lp) is False:
                    comp.finish_reason = "cancelled"
                    await self.llm.abort(request_id)
                    return comp
            if out.finished:
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

    def loglikelihood(self, pairs, batch_size: int = 8, progress=None) -> list[tuple[float, bool]]:
        raise NotImplementedError("the async vllm engine does not score; evaluate log-likelihoods with the hf "
                                  "engine (or the offline vllm engine on a GPU)")

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
