"""The bundle manifest: every piece that determines the shipped model's behaviour, pinned.

`bundle_digest` is the sha256 of the canonical JSON of `digested()`: the base, quantization,
tokenizer, adapter, inference and provenance sections. The `built` section (time, host,
paths, git commit) sits outside it, so rebuilding from the same inputs on the same kind of
machine gives the same digest.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipeline.artifacts import MANIFEST as MANIFEST_NAME
from pipeline.files import digest_json, files_digest  # noqa: F401  (re-exported)

# 2: tokenizer.system_prompt (the system prompt trained with is pinned and applied by serving).
SCHEMA_VERSION = 2
# Only weights in safetensors and plain data/text may ship: no pickles, no code.
ALLOWED_SUFFIXES = (".safetensors", ".json", ".jinja", ".txt", ".md")


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_M):
    sha256: str
    size: int


Files = dict[str, FileEntry]  # path relative to the bundle root -> entry


class BaseSection(_M):
    source: dict[str, Any] = Field(description="Where the 16-bit base came from (package/file/sha256 or local path).")
    source_sha256: str = Field(description="sha256 of the base lock file (hashes of every 16-bit base file).")
    architecture: str
    num_parameters: int
    files: Files = Field(description="The pre-quantized base as shipped (base_q/...).")


class QuantizationSection(_M):
    method: str = Field(description="nf4, fp4 or none.")
    compute_dtype: str
    bnb_config: dict[str, Any] | None = Field(description="Full BitsAndBytesConfig; None for a 16-bit base.")
    bitsandbytes_version: str
    bits_per_param: float | None = Field(description="Measured bits per quantized parameter (packed + constants).")


class TokenizerSection(_M):
    files: Files
    chat_template_sha256: str = Field(description="sha256 of the chat template text the tokenizer applies.")
    bos_token_id: int | None
    eos_token_id: int
    pad_token_id: int | None
    stop_token_ids: tuple[int, ...]
    system_prompt: str | None = Field(description="The system prompt the adapter was trained with (every training "
                                      "record opened with it), applied by serving and evaluation to requests and "
                                      "items that bring no system turn; None when training had none or a mix, and "
                                      "then the chat template's own default, if any, applies.")


class AdapterSection(_M):
    files: Files
    lora_config: dict[str, Any]
    base_digest: str = Field(description="The base the adapter was trained on: the digest of the base_q file hashes "
                             "(QLoRA), or base.source_sha256 when it was trained on the 16-bit base.")


class InferenceSection(_M):
    max_context_tokens: int
    max_new_tokens: int
    temperature: float
    top_p: float


class ProvenanceSection(_M):
    curated_data_digest: str
    params_digest: str = Field(description="Digest of the train params the adapter was trained with.")
    seed: int
    versions: dict[str, str] = Field(description="torch, transformers, peft, bitsandbytes versions at training.")
    hardware: str = Field(description="Device kind training ran on (numerics depend on it).")
    optimizer: str = Field(description="The optimizer that actually ran.")


class BuiltSection(_M):
    time_utc: str
    host: str
    git_commit: str | None
    source_paths: dict[str, str]


class Manifest(_M):
    schema_version: int = SCHEMA_VERSION
    bundle_digest: str
    base: BaseSection
    quantization: QuantizationSection
    tokenizer: TokenizerSection
    adapter: AdapterSection
    inference: InferenceSection
    provenance: ProvenanceSection
    built: BuiltSection

    def digested(self) -> dict[str, Any]:
        return compute_digest_input(self.model_dump(mode="json"))

    def all_files(self) -> Files:
        return {**self.base.files, **self.tokenizer.files, **self.adapter.files}


DIGESTED_SECTIONS = ("schema_version", "base", "quantization", "tokenizer", "adapter", "inference", "provenance")


def compute_digest_input(data: dict[str, Any]) -> dict[str, Any]:
    return {k: data[k] for k in DIGESTED_SECTIONS}


def compute_bundle_digest(data: dict[str, Any]) -> str:
    return digest_json(compute_digest_input(data))
