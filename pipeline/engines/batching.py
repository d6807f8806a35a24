"""The decode loop: continuous batching over the hf engine's batched-step interface.

Requests join the running batch after their own prefill and leave it the step they finish.
This is the one loop that generates with the hf engine: evaluation's `HFEngine.generate`
(which records the golden answers), serving's engine loop (serving/batcher.py) and the
release's replay all run it, so there is no second copy of the token choice, the stop rules or
the budget whose behaviour could drift from the one evaluated.

Why not one forward pass per static batch: on CPU the prefill is compute-bound (about 3 ms a
prompt token for the default model, whatever the batch), while a decode step over eight rows
costs about twice one row's. A static batch pays its prefill for the longest prompt times the
batch (left padding), makes every row wait for the longest answer and makes a request that
arrives mid-batch wait for the whole batch. Here each prompt is prefilled alone and every
decode step advances all running rows.

Exactness: everything numeric happens in the engine (`HFEngine.start` / `step`, token choice
by `HFEngine.choose`). With the default batch-invariant engine a row's logits do not depend on
the other rows, so a request gets the same tokens whatever the load and whenever it joined;
this module only keeps the rows' bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from pipeline.engines.base import Completion, GenerationRequest, TokenCallback, check_requests

# (token id, log-prob, top alternatives) -> False to cancel the row (its caller is gone). The
# alternatives are empty unless the row was admitted with top_logprobs.
RowCallback = Callable[[int, float, tuple[tuple[int, float], ...]], bool]
# Receives the prefill's logits over every prompt position, before the first token is chosen.
PromptCallback = Callable[[torch.Tensor], None]


def top_alternatives(logprobs: Any, k: int) -> tuple[tuple[int, float], ...]:
    """The k most likely (token id, log-prob) pairs of a 1-D log-prob tensor, best first."""
    if k <= 0:
        return ()
    values, ids = torch.topk(logprobs, min(k, logprobs.shape[-1]))
    return tuple(zip(ids.tolist(), values.tolist()))


@dataclass
class Row:
    request: GenerationRequest
    on_token: RowCallback
    key: object = None  # the caller's handle, returned with the completion
    completion: Completion = field(default_factory=Completion)
    generator: torch.Generator | None = None
    stops: frozenset[int] = frozenset()
    seq: object = None  # the engine's handle for this row's cache
    next_token: int = -1  # chosen, emitted, not yet fed to the model
    done: bool = False
    top_logprobs: int = 0  # alternatives to report per generated token
    # The stop id that ended the row as (token id, log-prob, alternatives): the Completion
    # leaves it out, but it was generated, and OpenAI-style log-probs report it.
    stop_token: tuple[int, float, tuple[tuple[int, float], ...]] | None = None


def supports(engine) -> bool:
    """Engines with the batched-step interface (the hf engine, invariant or padded)."""
    from pipeline.engines.hf import HFEngine

    return isinstance(engine, HFEngine)


class RunningBatch:
    """Rows decoding together on one `HFEngine` (single-threaded: one loop owns it). Each call
    into the engine holds the engine's lock, so loops on several threads may share an engine."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.rows: list[Row] = []

    def __len__(self) -> int:
        return len(self.rows)

    @torch.inference_mode()
    def admit(self, request: GenerationRequest, on_token: RowCallback, key: object = None, *,
              top_logprobs: int = 0, on_prompt: PromptCallback | None = None) -> Row:
        """Prefill one request alone, emit its first token and (unless already finished) add it.

        Returns the row; `row.done` is True if it finished at once (stop token, budget of zero or
        one, cancelled). Raises ValueError for a request the engine refuses (context, empty
        prompt). With `on_prompt`, the prefill keeps the logits of every prompt position and
        hands them over: the same forward pass, so scoring a prompt costs its output head, not
        a second pass.
        """
        e = self.engine
        check_requests([request], e.max_context_tokens)
        s = request.sampling
        row = Row(request, on_token, key, generator=s.generator(),
                  stops=frozenset(s.stop_token_ids or e.stop_token_ids), top_logprobs=top_logprobs)
        with e.lock:
            row.seq, logits = e.start(request.prompt_ids, all_positions=on_prompt is not None)
        if on_prompt is not None:
            on_prompt(logits)
        self._advance(row, logits[-1])
        if not row.done:
            self.rows.append(row)
        return row

    @torch.inference_mode()
    def step(self) -> list[Row]:
        """One decode step for every running row; returns (and removes) the rows that finished."""
        if not self.rows:
            return []
        e = self.engine
        with e.lock:
            logits = e.step([r.seq for r in self.rows], [r.next_token for r in self.rows])
        for i, row in enumerate(self.rows):
            self._advance(row, logits[i])
        finished = [r for r in self.rows if r.done]
        if finished:
            self.rows = [r for r in self.rows if not r.done]
        return finished

    def fail_all(self) -> list[Row]:
        """Empty the batch (after an engine error); returns the rows that were running."""
        rows, self.rows = self.rows, []
        return rows

    # -- internals ----------------------------------------------------------------------------

    def _advance(self, row: Row, logits: torch.Tensor) -> None:
        """Choose the row's next token and hand it out; end the row on a stop id, its budget or
        a cancel (no forward pass is spent on a token nobody reads)."""
        c, s = row.completion, row.request.sampling
        if len(c.token_ids) >= s.max_new_tokens:
            c.finish_reason, row.done = "length", True
            return
        tok, lp = self.engine.choose(logits, row.request, row.generator)
        top = ()
        if row.top_logprobs:
            # The same float32 log-softmax `choose` takes the chosen token's log-prob from.
            top = top_alternatives(torch.log_softmax(logits.float().cpu(), dim=-1), row.top_logprobs)
        if tok in row.stops:
            c.finish_reason, row.done = "stop", True
            row.stop_token = (tok, lp, top)
            return
        c.token_ids.append(tok)
        c.logprobs.append(lp)
        row.next_token = tok
        if row.on_token(tok, lp, top) is False:
            c.finish_reason, row.done = "cancelled", True
        elif len(c.token_ids) >= s.max_new_tokens:
            c.finish_reason, row.done = "length", True


def generate(engine, requests: Sequence[GenerationRequest], on_token: TokenCallback | None = None, *,
             max_live: int, on_finish: Callable[[int, Completion], None] | None = None) -> list[Completion]:
    """Every request through one running batch, at most max_live rows decoding and the next
    admitted as soon as a row finishes, so every decode step stays full; on_token(i, token,
    log-prob) as each token is chosen (False cancels request i), on_finish(i, completion) as
    each one ends. Serving admits its requests the same way as they arrive."""
    batch = RunningBatch(engine)
    waiting = iter(range(len(requests)))
    results: list[Completion | None] = [None] * len(requests)

    def finish(row: Row) -> None:
        results[row.key] = row.completion
        if on_finish is not None:
            on_finish(row.key, row.completion)

    def admit() -> None:
        while len(batch) < max_live and (i := next(waiting, None)) is not None:
            emit = (lambda tok, lp, _top, i=i: on_token(i, tok, lp)) if on_token is not None else _keep
            row = batch.admit(requests[i], emit, key=i)
            if row.done:
                finish(row)

    admit()
    while len(batch):
        for row in batch.step():
            finish(row)
        admit()
    return results  # type: ignore[return-value]  (every request finished)


def _keep(_tok: int, _lp: float, _top) -> bool:
    return True
