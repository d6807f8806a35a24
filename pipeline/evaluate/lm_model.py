"""The bundle's Engine as an lm-eval model, so lm-eval tasks run through the shipped path.

Registered as lm-eval model `tailgate` (from the command line: `tailgate-lm-eval`, see
lm_eval_cli.py): `model_args` take `bundle=<dir>` (verified before anything loads) and
optionally `batch_size`, `max_gen_toks`, `precision` (shipped|reference) and `reference_base`
(checked against the bundle's pinned base), and `runtime=vllm` (with `tensor_parallel_size`) to
run the tasks through the vllm engine that serving runs (the same `AsyncLLM` path, not a second
one; it scores log-likelihoods on a GPU only). Evaluation passes an already-built engine instead.
"""

from __future__ import annotations

import logging
from typing import Sequence

import lm_eval.models  # noqa: F401  (see below)
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from pipeline.engines.base import GenerationRequest, SamplingParams

log = logging.getLogger(__name__)


def build_engine(bundle: str | None, runtime: str, precision: str, reference_base: str | None, batch_size: int,
                 tensor_parallel_size: int):
    """The engine named by lm-eval's model_args, on a bundle verified before anything loads."""
    if bundle is None:
        raise ValueError("tailgate lm-eval model needs bundle=<dir>")
    if runtime not in ("hf", "vllm"):
        raise ValueError(f"runtime must be hf or vllm, not {runtime!r}")
    if runtime == "vllm" and precision != "shipped":
        raise ValueError("runtime=vllm runs the shipped bundle only (precision=reference runs on hf)")
    from pipeline.bundle.verify import verify_bundle

    verified = verify_bundle(bundle)
    if runtime == "vllm":
        from pipeline.engines.vllm_async import AsyncVLLMEngine

        return AsyncVLLMEngine.from_bundle(verified, max_batch=batch_size, tensor_parallel_size=tensor_parallel_size)
    from pipeline.engines.hf import HFEngine

    if precision == "reference" and reference_base is not None:
        from pipeline.evaluate.damage import check_reference_base

        check_reference_base(verified.manifest, reference_base)
    return HFEngine.from_bundle(verified, precision=precision, reference_base_dir=reference_base)


# lm-eval fills its model table with the built-in models only when the table is empty at the
# first lookup; registering ours first would hide them (`local-chat-completions` included), so
# the built-ins are imported above, before this registration.
@register_model("tailgate")
class TailgateLM(LM):
    def __init__(self, bundle: str | None = None, engine=None, batch_size: int | str = 16,
                 precision: str = "shipped", reference_base: str | None = None, max_gen_toks: int = 256,
                 runtime: str = "hf", tensor_parallel_size: int | str = 1, **_ignored):
        super().__init__()
        if engine is None:
            engine = build_engine(bundle, runtime, precision, reference_base, int(batch_size),
                                  int(tensor_parallel_size))
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.batch_size = int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self.contexts: list[str] = []  # every generation context seen, for the template parity check
        # every generation by its prompt ids: (sampling, Completion), the golden outputs' source
        self.completions: dict[tuple[int, ...], tuple] = {}

    # -- encoding -------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def split_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Tokenize context+continuation as one string (as the model sees it) and split it at the
        context boundary, so BPE merges across the boundary are not invented."""
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        if whole[: len(ctx)] != ctx:
            raise ValueError("context tokenizes differently when followed by the continuation")
        return ctx, whole[len(ctx):]

    # -- lm-eval interface --------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        prompts = []
        for req in requests:
            context, gen_kwargs = req.args
            self.contexts.append(context)
            kw = dict(gen_kwargs or {})
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            ids = self.encode(context)
            room = self.engine.max_context_tokens - len(ids)
            if room <= 0:
                raise ValueError(f"prompt of {len(ids)} tokens leaves no room in the {self.engine.max_context_tokens}-token context")
            # The shipped context bounds prompt + reply, as it will when serving.
            max_new = min(int(kw.pop("max_gen_toks", self.max_gen_toks)), self.max_gen_toks, room)
            temperature = float(kw.pop("temperature", 0.0)) if kw.pop("do_sample", False) else 0.0
            prompts.append((ids, until, SamplingParams(
                max_new_tokens=max_new, temperature=temperature, seed=0 if temperature else None,
                stop_token_ids=self.engine.stop_token_ids)))
        # Longest first: an OOM shows up at once. All requests go to the engine together, at
        # most batch_size decoding at a time and the next admitted as one finishes, so no decode
        # pass waits on the longest answer of a fixed batch (the engine is batch-invariant: the
        # tokens are those of each request alone).
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i][0]))
        outputs: list[str] = [""] * len(prompts)
        with tqdm(total=len(prompts), desc="generate", disable=disable_tqdm, unit="item") as bar:
            done = self.engine.generate([GenerationRequest(prompts[i][0], prompts[i][2]) for i in order],
                                        max_live=self.batch_size, on_finish=lambda _j, _c: bar.update(1))
        for i, completion in zip(order, done):
            self.completions[tuple(prompts[i][0])] = (prompts[i][2], completion)
            text = self.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
            for stop in prompts[i][1]:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            outputs[i] = text
        return outputs

    def _scored(self, pairs: list, desc: str, disable: bool) -> list[tuple[float, bool]]:
        """The engine's log-likelihoods of pairs, all at once (so pairs sharing a context share
        its prefill, whatever order lm-eval sends them in) with a progress bar."""
        with tqdm(total=len(pairs), desc=desc, disable=disable, unit="seq") as bar:
            return self.engine.loglikelihood(pairs, batch_size=self.batch_size, progress=bar.update)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self.split_pair(*req.args) for req in requests]
        return self._scored(pairs, "loglikelihood", disable_tqdm)

    def rolling_windows(self, text: str) -> list[tuple[list[int], list[int]]]:
        """lm-eval's own disjoint (context, continuation) windows over the whole text, as its HF
        model scores them: the first predicts from the prefix token (bos, else the first stop id);
        every full window after it from the one token before it (context_len=1), and the last,
        shorter one from as many preceding tokens as fill the window.

        lm-eval's window spans max_seq_len + 1 tokens of which its HF model feeds max_seq_len
        (the last token's logits are never needed); the engine scores context + continuation as
        one sequence of at most its context, so max_seq_len is that context less one."""
        prefix = (self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None
                  else self.engine.stop_token_ids[0])
        return [make_disjoint_window(w) for w in get_rolling_token_windows(
            token_list=self.encode(text), prefix_token=prefix,
            max_seq_len=self.engine.max_context_tokens - 1, context_len=1)]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows = [self.rolling_windows(req.args[0]) for req in requests]
        flat = [w for ws in windows for w in ws]
        # All windows of all requests together: the engine scores each alone (batch-invariant).
        scores = self._scored(flat, "loglikelihood (rolling)", disable_tqdm) if flat else []
        out, start = [], 0
        for ws in windows:
            out.append(float(sum(lp for lp, _ in scores[start:start + len(ws)])))
            start += len(ws)
        return out

    def apply_chat_template(self, chat_history: Sequence[dict], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(list(chat_history), tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    @property
    def tokenizer_name(self) -> str:
        return "tailgate-bundle-tokenizer"

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.tokenizer.chat_template
