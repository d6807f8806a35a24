"""What /metrics exposes, as prometheus_client instruments on a registry of the server's own.

A per-server `CollectorRegistry` instead of the library's global one: several servers share one
process in the tests (and an embedding application may run its own), and two instruments of
one name on the global registry is an error; each server's numbers must also stay its own.
prometheus_client's instruments lock internally, so the event loop and the engine loop may
update them concurrently.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST

LATENCY_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServingMetrics:
    """Everything /metrics exposes. The exposed names (a counter's `_total` included) are the
    ones dashboards and the tests read; prometheus_client adds the `_total` suffix itself."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tailgate_requests", "HTTP requests by endpoint and status code.",
                                ("endpoint", "status"), registry=r)
        self.latency = Histogram("tailgate_request_latency_seconds", "Time from request to last byte sent.",
                                 ("endpoint",), buckets=LATENCY_BUCKETS_S, registry=r)
        self.prompt_tokens = Counter("tailgate_prompt_tokens", "Prompt tokens of generation requests run.",
                                     registry=r)
        self.generated_tokens = Counter("tailgate_generated_tokens", "Tokens the engine generated.", registry=r)
        self.batch_size = Histogram("tailgate_batch_size", "Requests per engine batch: a generate call, or the "
                                    "running rows of one decode step.", buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("tailgate_queue_depth", "Requests waiting for the engine.", registry=r)
        self.in_flight = Gauge("tailgate_in_flight_requests", "Requests in the running engine batch.", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
