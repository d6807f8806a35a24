"""Training data: curated JSONL -> encoded examples -> padded batches, and the system prompt
the records teach."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from pipeline.chat import IGNORE_INDEX, encode_example, stop_token_ids
from pipeline.files import read_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def encode_records(tokenizer, records: Sequence[dict], stop_ids: Sequence[int], max_len: int) -> list[Example]:
    out = []
    for r in records:
        ids, labels, _ = encode_example(tokenizer, r["messages"], stop_ids)
        if len(ids) > max_len:
            # Curation already filtered on this length; reaching here means the data and the
            # tokenizer disagree, which must not be papered over by truncation.
            raise ValueError(f"record {r.get('id')} is {len(ids)} tokens > max_seq_len_tokens {max_len}")
        out.append(Example(ids, labels))
    return out


@dataclass(frozen=True)
class SystemPrompt:
    """The system prompt a training set teaches: `text` when every record opens with the same
    system turn, None otherwise (then the template's default, if any, is what was learned for
    requests without one, or there is no single prompt to pin)."""

    text: str | None
    distinct: int  # distinct system-turn contents among the records
    records_without: int  # records whose first message is not a system turn

    def meta(self) -> dict:
        return {"system_prompt": self.text, "system_prompts_distinct": self.distinct,
                "records_without_system_prompt": self.records_without}


def system_prompt_of(records: Sequence[dict]) -> SystemPrompt:
    """Which system prompt the records share: one text, none at all, or (warned) a mix."""
    contents, without = set(), 0
    for r in records:
        messages = r["messages"]
        if messages and messages[0].get("role") == "system":
            contents.add(messages[0].get("content"))
        else:
            without += 1
    if len(contents) == 1 and without == 0:
        return SystemPrompt(next(iter(contents)), 1, 0)
    if contents:
        # Serving can pin only one prompt; with a mix, requests that bring none get the
        # template's default, which only some of the records taught.
        log.warning("training records do not share one system prompt (%d distinct, %d of %d records without "
                    "one): no system prompt is pinned", len(contents), without, len(records))
    return SystemPrompt(None, len(contents), without)


def collate(batch: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def batches(examples: Sequence[Example], batch_size: int, seed: int, group_by_length: bool = True) -> Iterator[list[Example]]:
    """An endless, seeded stream of batches, epoch after epoch.

    Length grouping: shuffle, cut into windows of 16 batches, sort each window by length and
    shuffle the batch order, so a batch pads to similar lengths (less wasted compute on CPU)
    while the epoch order stays random.
    """
    rng = random.Random(seed)
    order = list(range(len(examples)))
    while True:
        rng.shuffle(order)
        epoch = []
        window = batch_size * 16
        for start in range(0, len(order), window):
            chunk = order[start:start + window]
            if group_by_length:
                chunk.sort(key=lambda i: len(examples[i].input_ids))
            epoch.extend(chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size))
        rng.shuffle(epoch)
        for idx in epoch:
            yield [examples[i] for i in idx]


@dataclass(frozen=True)
class TrainingData:
    """The curated splits encoded with the base's tokenizer, and what the adapter records of them."""

    train: list[Example]
    val: list[Example]
    pad_id: int
    system: SystemPrompt  # pinned in the bundle; serving applies it to requests that bring none
    max_seq_len_tokens: int  # the shipped context length, from curation
    digest: str  # curated_data_digest: the digest of train.jsonl and val.jsonl


def load_training_data(tokenizer_dir: str | Path, data_dir: str | Path) -> TrainingData:
    """Read data_dir's meta.json, train.jsonl and val.jsonl and encode them with the tokenizer
    (and chat template) in tokenizer_dir; an empty train split is an error."""
    from transformers import AutoTokenizer

    data_dir = Path(data_dir)
    meta = read_json(data_dir / "meta.json")
    max_len = int(meta["max_seq_len_tokens"])
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)
    stops = stop_token_ids(tokenizer)
    train_records = read_jsonl(data_dir / "train.jsonl")
    system = system_prompt_of(train_records)
    train = encode_records(tokenizer, train_records, stops, max_len)
    val = encode_records(tokenizer, read_jsonl(data_dir / "val.jsonl"), stops, max_len)
    if not train:
        raise ValueError(f"{data_dir}/train.jsonl is empty: nothing to train on")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    return TrainingData(train, val, pad_id, system, max_len, meta["digest"])
