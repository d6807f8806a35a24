"""The `curate` section: turning raw records into train/val splits."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.params.common import _Strict


DEFAULT_SLICE_LOSS_FRACTION = 0.5  # what a slice that a per-slice mapping does not name (and no `*`) may lose


class CuratePiiParams(_Strict):
    """Pattern-based PII scrubbing of every message of kept records (pipeline/curate/pii.py)."""

    enabled: bool = Field(True, description="Replace identifiers by typed placeholders such as [EMAIL] before dedup.")
    patterns: dict[str, str] | None = Field(
        None, description="The full pattern set, type -> Python regex (a group named `pii` limits the replacement to "
        "that group); null = the defaults in pipeline/curate/pii.py (email, phone, mrn, dob, national_id). Earlier "
        "types win where matches overlap.")
    extra_patterns: dict[str, str] = Field(
        default_factory=dict, description="Types added to `patterns` (a type already there is replaced).")


class CurateQualityParams(_Strict):
    """Cheap, explainable quality heuristics; each has its own reason code."""

    repetition_ngram: int = Field(
        10, ge=1, description="Word n-gram size of the repetition measure. Long enough that templated clinical "
        "phrasing with varying values (daily vitals, progress notes) does not count, a duplicated paragraph or a "
        "generation loop does.")
    max_repeated_ngram_fraction: float = Field(
        0.3, gt=0.0, le=1.0, description="`repetitive` when more than this share of a message's word n-grams repeat "
        "an earlier one (default data: clean records at most 0.03, the 12-17k-character planted notes at most 0.09).")
    min_alpha_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="`symbol_ratio` when letters are less than this share of a message's "
        "non-space characters (clean default data: at least 0.74; its notes are number-heavy).")
    min_words: int = Field(
        20, ge=1, description="Messages with fewer words are too short for the repetition share to mean anything.")
    min_visible_chars: int = Field(
        20, ge=1, description="Messages with fewer non-space characters are not judged by the alphabetic share.")
    copy_ngram: int = Field(5, ge=1, description="Word n-gram size of the reply-copies-prompt measure.")
    max_copied_ngram_fraction: float = Field(
        0.8, gt=0.0, le=1.0, description="`copied_prompt` when more than this share of the reply's word n-grams "
        "occur in the user turns (clean default data: at most 0.35), or the reply equals a user turn.")


class CurateNearDupParams(_Strict):
    """Near-duplicate removal with MinHash LSH (datasketch) over word n-grams of the user and
    assistant turns (a system turn, usually shared by every record, is left out)."""

    enabled: bool = Field(True, description="Quarantine records whose estimated Jaccard to a kept one reaches threshold.")
    threshold: float = Field(
        0.8, gt=0.0, lt=1.0, description="Estimated Jaccard similarity of word n-gram sets at which a record is a "
        "near duplicate (default data: clean pairs at most 0.29, planted near duplicates at least 0.94).")
    ngram: int = Field(5, ge=1, description="Word n-gram (shingle) size.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (estimate SD about sqrt(J(1-J)/num_perm)).")


class CurateDecontamParams(_Strict):
    """Removal of training records that contain eval items: n-gram overlap (as lm-eval's
    decontamination) and exact prompt matches, on the user and assistant turns."""

    ngram: int = Field(13, ge=4, description="Word n-gram size (lm-eval's default is 13).")
    max_eval_item_share: float = Field(
        0.05, gt=0.0, le=1.0, description="Eval n-grams found in more than this share of eval items are boilerplate "
        "(instructions, headers, template phrases): they identify no item and are ignored.")
    min_overlap_fraction: float = Field(
        0.5, gt=0.0, le=1.0, description="A record leaks an eval item when it contains at least this share of the "
        "item's remaining n-grams (default data: clean records at most 0.20, verbatim copies 1.0).")
    exact_prompt: bool = Field(
        True, description="Also quarantine a record whose user turn (or whose opening user turns) equals an eval "
        "item's prompt up to case, whitespace and punctuation, whatever its length: a prompt of a few words has no "
        "n-gram of `ngram` words to match. Prompts shared by more than max_eval_item_share of a suite's items "
        "(and by more than one) identify no item and are not matched.")


class CurateParams(_Strict):
    """Turning raw records into train/val splits."""

    raw_glob: str | list[str] = Field(
        "*.jsonl", description="Glob(s) of files under the raw directory to read: .jsonl (also .jsonl.gz), .parquet, .csv.")
    format: Literal["auto", "messages", "prompt_completion"] = Field(
        "auto", description="Record shape. auto: per record, a `messages` list is a chat; `prompt` + `completion` "
        "become a user turn and an assistant turn.")
    system: str | None = Field(None, description="System turn put before prompt/completion records (none if null).")
    max_line_bytes: int = Field(
        1_000_000, ge=1024, description="Longer JSONL lines are quarantined (line_too_long) without being read whole.")
    min_seq_len_tokens: int = Field(
        64, ge=1, description="Records shorter than this under the chat template are rejected (too_short).")
    max_seq_len_tokens: int = Field(
        1024, gt=16, description="Shipped context: records longer than this under the chat template are rejected.")
    quality: CurateQualityParams = Field(default_factory=CurateQualityParams, description="Quality heuristics.")
    pii: CuratePiiParams = Field(default_factory=CuratePiiParams, description="PII scrubbing.")
    near_dup: CurateNearDupParams = Field(default_factory=CurateNearDupParams, description="Near-duplicate removal.")
    decontam: CurateDecontamParams = Field(default_factory=CurateDecontamParams, description="Eval decontamination.")
    val_fraction: float = Field(
        0.03, ge=0.0, lt=0.5, description="Share of curated records held out for validation loss, drawn per record "
        "from a hash of its content and `seed` (a record keeps its split when other records change). 0 = no "
        "validation split at all.")
    min_val_records_per_slice: int = Field(
        1, ge=0, description="Every slice gets at least this many validation records (when val_fraction > 0): a "
        "slice the hash draw left short takes the kept training records of lowest hash, never more than half "
        "of the slice's kept records, so a small tail is in the validation loss too. Deterministic; counts per "
        "slice in the report (`validation`).")
    seed: int = Field(20261123, description="Seed of the deterministic train/val split.")
    workers: int = Field(
        0, ge=0, description="Processes running the per-record checks (tokenization, heuristics, hashing); 0 = one "
        "per available CPU core, 1 = in the stage's own process. Outputs are identical for any value.")
    max_quarantine_fraction: float = Field(
        0.25, gt=0.0, le=1.0, description="Fail the stage when more than this share of input records is rejected."
    )
    max_slice_loss_fraction: float | dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        0.5, description="A slice (the records' `slice` field) that loses more than this share of its records to "
        "the quarantine fails the stage (or warns, see on_slice_loss), naming the slice and the reason that took "
        "most of it: the feared tails are what filters strip first. One number for every slice, or a mapping "
        "slice -> limit with `*` for the slices it does not name (0.5 when absent), e.g. {'*': 0.5, outage: 0.0, "
        "common: 0.8}: 0 protects a tail from losing any record. A named slice that no input record has fails the "
        "stage (a misspelt name would protect nothing).")
    on_slice_loss: Literal["fail", "warn"] = Field(
        "fail", description="What a slice over max_slice_loss_fraction does: fail the stage, or log a warning and "
        "flag it in the report.")

    @field_validator("max_slice_loss_fraction")
    @classmethod
    def _slice_limits(cls, v: float | dict[str, float]) -> float | dict[str, float]:
        if isinstance(v, dict):
            for name in v:
                if not name.strip():
                    raise ValueError("curate.max_slice_loss_fraction: a slice name is empty")
                if name == "(none)":  # pipeline.curate.limits.NO_SLICE: not a slice, judged by max_quarantine_fraction
                    raise ValueError("curate.max_slice_loss_fraction: '(none)' holds records whose slice could not be "
                                     "read and is not a slice; curate.max_quarantine_fraction limits it")
            return dict(sorted(v.items()))
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"curate.max_slice_loss_fraction {v} is not a share between 0 and 1")
        return v

    @model_validator(mode="after")
    def _lengths_ordered(self) -> "CurateParams":
        if self.min_seq_len_tokens >= self.max_seq_len_tokens:
            raise ValueError("curate.min_seq_len_tokens must be below curate.max_seq_len_tokens")
        return self

    def slice_loss_limit(self, slice_name: str) -> float:
        """The loss limit of one slice: its own, else the mapping's `*`, else the single number."""
        v = self.max_slice_loss_fraction
        if isinstance(v, dict):
            return v.get(slice_name, v.get("*", DEFAULT_SLICE_LOSS_FRACTION))
        return v
