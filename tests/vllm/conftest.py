"""The vllm tests share the serving tests' tiny bundle, engine, golden file and servers."""

from tests.serving.conftest import served, start_server  # noqa: F401  (pytest fixtures)
