"""Everything a running server holds: the engine, what it serves, and how it is doing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any, Protocol

from pipeline.bundle.manifest import Manifest
from pipeline.bundle.verify import adapter_trained_on
from pipeline.engines.base import Engine
from pipeline.files import files_digest
from serving.batcher import Batcher
from serving.logprobs import TokenStrings
from serving.metrics import ServingMetrics
from serving.probe import ParityReport
from serving.responses import ModelCard


SYSTEM_PROMPT_APPLIED_TO = "chat requests without a system message"
SYSTEM_PROMPT_NONE = ("nothing: training pinned no system prompt, so chat requests are rendered as sent "
                      "(the chat template's own default, if any, applies)")


class TokenizingEngine(Engine, Protocol):
    """An engine that also exposes the bundle's tokenizer (serving encodes and decodes text)."""

    tokenizer: Any


@dataclass
class ServingState:
    engine: TokenizingEngine
    manifest: Manifest
    parity: ParityReport
    batcher: Batcher
    metrics: ServingMetrics
    api_key: str | None
    request_timeout_s: float
    release: dict[str, Any] | None = None
    # The last `python -m serving.replay` of this bundle's evaluated items (--replay-report).
    replay: dict[str, Any] | None = None
    # This machine's platform against the evaluated one, and the release's attestations.
    platform: dict[str, Any] | None = None
    # The export served instead of the bundle ({name, kind, digest}); None: the bundle itself.
    configuration: dict[str, Any] | None = None

    @property
    def model_id(self) -> str:
        suffix = f"-{self.configuration['name']}" if self.configuration else ""
        return f"tailgate-{self.manifest.bundle_digest[:12]}{suffix}"

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return tuple(self.manifest.tokenizer.stop_token_ids)

    @property
    def system_prompt(self) -> str | None:
        return self.manifest.tokenizer.system_prompt

    @cached_property
    def token_strings(self) -> TokenStrings:
        """Token texts for log-probs, memoized for the server's life (the vocabulary is fixed)."""
        return TokenStrings(self.engine.tokenizer)

    def model_card(self) -> ModelCard:
        m = self.manifest

        def component(files: dict[str, Any]) -> dict[str, Any]:
            return {"digest": files_digest(files), "files": {k: v.sha256 for k, v in sorted(files.items())}}

        return ModelCard(
            id=self.model_id,
            created=int(datetime.fromisoformat(m.built.time_utc).timestamp()),
            bundle_digest=m.bundle_digest,
            components={
                "base": {**component(m.base.files), "architecture": m.base.architecture,
                         "quantization": m.quantization.method, "source_sha256": m.base.source_sha256},
                "adapter": {**component(m.adapter.files), "base_digest": m.adapter.base_digest,
                            "trained_on": adapter_trained_on(m)},
                "tokenizer": component(m.tokenizer.files),
                "chat_template_sha256": m.tokenizer.chat_template_sha256,
            },
            system_prompt={"text": m.tokenizer.system_prompt, "applied_to": SYSTEM_PROMPT_APPLIED_TO
                           if m.tokenizer.system_prompt is not None else SYSTEM_PROMPT_NONE},
            engine={"name": self.engine.name, "exact": self.engine.exact,
                    "batch_invariant": bool(getattr(self.engine, "batch_invariant", False)),
                    # what a user set for scale (vLLM: tensor_parallel_size, max_num_seqs, ...)
                    **({"scale": self.engine.scale} if getattr(self.engine, "scale", None) else {})},
            max_context_tokens=self.engine.max_context_tokens,
            parity=self.parity.as_dict(),
            release=self.release,
            replay=self.replay,
            platform=self.platform,
            configuration=self.configuration or {"name": "bundle"},
        )


def build_state(engine: TokenizingEngine, manifest: Manifest, parity: ParityReport, *, max_batch: int,
                max_queue: int, api_key: str | None, request_timeout_s: float,
                release: dict[str, Any] | None = None, replay: dict[str, Any] | None = None,
                platform: dict[str, Any] | None = None, configuration: dict[str, Any] | None = None) -> ServingState:
    metrics = ServingMetrics()
    from pipeline.engines.batching import supports

    batcher = Batcher(engine, metrics, max_batch=max_batch, max_queue=max_queue, continuous=supports(engine))
    return ServingState(engine=engine, manifest=manifest, parity=parity, batcher=batcher, metrics=metrics,
                        api_key=api_key or None, request_timeout_s=request_timeout_s, release=release,
                        replay=replay, platform=platform, configuration=configuration)
