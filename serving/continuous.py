"""Continuous batching for the hf engine: requests join the running batch after their own
prefill and leave it the step they finish.

Why not one `engine.generate` per batch: on CPU the prefill is compute-bound (about 3 ms a
prompt token for the default model, whatever the batch), while a decode step over eight rows
costs about twice one row's. A static batch pays its prefill for the longest prompt times the
batch (left padding), makes every row wait for the longest answer and makes a request that
arrives mid-batch wait for the whole batch. Here each prompt is prefilled alone (no padding),
its KV cache is merged into the batch's, and every decode step advances all running rows.

Exactness: a row attends only to its own keys (the columns another row needs are masked for
it), positions are per row, and token choice is `HFEngine._choose`, so a row computes what it
would alone up to the arithmetic of batched kernels; the parity probe and the concurrency
tests measure that rather than assume it.

The KV cache is rectangular: row i owns the last `lengths[i]` columns and is left-padded with
zeros (masked) up to the longest row. Joining pads whichever side is shorter; leaving drops the
row and the columns nobody needs any more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from pipeline.engines.base import Completion, GenerationRequest, check_requests
from serving.logprobs import TokenLogprob, prompt_logprobs, top_alternatives

# (token id, log-prob, top alternatives) -> False to cancel the row (its client is gone). The
# alternatives are empty unless the row was admitted with top_logprobs.
RowCallback = Callable[[int, float, tuple[tuple[int, float], ...]], bool]
# Receives the prompt's per-token log-probs right after the prefill, before the first token.
PromptCallback = Callable[[list[TokenLogprob]], None]


@dataclass
class Row:
    request: GenerationRequest
    on_token: RowCallback
    key: object = None  # the caller's handle (a Job), returned with the completion
    completion: Completion = field(default_factory=Completion)
    generator: torch.Generator | None = None
    stops: frozenset[int] = frozenset()
    length: int = 0  # tokens in this row's cache
    next_token: int = -1  # chosen, emitted, not yet fed to the model
    done: bool = False
    top_logprobs: int = 0  # alternatives to report per generated token
    # The stop id that ended the row, with its log-prob: the engine's Completion leaves it out,
    # but it was generated, and /v1/completions log-probs report it as OpenAI-style servers do.
    stop_token: TokenLogprob | None = None


def supports(engine) -> bool:
    """The hf engine, with plain per-layer KV tensors (what this module can merge and trim)."""
    from pipeline.engines.hf import HFEngine

    if not isinstance(engine, HFEngine):
        return False
    from transformers import DynamicCache

    try:
        layers = DynamicCache(config=engine.model.config).layers
    except TypeError:  # a transformers without config-aware caches
        return False
    return all(type(layer).__name__ == "DynamicLayer" for layer in layers)


class RunningBatch:
    """Rows decoding together on one `HFEngine` (single-threaded: the engine loop owns it)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.rows: list[Row] = []
        self.cache = None  # DynamicCache over the running rows, built by the first admission

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def width(self) -> int:
        return max((r.length for r in self.rows), default=0)

    @torch.inference_mode()
    def admit(self, request: GenerationRequest, on_token: RowCallback, key: object = None, *,
              top_logprobs: int = 0, on_prompt: PromptCallback | None = None) -> Row:
        """Prefill one request alone, emit its first token and (unless already finished) add it.

        Returns the row; `row.done` is True if it finished at once (stop token, budget of zero or
        one, cancelled). Raises ValueError for a request the engine refuses (context, empty
        prompt). With `on_prompt`, the prefill keeps the logits of every prompt position and
        hands out the prompt's log-probs (with `top_logprobs` alternatives): the same forward
        pass, so scoring a prompt costs its output head, not a second pass.
        """
        from transformers import DynamicCache

        e = self.engine
        check_requests([request], e.max_context_tokens)
        s = request.sampling
        gen = None
        if not s.greedy:
            gen = torch.Generator().manual_seed(s.seed if s.seed is not None
                                                else int(torch.randint(0, 2**31 - 1, (1,))))
        row = Row(request, on_token, key, generator=gen, stops=frozenset(s.stop_token_ids or e.stop_token_ids),
                  length=len(request.prompt_ids), top_logprobs=top_logprobs)
        ids = torch.tensor([list(request.prompt_ids)], dtype=torch.long, device=e.device)
        # The engine's own lock: servers in one process (the tests) may share an engine.
        with e._lock:
            out = e.model(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=DynamicCache(),
                          use_cache=True, logits_to_keep=0 if on_prompt is not None else 1)  # 0: every position
        if on_prompt is not None:
            on_prompt(prompt_logprobs(out.logits[0], request.prompt_ids, top_logprobs))
        self._advance(row, out.logits[0, -1])
        if not row.done:
            self._join(row, out.past_key_values)
        return row

    @torch.inference_mode()
    def step(self) -> list[Row]:
        """One decode step for every running row; returns (and removes) the rows that finished."""
        if not self.rows:
            return []
        e = self.engine
        lengths = torch.tensor([r.length for r in self.rows], device=e.device)
        width = int(lengths.max()) + 1  # the column this step writes
        mask = (torch.arange(width, device=e.device)[None, :] >= width - (lengths[:, None] + 1)).long()
        ids = torch.tensor([[r.next_token] for r in self.rows], dtype=torch.long, device=e.device)
        with e._lock:
            out = e.model(input_ids=ids, attention_mask=mask, position_ids=lengths[:, None],
                          past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        for i, row in enumerate(self.rows):
            row.length += 1
            self._advance(row, out.logits[i, -1])
        finished = [r for r in self.rows if r.done]
        if finished:
            self._drop([i for i, r in enumerate(self.rows) if not r.done])
        return finished

    def fail_all(self) -> list[Row]:
        """Empty the batch (after an engine error); returns the rows that were running."""
        rows, self.rows, self.cache = self.rows, [], None
        return rows

    # -- internals ----------------------------------------------------------------------------

    def _advance(self, row: Row, logits: torch.Tensor) -> None:
        """Choose the row's next token (same rules as HFEngine.generate) and hand it out."""
        c, s = row.completion, row.request.sampling
        if len(c.token_ids) >= s.max_new_tokens:
            c.finish_reason, row.done = "length", True
            return
        tok, lp = self.engine._choose(logits, row.request, row.generator)
        top = ()
        if row.top_logprobs:
            # The same float32 log-softmax `_choose` takes the chosen token's log-prob from.
            top = top_alternatives(torch.log_softmax(logits.float().cpu(), dim=-1), row.top_logprobs)
        if tok in row.stops:
            c.finish_reason, row.done = "stop", True
            row.stop_token = TokenLogprob(tok, lp, top)
            return
        c.token_ids.append(tok)
        c.logprobs.append(lp)
        row.next_token = tok
        if row.on_token(tok, lp, top) is False:
            c.finish_reason, row.done = "cancelled", True
        elif len(c.token_ids) >= s.max_new_tokens:
            c.finish_reason, row.done = "length", True  # no forward pass for a token nobody reads

    def _join(self, row: Row, cache) -> None:
        if self.cache is None:
            self.rows, self.cache = [row], cache
            return
        old, new = self.width, row.length
        target = max(old, new)
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, target - old), _left_pad(theirs.keys, target - new)])
            mine.values = torch.cat([_left_pad(mine.values, target - old), _left_pad(theirs.values, target - new)])
        self.rows.append(row)

    def _drop(self, keep: list[int]) -> None:
        old = self.width
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.cache = None
            return
        cut = old - self.width  # leading columns only the dropped rows needed
        index = torch.tensor(keep, device=self.engine.device)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, cut:, :]
            layer.values = layer.values.index_select(0, index)[:, :, cut:, :]


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    """Zeros before the sequence axis (dim -2) of a (batch, heads, seq, dim) tensor."""
    return F.pad(t, (0, 0, n, 0)) if n else t
