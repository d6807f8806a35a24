"""The Engine interface that evaluation and serving share.

An engine is built from a verified bundle (never from loose files), generates from token ids
with per-request sampling parameters, and scores log-likelihoods. Whether it is exact is a
claim the parity probe checks, not a promise taken on trust.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol, Sequence, runtime_checkable


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def generator(self):
        """A sampled request's own torch.Generator (seeded with `seed`, else at random), so its
        draws do not depend on what else runs; None when greedy."""
        if self.greedy:
            return None
        import torch

        return torch.Generator().manual_seed(self.seed if self.seed is not None
                                             else int(torch.randint(0, 2**31 - 1, (1,))))


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: Sequence[int]
    sampling: SamplingParams


@dataclass
class Completion:
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    # stop: a stop id was produced (not included in token_ids); length: budget spent;
    # cancelled: the on_token callback asked to stop (client went away).
    finish_reason: Literal["stop", "length", "cancelled"] = "length"


# on_token(row, token_id, logprob) -> False cancels that row. Called from the engine's thread.
TokenCallback = Callable[[int, int, float], bool | None]


@runtime_checkable
class Engine(Protocol):
    name: str
    exact: bool  # deterministic, and computes exactly what evaluation computed
    max_context_tokens: int
    stop_token_ids: tuple[int, ...]

    def generate(self, requests: Sequence[GenerationRequest], on_token: TokenCallback | None = None, *,
                 max_live: int | None = None,
                 on_finish: Callable[[int, Completion], None] | None = None) -> list[Completion]:
        """Generate for requests (each with its own sampling parameters), at most max_live
        decoding at once where the engine schedules; on_finish(i, completion) as each ends."""
        ...

    def loglikelihood(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 8,
                      progress: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
        """For each (context_ids, continuation_ids): sum of continuation log-probs and whether
        greedy decoding would have produced the continuation; progress(n) as n more are done."""
        ...


def check_requests(requests: Sequence[GenerationRequest], max_context_tokens: int) -> None:
    """What every engine refuses before generating: an empty prompt, or a prompt plus its
    token budget that does not fit the shipped context."""
    for r in requests:
        if not len(r.prompt_ids):
            raise ValueError("empty prompt")
        if len(r.prompt_ids) + r.sampling.max_new_tokens > max_context_tokens:
            raise ValueError(f"prompt ({len(r.prompt_ids)} tokens) + max_new_tokens "
                             f"({r.sampling.max_new_tokens}) exceeds the context ({max_context_tokens})")


def memory_share(share: float, cap_bytes: int) -> int:
    """share of this machine's physical memory, at most cap_bytes (0 where it cannot be read):
    the default budget of a cache that only ever trades memory for speed."""
    import os

    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
    return int(min(total * share, cap_bytes))
