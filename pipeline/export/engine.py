"""The engine that serves each kind of export: what evaluates it and what serves it, the same."""

from __future__ import annotations

from pathlib import Path

from pipeline.export.record import ExportError


def export_engine(export_dir: str | Path, record: dict, prefix_cache_bytes: int = 0):
    """The engine that serves this kind of export, built from the export folder alone."""
    kind = record.get("kind")
    if kind == "merged":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from pipeline.engines.hf import HFEngine

        model = AutoModelForCausalLM.from_pretrained(export_dir, dtype=getattr(torch, record["dtype"]),
                                                     device_map={"": "cpu"}).eval()
        tokenizer = AutoTokenizer.from_pretrained(export_dir, trust_remote_code=False)
        return HFEngine(model, tokenizer, max_context_tokens=record["max_context_tokens"],
                        stop_token_ids=record["stop_token_ids"], prefix_cache_bytes=prefix_cache_bytes,
                        description=f"merged {record['dtype']} export of bundle {record['bundle_digest'][:12]}, "
                                    "batch-invariant")
    if kind == "gguf":
        from pipeline.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine.from_export(export_dir, record)
    raise ExportError(f"export kind {kind!r} has no engine to evaluate it with")
