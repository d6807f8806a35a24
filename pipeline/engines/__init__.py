"""Engines: the one inference interface (base.Engine) evaluation and serving share.

hf: transformers + bitsandbytes + peft. vllm: imported lazily, only where installed.
"""
