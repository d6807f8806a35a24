"""Parity probe: before serving, replay the golden outputs evaluation recorded and refuse on any
difference, so what answers requests is what was evaluated, not merely what was bundled.

The golden file holds every item evaluation generated greedily (its own outputs, in slice
round-robin order). The probe replays the first `limit` of them, all in one batch: with a
batch-invariant engine a batch gives each prompt what evaluation recorded for it, so the probe
exercises batching as well as the weights. For each it checks three things: the golden messages
encode (through the same `with_system` and `encode_prompt` serving uses for requests, so the
bundle's pinned system prompt goes in front of messages that bring none) to the golden prompt
ids, so the tokenizer, chat template and system prompt behave as they did; greedy replay with
the same budget and the manifest's stop ids gives the same token ids and finish reason; and
every token's log-prob is within LOGPROB_TOLERANCE_NATS. `python -m serving.replay` checks all
of them against the live server under concurrency.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.bundle.manifest import Manifest
from pipeline.chat import ChatFormatError, encode_prompt, with_system
from pipeline.engines.base import GenerationRequest, SamplingParams

# The replay is the same computation as the recording (same bytes, same kernels, and a
# batch-invariant engine makes the batch irrelevant), so on the machine kind that recorded it
# the log-probs come out bit-identical (measured on CPU: 0.0, also across torch thread counts).
# The slack admits a different kernel build or accumulation order for the same model and
# nothing more: running a prompt inside a padded bf16 batch (the padded engine) moved log-probs
# by up to 8e-3 nats on the tiny test model, and a changed weight, adapter or tokenizer moves
# them further.
LOGPROB_TOLERANCE_NATS = 1e-3
# An engine that does not claim exactness (vllm: other kernels, other accumulation order) is
# held to the same token ids but a looser log-prob bound: bf16 rounding of one logit is already
# ~0.1 at magnitude 20, and a different kernel moves per-token log-probs by up to a few 1e-2.
INEXACT_LOGPROB_TOLERANCE_NATS = 0.05


class ParityError(Exception):
    """The golden outputs are missing, for another bundle, or do not replay."""


class GoldenPrompt(BaseModel):
    model_config = ConfigDict(extra="ignore")  # the record also carries text, slice, ...

    id: str
    messages: list[dict[str, Any]]
    prompt_ids: list[int]
    max_new_tokens: int
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str


class GoldenRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    bundle_digest: str
    engine: str
    platform: dict[str, Any] | None = None  # pipeline/platform.py: where these outputs were produced
    prompts: list[GoldenPrompt]
    # an export's own answers name it: {name, kind, digest (sha256 of its record)}; None: the bundle's
    export: dict[str, Any] | None = None


@dataclass(frozen=True)
class ParityReport:
    status: str  # "passed" or "skipped"
    prompts: int = 0
    max_abs_logprob_diff: float | None = None
    golden_engine: str | None = None
    tolerance_nats: float = LOGPROB_TOLERANCE_NATS
    detail: str | None = None  # why a mismatch was served anyway (--allow-parity-mismatch)

    @classmethod
    def skipped(cls) -> ParityReport:
        return cls(status="skipped")

    @classmethod
    def mismatch_allowed(cls, error: ParityError, golden_engine: str | None) -> ParityReport:
        """The probe failed and the operator chose to serve anyway: /v1/models and /ready say so."""
        return cls(status="mismatch_allowed", golden_engine=golden_engine, detail=str(error))

    def as_dict(self) -> dict[str, Any]:
        if self.status == "skipped":
            return {"status": "skipped"}
        if self.status == "mismatch_allowed":
            return {"status": self.status, "detail": self.detail, "golden_engine": self.golden_engine}
        return {"status": self.status, "prompts": self.prompts, "max_abs_logprob_diff": self.max_abs_logprob_diff,
                "tolerance_nats": self.tolerance_nats, "golden_engine": self.golden_engine}


def _configuration(export: dict[str, Any] | None) -> str:
    return f"export {export.get('name')} ({str(export.get('digest'))[:12]})" if export else "the bundle itself"


def load_golden(path: str | Path, manifest: Manifest, export: dict[str, Any] | None = None) -> GoldenRecord:
    """Read the golden file and check it belongs to this bundle, and to what is served of it (the
    bundle, or the export named by `export`), before any weights load."""
    path = Path(path)
    if not path.is_file():
        raise ParityError(f"golden file {path} not found (run the evaluate stage, or pass --skip-parity-probe "
                          "to serve without the parity check)")
    try:
        record = GoldenRecord.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, ValidationError) as exc:
        raise ParityError(f"golden file {path} is not a golden record: {exc}") from None
    if record.bundle_digest != manifest.bundle_digest:
        raise ParityError(f"golden file {path} is for bundle {record.bundle_digest[:16]}, "
                          f"this bundle is {manifest.bundle_digest[:16]}")
    want, got = (export or {}).get("digest"), (record.export or {}).get("digest")
    if want != got:
        raise ParityError(f"golden file {path} holds the answers of {_configuration(record.export)}, and "
                          f"{_configuration(export)} is served")
    if not record.prompts:
        raise ParityError(f"golden file {path} has no prompts to replay")
    return record


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _describe(seq: Sequence[int], pos: int) -> str:
    return str(seq[pos]) if pos < len(seq) else "end"


PROBE_PROMPTS = 8  # golden prompts replayed at startup, in one batch (a few seconds per token)


def replay(engine: Any, record: GoldenRecord, manifest: Manifest, limit: int | None = PROBE_PROMPTS) -> ParityReport:
    """Replay the first `limit` golden prompts (None: all) in one batch; raise ParityError at
    the first one that differs."""
    stops = tuple(manifest.tokenizer.stop_token_ids)
    tolerance = LOGPROB_TOLERANCE_NATS if getattr(engine, "exact", False) else INEXACT_LOGPROB_TOLERANCE_NATS
    worst = 0.0
    prompts = record.prompts[:limit] if limit is not None else record.prompts
    for n, g in enumerate(prompts, start=1):
        where = f"golden prompt {g.id!r} ({n}/{len(prompts)})"
        try:
            # Served as a request would be: a golden record that carries its system turn is
            # encoded as recorded, one without gets the pinned prompt.
            encoded = encode_prompt(engine.tokenizer, with_system(g.messages, manifest.tokenizer.system_prompt))
        except ChatFormatError as exc:
            raise ParityError(f"{where}: its messages do not encode: {exc}") from None
        pos = _first_difference(g.prompt_ids, encoded)
        if pos is not None:
            raise ParityError(f"{where}: the chat encoding differs from evaluation's at prompt token {pos} "
                              f"(golden {_describe(g.prompt_ids, pos)}, now {_describe(encoded, pos)}): "
                              "tokenizer, chat template or system prompt changed")
    replies = engine.generate([GenerationRequest(g.prompt_ids, SamplingParams(
        max_new_tokens=g.max_new_tokens, stop_token_ids=stops)) for g in prompts])
    for n, (g, got) in enumerate(zip(prompts, replies), start=1):
        where = f"golden prompt {g.id!r} ({n}/{len(prompts)})"
        pos = _first_difference(g.token_ids, got.token_ids)
        if pos is not None:
            raise ParityError(f"{where}: generated token ids differ at position {pos} "
                              f"(golden {_describe(g.token_ids, pos)}, replay {_describe(got.token_ids, pos)})")
        if got.finish_reason != g.finish_reason:
            raise ParityError(f"{where}: finish reason {got.finish_reason!r}, golden {g.finish_reason!r}")
        for pos, (want, have) in enumerate(zip(g.logprobs, got.logprobs)):
            diff = abs(want - have)
            if not diff <= tolerance:  # `not <=` also refuses NaN
                raise ParityError(f"{where}: log-prob of token {pos} differs by {diff:.6g} nats "
                                  f"(golden {want:.6f}, replay {have:.6f}; tolerance {tolerance} for engine "
                                  f"{getattr(engine, 'name', '?')})")
            worst = max(worst, diff)
    return ParityReport(status="passed", prompts=len(prompts), max_abs_logprob_diff=worst,
                        golden_engine=record.engine, tolerance_nats=tolerance)
