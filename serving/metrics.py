"""Prometheus text exposition (format 0.0.4), written out instead of taking a dependency.

Three instrument kinds cover what /metrics reports: counters (requests by endpoint and status,
tokens), gauges (queue depth, running batch) and histograms (latency, batch size).
Updates come from the event loop and the batch worker thread, so every instrument locks.
"""

from __future__ import annotations

import math
import threading
from typing import Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_labels(labels: Labels, extra: Labels = ()) -> str:
    pairs = labels + extra
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _fmt_value(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class Counter:
    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()):
        self.name, self.help, self.label_names = name, help_text, tuple(label_names)
        self._values: dict[Labels, float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple((k, labels[k]) for k in self.label_names)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.label_names:
            items = [((), 0.0)]
        lines += [f"{self.name}{_fmt_labels(k)} {_fmt_value(v)}" for k, v in items]
        return lines


class Gauge:
    def __init__(self, name: str, help_text: str):
        self.name, self.help = name, help_text
        self._value = 0.0
        self._lock = threading.Lock()

    def set(self, value: float) -> None:
        with self._lock:
            self._value = value

    def render(self) -> list[str]:
        with self._lock:
            value = self._value
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {_fmt_value(value)}"]


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: Sequence[float], label_names: Sequence[str] = ()):
        self.name, self.help, self.label_names = name, help_text, tuple(label_names)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._series: dict[Labels, tuple[list[int], list[float]]] = {}  # counts per bucket, [sum]
        self._lock = threading.Lock()

    def observe(self, value: float, **labels: str) -> None:
        key = tuple((k, labels[k]) for k in self.label_names)
        with self._lock:
            counts, total = self._series.setdefault(key, ([0] * len(self.buckets), [0.0]))
            for i, edge in enumerate(self.buckets):
                if value <= edge:
                    counts[i] += 1  # cumulative: every bucket whose edge is above the value
            total[0] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            series = sorted((k, (list(c), s[0])) for k, (c, s) in self._series.items())
        for key, (counts, total) in series:
            for edge, count in zip(self.buckets, counts):
                lines.append(f"{self.name}_bucket{_fmt_labels(key, (('le', _fmt_value(edge)),))} {count}")
            lines.append(f"{self.name}_sum{_fmt_labels(key)} {_fmt_value(total)}")
            lines.append(f"{self.name}_count{_fmt_labels(key)} {counts[-1]}")
        return lines


class ServingMetrics:
    """Everything /metrics exposes."""

    def __init__(self) -> None:
        self.requests = Counter("tailgate_requests_total", "HTTP requests by endpoint and status code.",
                                ("endpoint", "status"))
        self.latency = Histogram("tailgate_request_latency_seconds", "Time from request to last byte sent.",
                                 (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120), ("endpoint",))
        self.prompt_tokens = Counter("tailgate_prompt_tokens_total", "Prompt tokens of generation requests run.")
        self.generated_tokens = Counter("tailgate_generated_tokens_total", "Tokens the engine generated.")
        self.batch_size = Histogram("tailgate_batch_size", "Requests per engine batch: a generate call, or the running rows of one decode step.",
                                    (1, 2, 4, 8, 16, 32, 64))
        self.queue_depth = Gauge("tailgate_queue_depth", "Requests waiting for the engine.")
        self.in_flight = Gauge("tailgate_in_flight_requests", "Requests in the running engine batch.")

    def render(self) -> str:
        lines: list[str] = []
        for metric in (self.requests, self.latency, self.prompt_tokens, self.generated_tokens, self.batch_size,
                       self.queue_depth, self.in_flight):
            lines += metric.render()
        return "\n".join(lines) + "\n"
