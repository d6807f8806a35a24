"""What every stage entry point shares: logging, params path, failure exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

log = logging.getLogger("tailgate")


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("TAILGATE_LOG", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Libraries log progress at INFO that drowns the stage's own lines.
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "lm_eval", "bitsandbytes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return p


def run(body: Callable[[argparse.Namespace], int | None], p: argparse.ArgumentParser,
        argv: Sequence[str] | None) -> int:
    """Parse argv, run the stage body, turn an exception into a clear message and exit code 1."""
    args = p.parse_args(argv)
    setup_logging()
    try:
        return int(body(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as exc:
        log.error("%s: %s", p.prog, exc)
        return 1
