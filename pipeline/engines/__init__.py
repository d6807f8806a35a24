"""Engines: the one inference interface (base.Engine) evaluation and serving share.

hf: transformers + bitsandbytes + peft, batch-invariant (rowwise) or with padded batches
(padded). vllm: imported lazily, only where installed.
"""
