"""The padded batched-step path of the hf engine (`batch_invariant=False`): not batch-invariant.

Rows share one rectangular KV cache: row i owns the last `length` columns and is left-padded
with zeros (masked) up to the longest row. A prompt is prefilled alone, its cache then merged
into the batch's; a row that leaves is dropped with the columns nobody needs any more. This is
how continuous batching worked before the invariant path (`rowwise.py`), and it is kept so
that `benchmarks/serving.py` measures what invariance costs in the same run. Its answers under
load differ from the evaluated ones: SDPA over left-padded keys sums in another order (up to
9.8e-4 on the default model), enough for greedy decoding to pick another token now and then.

It reaches into transformers' `DynamicCache` layers (plain per-layer key/value tensors): that
is the price of merging caches, and why `supports` checks the layer type first.
"""

from __future__ import annotations

from typing import Sequence as Seq

import torch
import torch.nn.functional as F


class PaddedSequence:
    def __init__(self, length: int, cache) -> None:
        self.length = length  # tokens in this row's cache
        self.cache = cache  # its own cache until it joins the batch


def supports(model) -> bool:
    """Whether the model's cache is plain per-layer KV tensors (what this module can merge)."""
    from transformers import DynamicCache

    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    try:
        layers = DynamicCache(config=config).layers
    except TypeError:  # a transformers without config-aware caches
        return False
    return all(type(layer).__name__ == "DynamicLayer" for layer in layers)


class PaddedStepper:
    def __init__(self, model, device) -> None:
        if not supports(model):
            raise ValueError("padded batching needs plain per-layer KV caches; use batch_invariant=True")
        self.model, self.device = model, device
        # transformers' SDPA with the padding mask (the model may have run the rowwise one).
        (model.get_base_model() if hasattr(model, "get_base_model") else model).set_attn_implementation("sdpa")
        self.rows: list[PaddedSequence] = []
        self.cache = None

    def start(self, prompt_ids: Seq[int], all_positions: bool = False):
        from transformers import DynamicCache

        ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=DynamicCache(),
                         use_cache=True, logits_to_keep=0 if all_positions else 1)  # 0: every position
        return PaddedSequence(len(prompt_ids), out.past_key_values), out.logits[0]

    def step(self, seqs: Seq[PaddedSequence], token_ids: Seq[int]) -> torch.Tensor:
        self._arrange(list(seqs))
        lengths = torch.tensor([r.length for r in self.rows], device=self.device)
        width = int(lengths.max()) + 1  # the column this step writes
        mask = (torch.arange(width, device=self.device)[None, :] >= width - (lengths[:, None] + 1)).long()
        ids = torch.tensor([[t] for t in token_ids], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=lengths[:, None],
                         past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        for r in self.rows:
            r.length += 1
        return out.logits[:, -1]

    # -- the shared cache ---------------------------------------------------------------------

    def _arrange(self, seqs: list[PaddedSequence]) -> None:
        """Drop the rows that left, append the ones that joined, in the caller's order."""
        wanted = {id(s) for s in seqs}
        keep = [i for i, r in enumerate(self.rows) if id(r) in wanted]
        if len(keep) != len(self.rows):
            self._drop(keep)
        present = {id(r) for r in self.rows}
        for s in seqs:
            if id(s) not in present:
                self._join(s)
        if [id(r) for r in self.rows] != [id(s) for s in seqs]:
            raise ValueError("sequences must keep their relative order between steps")

    def _width(self) -> int:
        return max((r.length for r in self.rows), default=0)

    def _join(self, seq: PaddedSequence) -> None:
        if seq.cache is None:
            raise ValueError("a sequence that left the batch cannot rejoin it")
        cache, seq.cache = seq.cache, None
        if self.cache is None:
            self.rows, self.cache = [seq], cache
            return
        old, new = self._width(), seq.length
        target = max(old, new)
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, target - old), _left_pad(theirs.keys, target - new)])
            mine.values = torch.cat([_left_pad(mine.values, target - old), _left_pad(theirs.values, target - new)])
        self.rows.append(seq)

    def _drop(self, keep: list[int]) -> None:
        old = self._width()
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.cache = None
            return
        cut = old - self._width()  # leading columns only the dropped rows needed
        index = torch.tensor(keep, device=self.device)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, cut:, :]
            layer.values = layer.values.index_select(0, index)[:, :, cut:, :]


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    """Zeros before the sequence axis (dim -2) of a (batch, heads, seq, dim) tensor."""
    return F.pad(t, (0, 0, n, 0)) if n else t
