"""`hf` engine: transformers + bitsandbytes + peft, the adapter unmerged on the NF4 base.

The decode loop is written out (instead of `model.generate`) for three reasons: each row of a
batch carries its own sampling parameters and stop ids, streaming needs a per-token callback,
and the golden outputs need the log-prob of every chosen token.

Batch-invariant by default (`rowwise.py`): every prompt is prefilled alone, every row attends
over its own unpadded cache and every decode step has the same shape whatever the load, so a
row's tokens do not depend on what else runs beside it. Evaluation, the golden outputs and
serving run one decode loop (`batching.py`, continuous batching) over `start`/`step`, the
engine's public batched-step interface. `batch_invariant=False` keeps the older padded path (`padded.py`: left-padded
batches, one shared KV cache), which is faster on some loads and is measured beside the
invariant one by `benchmarks/serving.py`; it is not batch-invariant and says so.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable, Sequence

import torch

from pipeline.engines.base import Completion, GenerationRequest, TokenCallback, check_requests

log = logging.getLogger(__name__)


def load_model(base_dir: Path, adapter_dir: Path | None, dtype: torch.dtype | None = None):
    """Load a base (pre-quantized or 16-bit) and attach the adapter unmerged, in eval mode; on a
    CPU its 4-bit layers dequantize (once) rather than pack (pipeline/engines/dequant.py)."""
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype} if dtype is not None else {}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(base_dir, trust_remote_code=False, device_map={"": device}, **kwargs)
    if device == "cpu":
        from pipeline.engines.dequant import prepare_for_inference

        prepare_for_inference(model)  # before the first forward: one 4-bit kernel on every CPU
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=False)
    model.eval()
    return model


class HFEngine:
    name = "hf"

    def __init__(self, model, tokenizer, *, max_context_tokens: int, stop_token_ids: Sequence[int],
                 exact: bool = True, description: str = "", batch_invariant: bool = True,
                 prefix_cache_bytes: int = 0):
        self.model = model
        self.tokenizer = tokenizer
        self.max_context_tokens = max_context_tokens
        self.stop_token_ids = tuple(stop_token_ids)
        self.exact = exact
        self.description = description
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_token_ids[0]
        # One forward pass at a time: torch already uses every core for one batch, and the
        # KV cache of a batch is not shareable between threads. Public: a caller that drives
        # `start`/`step` from several threads (servers sharing an engine in the tests) holds it.
        self.lock = threading.Lock()
        self.batch_invariant = batch_invariant
        if batch_invariant:
            from pipeline.engines.rowwise import RowwiseRunner

            self._stepper = RowwiseRunner(model, self.pad_id)
        else:
            prefix_cache_bytes = 0  # the padded path prefills prompts together: nothing to reuse
            from pipeline.engines.padded import PaddedStepper

            self._stepper = PaddedStepper(model, self.device)
        from pipeline.engines.prefix import PrefixCache

        # Evaluation keeps prefilled prompts (a prompt is generated from, then scored after);
        # serving keeps none (0).
        self.prefixes = PrefixCache(prefix_cache_bytes)

    @classmethod
    def from_bundle(cls, bundle, precision: str = "shipped", reference_base_dir: str | Path | None = None,
                    batch_invariant: bool = True, prefix_cache_bytes: int = 0):
        """Build from a VerifiedBundle. precision=reference swaps in the 16-bit base (evaluation's
        quantization-damage comparison); everything else stays the bundle's."""
        from transformers import AutoTokenizer

        m = bundle.manifest
        if precision == "shipped":
            base_dir, dtype = bundle.root / "base_q", None
        elif precision == "reference":
            if reference_base_dir is None:
                raise ValueError("precision=reference needs the 16-bit base directory")
            base_dir, dtype = Path(reference_base_dir), getattr(torch, m.quantization.compute_dtype)
        else:
            raise ValueError(f"unknown precision {precision!r}")
        tokenizer = AutoTokenizer.from_pretrained(bundle.root / "tokenizer", trust_remote_code=False)
        model = load_model(base_dir, bundle.root / "adapter", dtype)
        return cls(model, tokenizer, max_context_tokens=m.inference.max_context_tokens,
                   stop_token_ids=m.tokenizer.stop_token_ids,
                   batch_invariant=batch_invariant, prefix_cache_bytes=prefix_cache_bytes,
                   description=f"{precision} precision, bundle {m.bundle_digest[:12]}, "
                               + ("batch-invariant" if batch_invariant else "padded batches (not batch-invariant)"))

    # -- the batched-step interface (evaluation's generate and serving's continuous batching) --

    def start(self, prompt_ids: Sequence[int], all_positions: bool = False):
        """Prefill one prompt alone; return (sequence handle, logits).

        logits is (1, vocab) for the last position, or (len(prompt), vocab) for every position
        with `all_positions` (prompt log-probs). The handle goes to `step`; drop it to free it.
        Call with `lock` held when other threads share the engine.
        """
        if not len(prompt_ids):
            raise ValueError("empty prompt")
        if len(prompt_ids) > self.max_context_tokens:
            raise ValueError(f"prompt ({len(prompt_ids)} tokens) exceeds the context ({self.max_context_tokens})")
        if all_positions:
            return self._stepper.start(prompt_ids, True)
        return self._prefilled(prompt_ids)

    def step(self, seqs: Sequence, token_ids: Sequence[int]) -> torch.Tensor:
        """Feed token_ids[i] to seqs[i]; returns (len(seqs), vocab) next-token logits.

        Sequences may join (fresh from `start`) and leave between steps; keep the survivors'
        relative order."""
        if len(seqs) != len(token_ids):
            raise ValueError("one token per sequence")
        return self._stepper.step(seqs, token_ids)

    # -- generation ---------------------------------------------------------------------------

    def _left_pad(self, seqs: Sequence[Sequence[int]]):
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            if len(s):
                ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
                mask[i, width - len(s):] = 1
        return ids, mask

    @staticmethod
    def choose(logits: torch.Tensor, req: GenerationRequest, gen: torch.Generator | None):
        """Pick the next token for one row; return (token, logprob under the model)."""
        logits = logits.float().cpu()  # the per-request generators live on the CPU
        logprobs = torch.log_softmax(logits, dim=-1)
        s = req.sampling
        if s.greedy:
            tok = int(torch.argmax(logprobs))
        else:
            probs = torch.softmax(logits / s.temperature, dim=-1)
            if s.top_p < 1.0:
                sorted_p, order = torch.sort(probs, descending=True)
                keep = torch.cumsum(sorted_p, 0) - sorted_p < s.top_p  # always keeps the top token
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
            tok = int(torch.multinomial(probs / probs.sum(), 1, generator=gen))
        return tok, float(logprobs[tok])

    def generate(self, requests: Sequence[GenerationRequest], on_token: TokenCallback | None = None, *,
                 max_live: int | None = None, on_finish: Callable[[int, Completion], None] | None = None,
                 ) -> list[Completion]:
        """Complete every request. The batch-invariant path runs the continuous batching loop
        serving runs (pipeline/engines/batching.py): at most max_live rows decoding (default:
        all), the next request admitted as soon as a row finishes, so every decode pass stays
        full; on_finish(i, completion) is called as each one ends. Neither changes a token:
        each row's arithmetic is its own."""
        if not requests:
            return []
        check_requests(requests, self.max_context_tokens)
        if self.batch_invariant:
            from pipeline.engines.batching import generate

            return generate(self, requests, on_token, max_live=max_live or len(requests), on_finish=on_finish)
        with self.lock, torch.inference_mode():
            done = self._generate_padded(requests, on_token)
        for i, c in enumerate(done):
            if on_finish is not None:
                on_finish(i, c)
        return done

    def _prefilled(self, prompt_ids: Sequence[int]):
        """(sequence, (1, vocab) next-token logits) of a prompt prefilled alone: a copy of the
        kept prefill when there is one (the same numbers), else a fresh prefill, kept."""
        hit = self.prefixes.get(prompt_ids)
        if hit is not None:
            return hit
        seq, logits = self._stepper.start(prompt_ids, False)
        self.prefixes.put(prompt_ids, seq, logits)
        return seq, logits

    def _generate_padded(self, requests, on_token):
        from transformers import DynamicCache

        n = len(requests)
        gens = [r.sampling.generator() for r in requests]
        stops = [set(r.sampling.stop_token_ids or self.stop_token_ids) for r in requests]
        ids, mask = self._left_pad([r.prompt_ids for r in requests])
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # Only the last position's logits are needed: the output head over every prompt
        # position (49k vocabulary) cost more than the rest of the prefill on CPU.
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                         past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)
        cache, logits = out.past_key_values, out.logits[:, -1, :]
        results = [Completion() for _ in range(n)]
        active = [True] * n
        next_pos = positions[:, -1] + 1
        for step in range(max(r.sampling.max_new_tokens for r in requests)):
            next_ids = torch.full((n,), self.pad_id, dtype=torch.long, device=self.device)
            for i, r in enumerate(requests):
                if not active[i]:
                    continue
                if step >= r.sampling.max_new_tokens:
                    active[i] = False  # finish_reason stays "length"
                    continue
                tok, lp = self.choose(logits[i], r, gens[i])
                if tok in stops[i]:
                    results[i].finish_reason, active[i] = "stop", False
                    continue
                results[i].token_ids.append(tok)
                results[i].logprobs.append(lp)
                next_ids[i] = tok
                if on_token is not None and on_token(i, tok, lp) is False:
                    results[i].finish_reason, active[i] = "cancelled", False
            if not any(active):
                break
            # Finished rows keep stepping with a pad token (masked out) so the batch stays
            # rectangular; their outputs are ignored.
            step_mask = torch.tensor([[1 if a else 0] for a in active], dtype=torch.long, device=self.device)
            mask = torch.cat([mask, step_mask], dim=1)
            out = self.model(input_ids=next_ids[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                             past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[:, -1, :]
            next_pos = next_pos + 1
        for i, r in enumerate(requests):
            if active[i] and len(results[i].token_ids) >= r.sampling.max_new_tokens:
                results[i].finish_reason = "length"
        return results

    # -- scoring ------------------------------------------------------------------------------

    @torch.inference_mode()
    def loglikelihood(self, pairs, batch_size: int = 8, progress: Callable[[int], None] | None = None
                      ) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-probs, whether greedy decoding gives it) per pair;
        progress(n) is called as n more pairs are done."""
        with self.lock:
            return [(float(sum(lp)), greedy) for lp, greedy in self._scored(pairs, batch_size, progress)]

    def token_logprobs(self, pairs, batch_size: int = 8) -> list[list[float]]:
        """Per-token log-probs of each continuation (evaluation's per-example NLL)."""
        with self.lock, torch.inference_mode():
            return [lp for lp, _ in self._scored(pairs, batch_size, None)]

    def _scored(self, pairs, batch_size: int, progress):
        if not self.batch_invariant:
            out = []
            for start in range(0, len(pairs), batch_size):
                out.extend(self._score_tokens(pairs[start:start + batch_size]))
                if progress is not None:
                    progress(len(pairs[start:start + batch_size]))
            return out
        return self._score_tokens(pairs, progress)

    def _score_tokens(self, pairs, progress=None):
        """Each continuation scored after its context: the context prefilled alone (once for
        every continuation that shares it, and not at all when it is kept from an earlier
        prefill), then the continuation run over a copy of its cache as one pass. Pairs are
        taken context by context, the kept ones first, so what is kept is used before it is
        pushed out; the numbers do not depend on the order, the grouping or what is kept."""
        if any(not len(c) for c, _ in pairs):
            raise ValueError("empty context: the first token has nothing to be predicted from")
        for c, x in pairs:
            if len(c) + len(x) > self.max_context_tokens:
                raise ValueError(f"scored sequence of {len(c) + len(x)} tokens exceeds the context "
                                 f"({self.max_context_tokens})")
        if not self.batch_invariant:
            return self._score_tokens_padded(pairs)
        if any(not len(x) for _, x in pairs):
            raise ValueError("empty continuation: nothing to score")
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (ctx, _cont) in enumerate(pairs):
            groups.setdefault(tuple(ctx), []).append(i)
        order = sorted(groups, key=lambda c: -self.prefixes.recency(c))  # stable: the rest keep their order
        rows: list = [None] * len(pairs)
        for ctx in order:
            seq, first = self._prefilled(ctx)
            for n, i in enumerate(groups[ctx]):
                cont = list(pairs[i][1])
                logits = first
                if len(cont) > 1:
                    # the last use may extend the sequence itself; the others extend a copy
                    own = seq if n == len(groups[ctx]) - 1 else seq.copy()
                    logits = torch.cat([first, self._stepper.logits(self._stepper.extend(own, cont[:-1]))])
                lp = torch.log_softmax(logits.float(), dim=-1).cpu()
                target = torch.tensor(cont)
                chosen = lp.gather(-1, target[:, None]).squeeze(-1)
                rows[i] = (chosen.tolist(), bool((lp.argmax(-1) == target).all()))
            if progress is not None:
                progress(len(groups[ctx]))
        return rows

    def _score_tokens_padded(self, pairs):
        """Log-prob of each continuation token given everything before it.

        Rows are left-padded (explicit positions, as in generation) so every continuation ends
        at the last column: the output head and the full-vocabulary log-softmax then run only
        over the last max(len(continuation)) + 1 columns instead of every prompt position,
        which on long notes was most of the scoring time and memory.
        """
        seqs = [list(c) + list(x) for c, x in pairs]
        ids, mask = self._left_pad(seqs)
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        keep = max(len(x) for _, x in pairs) + 1
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        rows = []
        for i, (_ctx, cont) in enumerate(pairs):
            target = torch.tensor(list(cont))
            # column keep-1 predicts the token after the last one; the continuation's own
            # predictions are the len(cont) columns before it.
            step_lp = logprobs[i, keep - 1 - len(cont):keep - 1]
            chosen = step_lp.gather(-1, target[:, None]).squeeze(-1)
            greedy = bool((step_lp.argmax(-1) == target).all())
            rows.append((chosen.tolist(), greedy))
        return rows
