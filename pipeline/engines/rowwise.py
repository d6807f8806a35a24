"""Batch-invariant forward passes: a row's logits do not depend on what else is in its batch.

Why: the answer to a prompt must not depend on who else is asking. Under padded batching it
does: SDPA over a row whose keys are left-padded sums in another order than over the same keys
alone (up to 9.8e-4 on the default model), and a matmul kernel may pick another blocking for
another number of rows. Greedy decoding turns such a difference into another token sooner or
later, so the answers served under load drifted from the evaluated ones.

How, structurally rather than by measurement:

- Every sequence owns its KV cache (`Sequence`), never padded and never shared. Attention runs
  per row over exactly that row's keys and values, with the same shapes and strides whether
  the row is alone or among 63 others. The cache grows in blocks of `KV_BLOCK` positions, so
  its strides depend only on the row's own length.
- A prompt is prefilled alone (one row, its own length), exactly as evaluation prefills it.
- Every matmul of a decode step computes a row the same whatever the load. In float32 on the
  CPU the fixed-order kernel (pipeline/engines/fixedmm.py) does so by construction: the live
  rows are one block, with no padding. Elsewhere a row is computed as a block of exactly
  `DECODE_WIDTH` rows does: on blocks of that width or of another width the BLAS computes a
  row alike in (probed per shape, pipeline/engines/widths.py), fewer live rows padded with
  dummy rows that attention skips, more run as several blocks, each shape multiplied the way
  a probe found row-invariant on the machine (pipeline/engines/blockmm.py; MKL's AVX2 kernels
  are not for `F.linear`). The blocks of one step share one forward pass (`_RowBlocks`: each
  layer's projections are called once per block, so the weights are read once per block and
  the Python of a pass is paid once). Only matmuls need this: a BLAS picks its kernel by the
  number of rows, while norms, activations, rotary embeddings and the residual adds compute
  each row on its own.
- A scored continuation runs as one pass over a copy of its context's cache, the context
  prefilled alone as a prompt is (so one prefill serves every option of a choice item, and the
  generation's prefill serves the reference answer's NLL: pipeline/engines/prefix.py).
- The output head runs on such blocks everywhere (decode, the prefill's last position, prompt
  log-probs, scoring), so a position's logits do not depend on which other positions were
  asked for.

Tests build batches of 1, 2, 4 and 8 rows and random join/leave schedules and compare logits
bit for bit (tests/unit/test_batch_invariance.py); the default model's figures come from
`python -m benchmarks.invariance`.
"""

from __future__ import annotations

import functools
import logging
from typing import Sequence as Seq

import torch
import torch.nn.functional as F

from pipeline.engines import decode_llama, fixedmm
from pipeline.engines.blockmm import block_linear, key_of, orientation
from pipeline.engines.dequant import kept_forward, takes_kept_forward
from pipeline.engines.kvcache import KV_BLOCK, Sequence  # noqa: F401  (re-exported)
from pipeline.engines.widths import CANDIDATES, cover, widths

log = logging.getLogger(__name__)

ATTENTION = "tailgate_rowwise"
DECODE_WIDTH = 8  # a decode matmul computes each row as a block of this many rows does; part of the arithmetic


def rowwise_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                      tailgate_rows: Seq[Sequence | None] | None = None, **kwargs):
    """Attention for transformers' AttentionInterface: each row over its own cache only.

    query (rows, heads, q_len, head_dim); key/value hold this pass's new positions only
    (the model runs without transformers' cache). Rows whose sequence is None are padding:
    their output is zeros and nothing is cached for them. Without `tailgate_rows` (a plain
    forward of the same model) it is transformers' SDPA attention.
    """
    if tailgate_rows is None:
        # A plain forward of the engine's model (a naive baseline, a test): transformers' SDPA.
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    if kwargs.get("sliding_window") is not None:
        raise NotImplementedError("batch-invariant attention does not implement sliding windows")
    rows, q_len = query.shape[0], query.shape[2]
    out = query.new_zeros(rows, q_len, query.shape[1], query.shape[3])
    gqa = query.shape[1] != key.shape[1]
    for i, seq in enumerate(tailgate_rows):
        if seq is None:
            continue
        k, v = seq.append(module.layer_idx, key[i:i + 1], value[i:i + 1])
        if q_len > 1 and k.shape[2] != q_len:
            # A chunk over a cached prefix (scoring a continuation): query j sits at position
            # k_len - q_len + j and sees every key up to it. SDPA's is_causal would align the
            # mask to the top left instead.
            mask = torch.ones(q_len, k.shape[2], dtype=torch.bool, device=query.device).tril(k.shape[2] - q_len)
            o = F.scaled_dot_product_attention(query[i:i + 1], k, v, attn_mask=mask, scale=scaling, enable_gqa=gqa)
        else:
            o = F.scaled_dot_product_attention(query[i:i + 1], k, v, is_causal=q_len > 1, scale=scaling,
                                               enable_gqa=gqa)
        out[i] = o[0].transpose(0, 1)
    return out, None


def register() -> str:
    """Make the attention known to transformers (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, rowwise_attention)
    # SDPA's masks, for plain forwards; the rowwise passes ignore them (each row sees exactly
    # its own causal history).
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    return ATTENTION


class _RowBlocks:
    """Runs every matmul module of a decoder on row blocks while on (a decode pass).

    A matmul module is one with a weight matrix of its own (linear layers, 4-bit or not, LoRA's
    A and B): in a decode pass each block gets its own call, of a width that computes a row to
    the bits a block of DECODE_WIDTH does (pipeline/engines/widths.py), so a row's arithmetic is
    the same whatever the load. Each shape is multiplied the way its probe found row-invariant
    on this machine (pipeline/engines/blockmm.py: `plan`): the module's own forward per block
    where that is, a plain linear layer transposed, anything else one row at a time. Only the
    blocks holding live rows are computed; the rows past them (padding) come out zero. Off, or
    for a prefill (one row of many positions), the modules run as they are. A LoRA layer the
    engine fuses (pipeline/engines/lora_fused.py) calls its matmuls itself, through `multiply`."""

    def __init__(self, decoder, device: torch.device | None = None) -> None:
        self.on = False
        self.live: int | None = None  # live rows of the running decode pass (None: every row)
        self.device = (device or next(decoder.parameters()).device).type
        self.plan: dict[tuple, str] = {}
        self.widths: dict[tuple, tuple[int, ...]] = {}
        for module in decoder.modules():
            own = [p for p in module.parameters(recurse=False) if p.dim() >= 2]
            if own and not isinstance(module, torch.nn.Embedding):
                module.forward = self._blocked(module, module.forward)
                self.allowed(_matmul_key(module, own[0]))

    def how(self, n_in: int, n_out: int, dtype: torch.dtype, bias: bool) -> str:
        """This machine's row-invariant way to multiply a block by such a weight (probed once)."""
        key = (n_in, n_out, dtype, bias)
        if key not in self.plan:
            self.plan[key] = orientation(n_in, n_out, dtype, bias, DECODE_WIDTH, self.device)
        return self.plan[key]

    def allowed(self, key: tuple) -> tuple[int, ...]:
        """The block widths that compute a row of this shape as DECODE_WIDTH does, multiplied
        the way `how` says (probed once; the fixed-order kernel needs no probe: `sizes`)."""
        if key not in self.widths and self.how(*key) == fixedmm.HOW:
            self.widths[key] = CANDIDATES
        if key not in self.widths:
            # The probe speaks for a CPU BLAS on dense weights. On a GPU a 4-bit layer runs
            # bitsandbytes' own kernel, which picks its method by the number of rows where the
            # probe does not look: DECODE_WIDTH alone there.
            how = self.how(*key)
            self.widths[key] = widths(*key, how, DECODE_WIDTH, self.device) if self.device == "cpu" else (DECODE_WIDTH,)
        return self.widths[key]

    def sizes(self, rows: int, key: tuple) -> tuple[int, ...]:
        """The blocks `rows` live rows are multiplied in for a weight of `key`: one block of
        exactly those rows where the fixed-order kernel multiplies the shape (any width computes
        a row alike), else the fewest blocks of the probed widths."""
        if self.how(*key) == fixedmm.HOW:
            return (rows,)
        return cover(rows, self.allowed(key))

    def rows(self, live: int) -> int:
        """Rows a decode pass of `live` rows carries: enough for every shape's blocks."""
        return max([live] + [sum(self.sizes(live, key)) for key in list(self.plan)])

    def decoding(self, x: torch.Tensor) -> bool:
        return self.on and x.dim() == 3 and x.shape[1] == 1

    def split(self, x: torch.Tensor, key: tuple) -> list[torch.Tensor] | None:
        """x's blocks for a weight of `key` when a decode pass is running (covering its live
        rows), else None (the module runs on x as it is)."""
        if not self.decoding(x):
            return None
        return blocks_of(x, self.sizes(self.live or x.shape[0], key))

    @staticmethod
    def join(outs: list[torch.Tensor], rows: int) -> torch.Tensor:
        """The blocks' outputs as one pass of `rows` rows; rows past the blocks are padding: zero
        (or cut, where a shape met only during the pass needed more rows than the pass has)."""
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        if out.shape[0] < rows:
            out = torch.cat([out, out.new_zeros(rows - out.shape[0], *out.shape[1:])])
        return out[:rows]

    def multiply(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """`F.linear(x, weight, bias)` over a decode pass, block by block as the plan says."""
        key = key_of(weight, bias)
        how = self.how(*key)
        return self.join([block_linear(b, weight, bias, how) for b in self.split(x, key)], x.shape[0])

    def _blocked(self, module, inner):
        key, how = None, None

        def forward(x, *args, **kwargs):
            nonlocal key, how
            if not self.decoding(x):
                return inner(x, *args, **kwargs)
            if key is None:
                own = [p for p in module.parameters(recurse=False) if p.dim() >= 2]
                key = _matmul_key(module, own[0])
                how = self.how(*key)
            blocks = self.split(x, key)
            if how == "linear":
                outs = [inner(b, *args, **kwargs) for b in blocks]
            elif args or kwargs:
                outs = [inner(r.clone(), *args, **kwargs) for b in blocks for r in b.split(1)]
            elif type(module) is torch.nn.Linear:
                outs = [block_linear(b, module.weight, module.bias, how) for b in blocks]
            elif getattr(getattr(module, "weight", None), "quant_state", None) is not None \
                    and takes_kept_forward(module, x):
                # a 4-bit layer's own steps around the same product the fused LoRA forward
                # computes, so peft's forward and the fused one agree here too
                product = functools.partial(block_linear, how=how)
                outs = [kept_forward(module, b, product) for b in blocks]
            else:  # the module's own forward one row at a time (each row a fresh tensor)
                outs = [inner(r.clone(), *args, **kwargs) for b in blocks for r in b.split(1)]
            return self.join(outs, x.shape[0])

        forward.tailgate_row_blocks = True
        return forward


def blocks_of(x: torch.Tensor, sizes: tuple[int, ...]) -> list[torch.Tensor]:
    """x's rows as blocks of these sizes, zero rows added past its end when they sum to more. A
    block starting where a fresh tensor would (64-byte aligned) is passed as a view; otherwise as
    a copy, so a kernel never sees another alignment than in the probe."""
    if sizes == (x.shape[0],):
        return [x]
    if sum(sizes) > x.shape[0]:
        x = torch.cat([x, x.new_zeros(sum(sizes) - x.shape[0], *x.shape[1:])])
    aligned = (x[0].numel() * x.element_size()) % 64 == 0
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [x[a:a + w] if aligned else x[a:a + w].clone() for a, w in zip(starts, sizes)]


def _matmul_key(module, weight: torch.Tensor) -> tuple:
    """(in, out, dtype, bias) of the product a matmul module computes: a 4-bit layer multiplies
    its dequantized weight in its compute dtype, anything else its weight as it is."""
    bias = getattr(module, "bias", None)
    if hasattr(weight, "quant_state"):
        return (module.in_features, module.out_features, module.compute_dtype or torch.float32,
                bias is not None)
    return key_of(weight, bias)


class RowwiseRunner:
    """The forward passes of a batch-invariant engine over a causal LM (PEFT-wrapped or not)."""

    def __init__(self, model, pad_id: int) -> None:
        register()
        lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.config = lm.config
        self.decoder = lm.get_decoder()
        self.head = lm.get_output_embeddings()
        self.softcap = getattr(lm.config, "final_logit_softcapping", None)
        self.n_layers = lm.config.num_hidden_layers
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        # Switch only this model's attention (the engine owns the model; training never sees it).
        lm.set_attn_implementation(ATTENTION)
        self._blocks = _RowBlocks(self.decoder, self.device)
        self._blocks.allowed(_matmul_key(self.head, self.head.weight))
        from pipeline.engines.lora_fused import fuse

        self.fused_layers = fuse(self.decoder, self._blocks)
        self.lean = decode_llama.applies(self.decoder)  # decode passes without transformers' Python
        # part of the arithmetic, so of the platform record (pipeline/platform.py summarises it
        # when asked: a shape first met later is in the plan by then)
        model.tailgate_decode_plan = self._blocks.plan
        self._self_check(model)

    @torch.inference_mode()
    def _self_check(self, model) -> None:
        """The rowwise passes rebuild the causal LM's forward from its decoder and output head;
        an architecture that does more (logit scaling, sliding windows, ...) would be served
        wrong, so compare once with the model's own forward and refuse a mismatch."""
        ids = [1, 2, 3, 4, 5, 6][: max(2, min(6, self.config.vocab_size - 1))]
        _, mine = self.start(ids, all_positions=True)
        ref = model(input_ids=torch.tensor([ids], device=self.device)).logits[0]
        if mine.shape != ref.shape or not torch.allclose(mine.float(), ref.float(), atol=1e-2, rtol=1e-2):
            raise NotImplementedError(
                f"the batch-invariant passes do not reproduce {type(model).__name__}'s own forward for this "
                "architecture (largest logit difference "
                f"{float((mine.float() - ref.float()).abs().max()) if mine.shape == ref.shape else 'n/a'}); "
                "serve it with batch_invariant=False")
        if self.lean:  # one decode pass both ways: the lean pass must be transformers' to the bit
            seq = self.start(ids[:-1])[0]
            lean = self.decode([seq.copy()], ids[-1:])
            self.lean = False
            theirs = self.decode([seq.copy()], ids[-1:])
            self.lean = torch.equal(lean, theirs)
            if not self.lean:
                log.warning("the lean decode pass does not reproduce transformers' %s forward; decoding through it",
                            type(self.decoder).__name__)

    def _check(self) -> None:
        # Another attention would ignore `tailgate_rows` and attend over nothing cached.
        if self.config._attn_implementation != ATTENTION:
            raise RuntimeError(f"the model's attention was switched to {self.config._attn_implementation!r}; "
                               f"the batch-invariant engine needs {ATTENTION!r}")

    def new_sequence(self) -> Sequence:
        return Sequence(self.n_layers)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Output head over (n, hidden) rows, in blocks of widths that compute a row as a block
        of DECODE_WIDTH does (each multiplied as the plan says for the head's shape)."""
        n = hidden.shape[0]
        sizes = self._blocks.sizes(n, _matmul_key(self.head, self.head.weight))
        out = torch.cat([self._head(b) for b in blocks_of(hidden, sizes)])[:n]
        if self.softcap:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out

    def _head(self, block: torch.Tensor) -> torch.Tensor:
        how = self._blocks.how(*_matmul_key(self.head, self.head.weight))
        if type(self.head) is torch.nn.Linear:
            return block_linear(block, self.head.weight, self.head.bias, how)
        if how == "linear":
            return self.head(block)
        return torch.cat([self.head(r) for r in block.split(1)])

    def prefill(self, seq: Sequence, token_ids: Seq[int]) -> torch.Tensor:
        """Run a whole prompt into an empty sequence; returns its (len, hidden) final states."""
        if seq.length:
            raise ValueError("prefill needs an empty sequence")
        self._check()
        ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self.device)
        pos = torch.arange(ids.shape[1], device=self.device)[None, :]
        out = self.decoder(input_ids=ids, position_ids=pos, use_cache=False, tailgate_rows=[seq])
        return out.last_hidden_state[0]

    def extend(self, seq: Sequence, token_ids: Seq[int]) -> torch.Tensor:
        """Run token_ids as one pass over a sequence's cache (a continuation scored after its
        context); returns their (len, hidden) final states. Only ever applied to a sequence of
        its own (a copy of a cached prompt), so nothing running beside it sees the pass."""
        if not seq.length:
            raise ValueError("extend needs a prefilled sequence; prefill an empty one")
        self._check()
        ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self.device)
        pos = torch.arange(seq.length, seq.length + ids.shape[1], device=self.device)[None, :]
        out = self.decoder(input_ids=ids, position_ids=pos, use_cache=False, tailgate_rows=[seq])
        return out.last_hidden_state[0]

    def start(self, prompt_ids: Seq[int], all_positions: bool = False) -> tuple[Sequence, torch.Tensor]:
        """A new sequence prefilled with the prompt, and its last (or every) position's logits."""
        seq = self.new_sequence()
        hidden = self.prefill(seq, prompt_ids)
        return seq, self.logits(hidden if all_positions else hidden[-1:])

    def step(self, seqs: Seq[Sequence], token_ids: Seq[int]) -> torch.Tensor:
        return self.decode(seqs, token_ids)

    def decode(self, seqs: Seq[Sequence], token_ids: Seq[int]) -> torch.Tensor:
        """Feed one token to each sequence; returns (len(seqs), vocab) logits for the next one.
        All rows go through one forward pass, padded to what every shape's blocks cover."""
        self._check()
        n = len(seqs)
        pad = self._blocks.rows(n) - n
        ids = torch.tensor([[t] for t in token_ids] + [[self.pad_id]] * pad, dtype=torch.long, device=self.device)
        pos = torch.tensor([[s.length] for s in seqs] + [[0]] * pad, dtype=torch.long, device=self.device)
        rows = list(seqs) + [None] * pad
        self._blocks.on, self._blocks.live = True, n
        try:
            if self.lean:
                hidden = decode_llama.decode_pass(self.decoder, ids, pos, rowwise_attention, rows)
            else:
                hidden = self.decoder(input_ids=ids, position_ids=pos, use_cache=False,
                                      tailgate_rows=rows).last_hidden_state
        finally:
            self._blocks.on, self._blocks.live = False, None
        return self.logits(hidden[:n, -1])
