"""`tailgate-lm-eval`: lm-eval's own command line, with the bundle engine registered as `tailgate`.

    tailgate-lm-eval --model tailgate --model_args bundle=artifacts/bundle \
        --tasks my_task --include_path my_tasks/ --apply_chat_template

`python -m pipeline.suites tasks <suite> --out my_tasks/` writes a suite's tasks, as evaluation
builds them from suite.yaml, over the items' unrendered user turns: lm-eval applies the chat
template (tests/serving/test_lm_eval_client.py runs it).

Every argument is lm-eval's (`run`, `ls`, `validate` and the rest work unchanged). The wrapper
exists because lm-eval 0.4 finds models only in its own fixed table: it has no plugin or
entry-point discovery, so a model class outside the package must be imported before lm-eval
parses `--model`. `--batch_size` is lm-eval's own flag. `model_args`: `bundle=<dir>` (verified
before anything loads), optionally `max_gen_toks`, `precision=reference` with
`reference_base=<16-bit base dir>`, or `runtime=vllm` (and `tensor_parallel_size=N`) to evaluate
through the vllm engine serving runs (vLLM's async engine; `make test-vllm` runs it).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    import pipeline.evaluate.lm_model  # noqa: F401  (registers the `tailgate` model)
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
