"""The vllm tests share the serving tests' fixtures (engine, golden file, servers) on their own
tiny bundle: vLLM's CPU attention needs a head size of at least 32, and the default tiny model
has 16 (hidden 64 over 4 heads), so here it has 2 heads and 1 KV head."""

import pytest

from tests.conftest import build_tiny_pipeline
from tests.serving.conftest import served, start_server  # noqa: F401  (pytest fixtures)


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny_vllm"), heads=2, kv_heads=1)


@pytest.fixture(scope="session")
def tiny_pipeline_f32(tmp_path_factory):
    """The same tiny model quantized and trained with float32 compute, as the default task is."""
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny_vllm_f32"), heads=2, kv_heads=1,
                               params_overrides={"quantize": {"compute_dtype": "float32"}})
