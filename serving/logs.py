"""Structured logs: one JSON object per line, carrying the request id of the request it is about.

The request id is set per HTTP request (a contextvar, so it follows the request's coroutine
and nothing else), returned to the client in `x-request-id` and used as the completion id, so
a client's complaint, the access line and the batch that served it can be joined.
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("tailgate_request_id", default=None)

_FIELDS = "tailgate_fields"


def new_request_id() -> str:
    return uuid.uuid4().hex[:24]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid is not None:
            line["request_id"] = rid
        line.update(getattr(record, _FIELDS, {}))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, *, exc_info: bool = False,
              **fields: Any) -> None:
    """Log `event` with machine-readable fields (they become keys of the JSON line)."""
    logger.log(level, event, exc_info=exc_info, extra={_FIELDS: fields})


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a line is logged, not when logging was set up
    (main() runs in-process under test runners that swap sys.stderr)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def setup_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for everything (uvicorn's own loggers included); idempotent."""
    root = logging.getLogger()
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    root.setLevel(level)
    # Per-request lines come from serving's own middleware, with the request id.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    for noisy in ("httpx", "httpcore", "urllib3", "filelock", "bitsandbytes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
